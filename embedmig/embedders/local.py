"""The sentence-transformers backend: a model folder on disk, fingerprinted by its files."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedmig.config import EmbedderSettings
from embedmig.embedders.base import Meter, estimate_tokens
from embedmig.embedders.spec import Embedder
from embedmig.errors import EmbedderError

if TYPE_CHECKING:
    import numpy as np
    from sentence_transformers import SentenceTransformer

# Files that decide a model's vectors; READMEs, licences and model cards do not.
_IDENTITY_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model", ".onnx", ".py")
_IGNORED_NAMES = {"README.md", "LICENSE", "NOTICE", "data_config.json"}


class SentenceTransformersBackend:
    """A local model: its fingerprint hashes the files that decide its vectors, and the options."""

    def __init__(
        self, spec: Embedder, location: Path, model: SentenceTransformer, settings: EmbedderSettings
    ) -> None:
        self.spec = spec
        self.location = location
        self.model = model
        self.batch_size = settings.batch_size
        self.meter = Meter()

    @property
    def dimension(self) -> int:
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
    def max_seq_length(self) -> int | None:
        return _limit(self.model)

    def fingerprint(self) -> str:
        return fingerprint(self.spec, self.location)

    def describe(self) -> str:
        return self.spec.describe()

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, self.spec.document_prompt)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, self.spec.query_prompt)

    def _encode(self, texts: list[str], prompt: str | None) -> np.ndarray:
        _encoding.meter = self.meter
        try:
            vectors: np.ndarray = self.model.encode(
                texts,
                prompt=prompt or None,
                batch_size=self.batch_size,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        finally:
            _encoding.meter = None
        return vectors


# The meter of the backend encoding in this thread: models are shared by backends and threads.
_encoding = threading.local()


def _metered(model: SentenceTransformer) -> None:
    """Count the input tokens of ``model``'s encodes, and the texts that reached its limit
    (which it truncates silently), from the tokenization the encode itself does: a second pass
    would tokenize every text twice, most of a static model's encode. Counted where the texts
    are encoded: under Ray, tokenizing on the driver would cap the cluster at one core."""
    # sentence-transformers 6 tokenizes in `preprocess`, earlier releases in `tokenize`.
    name = "preprocess" if hasattr(model, "preprocess") else "tokenize"
    tokenize = getattr(model, name)

    def counting(inputs: Any, *args: Any, **kwargs: Any) -> Any:
        features = tokenize(inputs, *args, **kwargs)
        meter: Meter | None = getattr(_encoding, "meter", None)
        if meter is None:
            return features
        limit = _limit(model)
        counted = _counted(features, limit)
        if counted is None:  # a custom first module: estimate; counting is a courtesy
            meter.add(tokens=sum(map(estimate_tokens, map(str, inputs))), estimated=True)
        else:
            meter.add(tokens=counted[0], truncated=counted[1])
        return features

    setattr(model, name, counting)


def _limit(model: SentenceTransformer) -> int | None:
    value = getattr(model, "max_seq_length", None)
    # Static models report no limit (None or infinity).
    return int(value) if value is not None and value != float("inf") else None


def _counted(features: Any, limit: int | None) -> tuple[int, int] | None:
    """(tokens, texts that reached ``limit``) of a batch's features: a transformer's attention
    mask, or a static model's flat ids (no limit: it reads every token)."""
    if not isinstance(features, Mapping):  # a dict, or transformers' BatchEncoding
        return None
    mask = features.get("attention_mask")
    if mask is not None:
        lengths = mask.sum(dim=1)
        return int(lengths.sum()), int((lengths >= limit).sum()) if limit else 0
    ids = features.get("input_ids")
    if ids is None or "offsets" not in features or limit:
        return None
    return int(ids.numel()), 0


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


log = logging.getLogger("embedmig")

_MODELS: dict[tuple[str, str], Any] = {}


def load(spec: Embedder, root: Path, settings: EmbedderSettings) -> SentenceTransformersBackend:
    """``spec`` from local files; models are shared per (folder, options) in a process."""
    if spec.trust_remote_code and not settings.allow_remote_code:
        raise EmbedderError(
            f"{spec.model} asks for trust_remote_code, which the configuration does not allow "
            "(set allow_remote_code = true to permit it)"
        )
    location = resolve_location(spec, root)
    key = (str(location), fingerprint(spec, location))
    model = _MODELS.get(key)
    if model is None:
        model = _MODELS[key] = _load_model(spec, location, settings.device)
    backend = SentenceTransformersBackend(spec, location, model, settings)
    if spec.truncate_dim is not None and backend.dimension < spec.truncate_dim:
        # sentence-transformers ignores a truncate_dim beyond the model's size; an index built so
        # would silently disagree with the dimension the revision declares.
        raise EmbedderError(
            f"{spec.model} has {backend.dimension} dimensions; "
            f"truncate_dim={spec.truncate_dim} is larger"
        )
    return backend


class _BenignLoadReport(logging.Filter):
    """Drops transformers' "LOAD REPORT" table when all it lists is UNEXPECTED checkpoint keys
    (``embeddings.position_ids`` in MiniLM, say: a buffer newer versions rebuild), which a
    library user's application would otherwise print at every start. A report of missing,
    mismatched or unconverted weights still shows: those change the vectors."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" not in message:
            return True
        if any(word in message for word in ("MISSING", "MISMATCH", "CONVERSION")):
            return True
        log.debug("%s: only unexpected keys, not shown", message.splitlines()[0])
        return False


def _load_model(spec: Embedder, location: Path, device: str | None) -> SentenceTransformer:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    benign = _BenignLoadReport()
    reporter = logging.getLogger("transformers.modeling_utils")
    reporter.addFilter(benign)  # on this one logger, for this load only
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
    finally:
        reporter.removeFilter(benign)
    if spec.max_seq_length is not None:
        model.max_seq_length = spec.max_seq_length
    _metered(model)
    return model
