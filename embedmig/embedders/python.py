"""The ``python`` backend: an in-house encoder named by an import path to its factory."""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedmig.embedders.base import Meter, estimate_tokens, identity, prefixed
from embedmig.embedders.spec import Embedder
from embedmig.errors import EmbedderError

if TYPE_CHECKING:
    import numpy as np

_REQUIRED = ("encode_documents", "encode_queries", "dimension")


class PythonBackend:
    """``factory(**params)``'s encoder, with embedmig's fingerprint and token estimate around it.

    The encoder's own ``fingerprint()`` (a model version, a weights hash), when it has one, is part
    of embedmig's; the probes measure the rest.
    """

    def __init__(self, spec: Embedder, encoder: Any) -> None:
        self.spec = spec
        self.encoder = encoder
        self.meter = Meter()

    @property
    def dimension(self) -> int:
        dim = self.encoder.dimension
        dim = dim() if callable(dim) else dim
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise EmbedderError(f"{self.describe()}: dimension must be an int, got {dim!r}")
        return dim

    def fingerprint(self) -> str:
        own = getattr(self.encoder, "fingerprint", None)
        return identity(self.spec, self.dimension, str(own()) if callable(own) else "")

    def describe(self) -> str:
        return self.spec.describe()

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        return self._encode(self.encoder.encode_documents, self.spec.document_prompt, texts)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self._encode(self.encoder.encode_queries, self.spec.query_prompt, texts)

    def _encode(self, encode: Any, prompt: str | None, texts: list[str]) -> np.ndarray:
        vectors: np.ndarray = encode(prefixed(prompt, texts))
        self.meter.add(tokens=sum(map(estimate_tokens, texts)), estimated=True)
        return vectors


def load(spec: Embedder, root: Path) -> PythonBackend:
    """Import ``module:factory`` (from the project folder too, as alembic's env.py may) and call
    it with ``params``."""
    module_name, _, attribute = spec.model.partition(":")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise EmbedderError(f"cannot import {module_name!r} for {spec.model}: {exc}") from None
    except Exception as exc:  # the user's module failed while importing
        raise EmbedderError(
            f"importing {module_name!r} failed: {exc.__class__.__name__}: {exc}"
        ) from exc
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise EmbedderError(f"{module_name!r} has no {attribute!r} (from {spec.model})")
        target = getattr(target, part)
    if not callable(target):
        raise EmbedderError(f"{spec.model} is not callable: it must make the encoder")
    try:
        encoder = target(**dict(spec.params or {}))
    except Exception as exc:  # the user's factory: one line
        raise EmbedderError(f"{spec.model}(...) failed: {exc.__class__.__name__}: {exc}") from exc
    # Looked up without running a property: a dimension that fails is the embedder's error,
    # said when it is first asked for.
    missing = [name for name in _REQUIRED if inspect.getattr_static(encoder, name, None) is None]
    if missing:
        raise EmbedderError(
            f"{spec.model} returned {type(encoder).__name__}, which lacks {', '.join(missing)} "
            "(see embedmig.embedders.Encoder)"
        )
    return PythonBackend(spec, encoder)
