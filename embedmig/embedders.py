"""Embedder specs: what a revision declares, how it is loaded offline, and its fingerprint."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedmig.errors import EmbedderError

if TYPE_CHECKING:
    import numpy as np
    from sentence_transformers import SentenceTransformer

# Files that decide a model's vectors; READMEs, licences and model cards do not.
_IDENTITY_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model", ".onnx", ".py")
_IGNORED_NAMES = {"README.md", "LICENSE", "NOTICE", "data_config.json"}


@dataclass(frozen=True)
class Embedder:
    """A sentence-transformers model plus every option that changes its vectors.

    ``model`` is a hub name (resolved from the local cache only: embedmig never downloads) or a
    folder, absolute or relative to the configuration file.
    """

    model: str
    normalize: bool = True
    query_prompt: str | None = None
    document_prompt: str | None = None
    max_seq_length: int | None = None
    truncate_dim: int | None = None
    revision: str | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise EmbedderError("Embedder needs a model name or path")
        for name in ("max_seq_length", "truncate_dim"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise EmbedderError(f"Embedder {name} must be a positive integer, got {value!r}")
        for name in ("query_prompt", "document_prompt", "revision"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise EmbedderError(f"Embedder {name} must be a string or None, got {value!r}")
        for name in ("normalize", "trust_remote_code"):
            if not isinstance(getattr(self, name), bool):
                raise EmbedderError(f"Embedder {name} must be True or False")

    def options(self) -> dict[str, Any]:
        """The vector-changing options, without the model."""
        opts = asdict(self)
        del opts["model"]
        return opts

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Embedder:
        return cls(**json.loads(text))

    def describe(self) -> str:
        extras = ", ".join(f"{k}={v!r}" for k, v in self.options().items() if v != _DEFAULTS[k])
        return f"{self.model}" + (f" ({extras})" if extras else "")


_DEFAULTS = Embedder("x").options()


@dataclass(frozen=True)
class LoadedEmbedder:
    """An embedder resolved to a local folder, loaded, with its fingerprint."""

    spec: Embedder
    location: Path
    fingerprint: str
    model: SentenceTransformer

    @property
    def dim(self) -> int:
        # Renamed in sentence-transformers 6; both spellings are supported.
        getter = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        dim = getter()
        if dim is None:
            raise EmbedderError(f"{self.spec.model} does not report an embedding dimension")
        return int(dim)

    @property
    def spec_json(self) -> str:
        return self.spec.to_json()

    @property
    def max_seq_length(self) -> int | None:
        value = getattr(self.model, "max_seq_length", None)
        # Static models report no limit (None or infinity).
        return int(value) if value is not None and value != float("inf") else None

    def encode_documents(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        return self._encode(texts, self.spec.document_prompt, batch_size)

    def encode_queries(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        return self._encode(texts, self.spec.query_prompt, batch_size)

    def _encode(self, texts: Sequence[str], prompt: str | None, batch_size: int) -> np.ndarray:
        import numpy as np  # not at import: revision scripts import Embedder, and so the CLI

        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        try:
            vectors = self.model.encode(
                list(texts),
                prompt=prompt or None,
                batch_size=batch_size,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        except Exception as exc:  # the model is user code: any failure is reported, not crashed on
            raise EmbedderError(f"{self.spec.model} failed to encode a batch: {exc}") from exc
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if not np.isfinite(vectors).all():
            bad = int((~np.isfinite(vectors).all(axis=1)).sum())
            raise EmbedderError(f"{self.spec.model} produced {bad} vector(s) with NaN or inf")
        if self.spec.normalize:
            # Here, in float32, after any truncate_dim: a model that normalizes in its own
            # precision (float16 weights) or before truncating leaves vectors off unit length,
            # and inner products above 1.
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            if not norms.all():
                bad = int((norms == 0).sum())
                raise EmbedderError(
                    f"{self.spec.model} produced {bad} zero vector(s), which have no direction"
                )
            vectors /= norms
        return vectors


def resolve_location(spec: Embedder, root: Path) -> Path:
    """The local folder holding ``spec.model``: a path, or the hub cache (never the network)."""
    candidate = Path(spec.model).expanduser()
    if not candidate.is_absolute():
        candidate = root / candidate
    if candidate.is_dir():
        return candidate.resolve()
    if Path(spec.model).is_absolute() or spec.model.startswith((".", "~")):
        raise EmbedderError(f"model folder {candidate} does not exist")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    names = (
        [spec.model] if "/" in spec.model else [spec.model, f"sentence-transformers/{spec.model}"]
    )
    for name in names:
        try:
            return Path(
                snapshot_download(name, revision=spec.revision, local_files_only=True)
            ).resolve()
        except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError):
            continue
    raise EmbedderError(
        f"model {spec.model!r} is neither a folder nor in the local Hugging Face cache; "
        "embedmig does not download models: put it on disk and name its folder"
    )


def fingerprint(spec: Embedder, location: Path) -> str:
    """Hash of the model's identity files and the options: equal fingerprints, equal spaces."""
    digest = hashlib.sha256()
    digest.update(_folder_digest(str(location), _mtime_key(location)).encode())
    digest.update(json.dumps(spec.options(), sort_keys=True).encode())
    return digest.hexdigest()


def _mtime_key(location: Path) -> tuple[tuple[str, int, int], ...]:
    return tuple(
        (str(p.relative_to(location)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in _identity_files(location)
    )


@lru_cache(maxsize=32)
def _folder_digest(location: str, _key: tuple[tuple[str, int, int], ...]) -> str:
    # Cached on (path, sizes, mtimes): hashing a 90 MB model once per process is enough.
    root = Path(location)
    digest = hashlib.sha256()
    for path in _identity_files(root):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _identity_files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix in _IDENTITY_SUFFIXES
        and p.name not in _IGNORED_NAMES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


_MODELS: dict[tuple[str, str], SentenceTransformer] = {}


def load(
    spec: Embedder, root: Path, *, allow_remote_code: bool = False, device: str | None = None
) -> LoadedEmbedder:
    """Load ``spec`` from local files; models are shared per (folder, options) in a process."""
    if spec.trust_remote_code and not allow_remote_code:
        raise EmbedderError(
            f"{spec.model} asks for trust_remote_code, which the configuration does not allow "
            "(set allow_remote_code = true to permit it)"
        )
    location = resolve_location(spec, root)
    fp = fingerprint(spec, location)
    key = (str(location), fp)
    model = _MODELS.get(key)
    if model is None:
        model = _load_model(spec, location, device)
        _MODELS[key] = model
    loaded = LoadedEmbedder(spec=spec, location=location, fingerprint=fp, model=model)
    if spec.truncate_dim is not None and loaded.dim < spec.truncate_dim:
        # sentence-transformers ignores a truncate_dim beyond the model's size; an index built so
        # would silently disagree with the dimension the revision declares.
        raise EmbedderError(
            f"{spec.model} has {loaded.dim} dimensions; truncate_dim={spec.truncate_dim} is larger"
        )
    return loaded


def _load_model(spec: Embedder, location: Path, device: str | None) -> SentenceTransformer:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    try:
        model = SentenceTransformer(
            str(location),
            device=device,
            local_files_only=True,
            trust_remote_code=spec.trust_remote_code,
            truncate_dim=spec.truncate_dim,
        )
    except Exception as exc:  # broken folders raise anything from OSError to KeyError
        raise EmbedderError(f"cannot load model {spec.model!r} from {location}: {exc}") from exc
    if spec.max_seq_length is not None:
        model.max_seq_length = spec.max_seq_length
    return model
