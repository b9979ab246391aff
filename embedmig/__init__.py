"""embedmig: embedding-model changes as versioned, reviewable, reversible migrations.

Names load on first use, so ``from embedmig import Gates, Embedder`` in a revision script (or
``embedmig --help``) does not import FAISS, numpy's heavy users, sentence-transformers or torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS = {
    "AliasState": "embedmig.command",
    "Check": "embedmig.gates",
    "Config": "embedmig.config",
    "ConfigError": "embedmig.errors",
    "Document": "embedmig.sources",
    "Embedder": "embedmig.embedders",
    "EmbedderError": "embedmig.errors",
    "EmbedmigError": "embedmig.errors",
    "GateFailed": "embedmig.errors",
    "Gates": "embedmig.gates",
    "HistoryError": "embedmig.errors",
    "Hit": "embedmig.runtime.searcher",
    "Holder": "embedmig.store.locks",
    "IterableSource": "embedmig.sources",
    "JsonlSource": "embedmig.sources",
    "Locked": "embedmig.errors",
    "MigrationContext": "embedmig.runtime.context",
    "Report": "embedmig.metrics.report",
    "Revision": "embedmig.script",
    "ScriptError": "embedmig.errors",
    "Searcher": "embedmig.runtime.searcher",
    "SourceError": "embedmig.errors",
    "SqlSource": "embedmig.sources",
    "StateError": "embedmig.errors",
    "StoreError": "embedmig.errors",
    "Verdict": "embedmig.gates",
    "Writer": "embedmig.runtime.writer",
    "command": "embedmig",
    "open_searcher": "embedmig.runtime.searcher",
    "open_writer": "embedmig.runtime.writer",
    "render": "embedmig.render",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'embedmig' has no attribute {name!r}")
    if name == "command":
        return importlib.import_module("embedmig.command")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:
    from embedmig import command
    from embedmig.command import AliasState
    from embedmig.config import Config
    from embedmig.embedders import Embedder
    from embedmig.errors import (
        ConfigError,
        EmbedderError,
        EmbedmigError,
        GateFailed,
        HistoryError,
        Locked,
        ScriptError,
        SourceError,
        StateError,
        StoreError,
    )
    from embedmig.gates import Check, Gates, Verdict
    from embedmig.metrics.report import Report
    from embedmig.render import render
    from embedmig.runtime.context import MigrationContext
    from embedmig.runtime.searcher import Hit, Searcher, open_searcher
    from embedmig.runtime.writer import Writer, open_writer
    from embedmig.script import Revision
    from embedmig.sources import Document, IterableSource, JsonlSource, SqlSource
    from embedmig.store.locks import Holder
