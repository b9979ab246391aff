"""Probe fingerprints: what an embedder returns for a fixed set of texts, kept with every index.

A name says what a model is called; the probes say what it does. An index records its embedder's
probe vectors (as queries and as documents) when it is built; an embedder whose probes now fall
below ``probe.min_cosine`` of the recorded ones has drifted (a server upgrade, another library
version, another model behind the same name) and neither serves that index nor migrates from it.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

from embedmig.errors import EmbedderDrift

if TYPE_CHECKING:
    import numpy as np

    from embedmig.embedders.base import LoadedEmbedder

# A question and a claim, code, two other scripts, an error code, numbers, a shopping query: a
# change to tokenization, pooling, prompts or weights moves some of them. Short, because a
# searcher pays for them when it opens (8 texts: 38 ms with MiniLM on 2 cores; 16 with one long
# sentence among them: 120 ms, bench_embedders.py).
PROBES: tuple[str, ...] = (
    "What is the capital of France?",
    "Vitamin D deficiency is associated with an increased risk of respiratory infections.",
    "def add(a, b):\n    return a + b",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "東京は日本の首都です。",
    "Error 0x80070005: access is denied.",
    "1, 2, 3, 5, 8, 13, 21, 34, 55, 89",
    "best noise cancelling headphones under $200",
)


def measure(embedder: LoadedEmbedder) -> np.ndarray:
    """The probe vectors: the probes as queries, then as documents (prompts may differ)."""
    import numpy as np

    queries = embedder.encode_uncached(PROBES, "query")
    same = embedder.spec.query_prompt == embedder.spec.document_prompt
    documents = queries if same else embedder.encode_uncached(PROBES, "document")
    return np.concatenate([queries, documents])


def to_bytes(vectors: np.ndarray) -> bytes:
    import numpy as np

    return np.ascontiguousarray(vectors, dtype="<f4").tobytes()


def from_bytes(data: bytes, dim: int) -> np.ndarray:
    import numpy as np

    return np.frombuffer(data, dtype="<f4").reshape(-1, dim)


def lowest_cosine(recorded: np.ndarray, now: np.ndarray) -> float:
    """The smallest cosine between a recorded probe vector and the same probe's vector now
    (-1 when their shapes differ: another dimension is another space)."""
    import numpy as np

    if recorded.shape != now.shape:
        return -1.0
    a = recorded / np.maximum(np.linalg.norm(recorded, axis=1, keepdims=True), 1e-12)
    b = now / np.maximum(np.linalg.norm(now, axis=1, keepdims=True), 1e-12)
    return float(np.einsum("ij,ij->i", a, b).min())


def against(recorded: bytes | None, dim: int, embedder: LoadedEmbedder) -> float | None:
    """The lowest cosine of ``embedder``'s probe vectors now against ``recorded`` (an index's);
    None for an index built before probes."""
    if recorded is None:
        return None
    return lowest_cosine(from_bytes(recorded, dim), of(embedder))


def check(
    recorded: bytes | None, dim: int, embedder: LoadedEmbedder, min_cosine: float, what: str
) -> None:
    """Raise EmbedderDrift when ``embedder`` drifted below ``min_cosine`` from ``recorded``."""
    lowest = against(recorded, dim, embedder)
    if lowest is not None and lowest < min_cosine:
        raise EmbedderDrift(
            f"{what} drifted: lowest probe cosine {lowest:.4f} is below probe.min_cosine "
            f"{min_cosine:g} (the model behind it changed; its vectors no longer match the index)",
            lowest=lowest,
            threshold=min_cosine,
        )


def remeasure(embedder: LoadedEmbedder) -> np.ndarray:
    """The probe vectors measured again now, whatever was measured before: what a build checks
    against its start before it lets its index serve (a model that changed behind an endpoint
    mid-run, or an encoder that is not deterministic)."""
    vectors = measure(embedder)
    _MEASURED[embedder] = vectors
    return vectors


_MEASURED: weakref.WeakKeyDictionary[LoadedEmbedder, np.ndarray] = weakref.WeakKeyDictionary()
_LOCAL: dict[str, np.ndarray] = {}


def of(embedder: LoadedEmbedder) -> np.ndarray:
    """The probe vectors of ``embedder``, measured once per loaded embedder, and once per process
    for a local model (its files and library cannot change under a running process)."""
    if embedder in _MEASURED:
        return _MEASURED[embedder]
    vectors = None if embedder.remote else _LOCAL.get(embedder.fingerprint)
    if vectors is None:
        vectors = measure(embedder)
        if not embedder.remote:
            _LOCAL[embedder.fingerprint] = vectors
    _MEASURED[embedder] = vectors
    return vectors
