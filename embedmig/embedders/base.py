"""The embedder protocol, usage counting, and the checked wrapper every caller embeds through."""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from embedmig.embedders.spec import LOCAL, Embedder
from embedmig.errors import EmbedderError

if TYPE_CHECKING:
    import numpy as np

    from embedmig.embedders.cache import EmbeddingCache

# Without the model's tokenizer (an API), input tokens are estimated at 4 bytes of UTF-8 each:
# OpenAI's rule of thumb for English; the endpoint's own count replaces it when it reports usage.
BYTES_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text.encode("utf-8", "surrogatepass")) / BYTES_PER_TOKEN))


@runtime_checkable
class Encoder(Protocol):
    """What an embedder is: every backend implements it, and a ``backend="python"`` factory
    returns an object with at least ``encode_documents``, ``encode_queries`` and ``dimension``
    (``fingerprint`` and ``describe`` are optional there: embedmig derives them from the spec).
    """

    @property
    def dimension(self) -> int: ...

    def encode_documents(self, texts: list[str]) -> Any:
        """An array-like of shape (len(texts), dimension)."""
        ...

    def encode_queries(self, texts: list[str]) -> Any: ...

    def fingerprint(self) -> str:
        """What the model is (its files, its name and options): equal means the same space."""
        ...

    def describe(self) -> str: ...


@dataclass
class Usage:
    """What embedding cost: requests sent, input tokens, texts embedded and their seconds, texts
    found in the cache, texts the model truncated. ``estimated``: some tokens were estimated."""

    requests: int = 0
    tokens: int = 0
    texts: int = 0
    seconds: float = 0.0
    cached: int = 0
    truncated: int = 0
    estimated: bool = False

    def __add__(self, other: Usage) -> Usage:
        return self._combine(other, 1)

    def __sub__(self, other: Usage) -> Usage:
        """What was spent between two readings of one meter (``other`` the earlier)."""
        return self._combine(other, -1)

    def _combine(self, other: Usage, sign: int) -> Usage:
        counts = {name: getattr(self, name) + sign * getattr(other, name) for name in _COUNTS}
        return Usage(**counts, estimated=self.estimated or (sign > 0 and other.estimated))

    def copy(self) -> Usage:
        return self + Usage()

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_COUNTS = ("requests", "tokens", "texts", "seconds", "cached", "truncated")


