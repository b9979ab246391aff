"""Embedders: what a revision declares (:class:`Embedder`), the protocol every backend follows
(:class:`Encoder`), and :func:`load`, which turns a declaration into a checked
:class:`LoadedEmbedder`.

Three backends: ``sentence-transformers`` (local files; ``local``), ``openai`` (any
OpenAI-compatible endpoint; ``http``) and ``python`` (an import path; ``python``). ``probes``
measures what an embedder returns; ``cache`` keeps what it returned.
"""

from __future__ import annotations

import time
from pathlib import Path

from embedmig.config import EmbedderSettings
from embedmig.embedders.base import Encoder, LoadedEmbedder, Usage
from embedmig.embedders.spec import BACKENDS, LOCAL, OPENAI, PYTHON, Embedder

__all__ = ["BACKENDS", "Embedder", "EmbedderSettings", "Encoder", "LoadedEmbedder", "Usage", "load"]


def load(spec: Embedder, root: Path, settings: EmbedderSettings) -> LoadedEmbedder:
    """``spec`` ready to encode; ``root`` is where relative model paths and import paths start.
    Nothing is downloaded; an endpoint is not called until something is encoded."""
    started = time.perf_counter()
    embedder = LoadedEmbedder(spec, _backend(spec, root, settings))
    embedder.load_seconds = time.perf_counter() - started
    return embedder


def _backend(spec: Embedder, root: Path, settings: EmbedderSettings) -> Encoder:
    if spec.backend == LOCAL:
        from embedmig.embedders import local

        return local.load(spec, root, settings)
    if spec.backend == OPENAI:
        from embedmig.embedders.http import OpenAIBackend

        return OpenAIBackend(spec, settings)
    assert spec.backend == PYTHON
    from embedmig.embedders import python

    return python.load(spec, root)
