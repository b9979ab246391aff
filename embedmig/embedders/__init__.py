"""Embedders: what a revision declares (:class:`Embedder`), the protocol every backend follows
(:class:`Encoder`), and :func:`load`, which turns a declaration into a checked
:class:`LoadedEmbedder`.

Three backends: ``sentence-transformers`` (local files; ``local``), ``openai`` (any
OpenAI-compatible endpoint; ``http``) and ``python`` (an import path; ``python``). ``probes``
measures what an embedder returns; ``cache`` keeps what it returned.
"""

from __future__ import annotations

from pathlib import Path

from embedmig.config import EmbedderSettings
from embedmig.embedders.base import Encoder, LoadedEmbedder, Usage
from embedmig.embedders.spec import BACKENDS, LOCAL, OPENAI, PYTHON, Embedder

__all__ = ["BACKENDS", "Embedder", "EmbedderSettings", "Encoder", "LoadedEmbedder", "Usage", "load"]


def load(spec: Embedder, root: Path, settings: EmbedderSettings) -> LoadedEmbedder:
    """``spec`` ready to encode; ``root`` is where relative model paths and import paths start.
    Nothing is downloaded; an endpoint is not called until something is encoded."""
    if spec.backend == LOCAL:
        from embedmig.embedders import local

        return LoadedEmbedder(spec, local.load(spec, root, settings))
    if spec.backend == OPENAI:
        from embedmig.embedders.http import OpenAIBackend

        return LoadedEmbedder(spec, OpenAIBackend(spec, settings))
    assert spec.backend == PYTHON
    from embedmig.embedders import python

    return LoadedEmbedder(spec, python.load(spec, root))