class Meter:
    """A backend's running usage, safe to add to from its request threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._usage = Usage()

    def add(self, **counts: Any) -> None:
        with self._lock:
            for name, value in counts.items():
                if name == "estimated":
                    self._usage.estimated |= bool(value)
                else:
                    setattr(self._usage, name, getattr(self._usage, name) + value)

    def read(self) -> Usage:
        with self._lock:
            return self._usage.copy()


def identity(spec: Embedder, dimension: int, *extra: str) -> str:
    """A fingerprint from what an embedder is called, its options and its dimension."""
    payload = {"backend": spec.backend, "model": spec.model, "options": spec.options()}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode())
    digest.update(f"\0{dimension}".encode())
    for part in extra:
        digest.update(b"\0" + part.encode())
    return digest.hexdigest()


class LoadedEmbedder:
    """An embedder ready to encode: every vector it hands out is checked (count, dimension,
    finite) and, with ``normalize``, unit length in float32. ``cache``, when set, is consulted
    before the backend is asked (migrations set it; serving does not)."""

    def __init__(self, spec: Embedder, backend: Encoder) -> None:
        self.spec = spec
        self.backend = backend
        # embedmig's backends count their requests and tokens; the wrapper adds texts and time.
        meter = getattr(backend, "meter", None)
        self.meter = meter if isinstance(meter, Meter) else Meter()
        self.cache: EmbeddingCache | None = None
        self.load_seconds = 0.0  # set by embedders.load, for the reports' time split
        self._fingerprint: str | None = None
        self._dim: int | None = None

    @property
    def remote(self) -> bool:
        """Whether what it returns may change while this process runs (a server, user code)."""
        return self.spec.backend != LOCAL

    @property
    def dim(self) -> int:
        if self._dim is None:
            if self.remote:
                # An endpoint tells its dimension in an answer: let the first be the probes',
                # which every remote embedder is measured by anyway.
                from embedmig.embedders import probes

                probes.of(self)
            self._dim = self._backend_dim()
        return self._dim

    def _backend_dim(self) -> int:
        dim = self._ask("its dimension", lambda: self.backend.dimension)
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise EmbedderError(f"{self.describe()} reports dimension {dim!r}")
        return dim

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self.dim  # noqa: B018  # a remote backend's covers its dimension: probed first
            self._fingerprint = self._ask("its fingerprint", self.backend.fingerprint)
        return self._fingerprint

    def _ask(self, what: str, call: Callable[[], Any]) -> Any:
        """What the backend (the user's code, for ``backend="python"``) says of itself; its
        failure is this embedder's, not the revision's that loads it."""
        try:
            return call()
        except EmbedderError:
            raise
        except Exception as exc:
            raise EmbedderError(
                f"{self.describe()} failed to report {what}: {exc.__class__.__name__}: {exc}"
            ) from exc

    @property
    def spec_json(self) -> str:
        return self.spec.to_json()

    @property
    def max_seq_length(self) -> int | None:
        value = getattr(self.backend, "max_seq_length", None)
        return value if isinstance(value, int) else None

    @property
    def usage(self) -> Usage:
        return self.meter.read()

    def describe(self) -> str:
        return self.spec.describe()

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(list(texts), "document")

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(list(texts), "query")

    def encode_uncached(
        self,
        texts: Sequence[str],
        kind: str,
        keep: Callable[[list[str], np.ndarray], None] | None = None,
    ) -> np.ndarray:
        """Straight from the backend, checked: what probes and executors use. ``keep`` receives
        checked vectors as they are paid for: per answered request from a backend that streams
        them (an endpoint), else all at once."""
        import numpy as np  # not at import: revision scripts import Embedder, and so the CLI

        texts = list(texts)
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        started = time.perf_counter()
        streamed = getattr(self.backend, "encode_streamed", None)
        try:
            if keep is not None and streamed is not None:
                raw = streamed(
                    texts, kind, lambda part, got: keep(part, self.check(got, len(part)))
                )
            else:
                encode = (
                    self.backend.encode_queries
                    if kind == "query"
                    else self.backend.encode_documents
                )
                raw = encode(texts)
        except EmbedderError:
            raise
        except Exception as exc:  # the model or the user's encoder: reported, not crashed on
            raise EmbedderError(
                f"{self.describe()} failed to encode a batch: {exc.__class__.__name__}: {exc}"
            ) from exc
        vectors = self.check(raw, len(texts))
        self.meter.add(texts=len(texts), seconds=time.perf_counter() - started)
        if keep is not None and streamed is None:
            keep(texts, vectors)
        return vectors

    def _encode(self, texts: list[str], kind: str) -> np.ndarray:
        if self.cache is None:
            return self.encode_uncached(texts, kind)
        return self.cache.through(self, texts, kind)

    def check(self, raw: Any, count: int) -> np.ndarray:
        """``raw`` as ``count`` float32 rows of ``dim``, finite, normalized if asked."""
        import numpy as np

        try:
            vectors = np.ascontiguousarray(raw, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise EmbedderError(f"{self.describe()} returned no array of numbers: {exc}") from None
        if vectors.ndim != 2 or vectors.shape[0] != count:
            raise EmbedderError(
                f"{self.describe()} returned an array of shape {vectors.shape} for {count} texts"
            )
        dim = self._dim or self._backend_dim()
        if vectors.shape[1] != dim:
            raise EmbedderError(
                f"{self.describe()} returned vectors of {vectors.shape[1]} dimensions, not {dim}"
            )
        if not np.isfinite(vectors).all():
            bad = int((~np.isfinite(vectors).all(axis=1)).sum())
            raise EmbedderError(f"{self.describe()} produced {bad} vector(s) with NaN or inf")
        if self.spec.normalize:
            # Here, in float32, after any truncate_dim: a model that normalizes in its own
            # precision (float16 weights) or before truncating leaves vectors off unit length,
            # and inner products above 1.
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            if not norms.all():
                bad = int((norms == 0).sum())
                raise EmbedderError(
                    f"{self.describe()} produced {bad} zero vector(s), which have no direction"
                )
            vectors /= norms
        return vectors

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
            self.cache = None
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()


def prefixed(prompt: str | None, texts: list[str]) -> list[str]:
    """Prompts for backends that take plain texts: prefixed, as sentence-transformers does."""
    return [prompt + text for text in texts] if prompt else texts
