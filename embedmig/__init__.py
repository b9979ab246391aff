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
    "AliasReaders": "embedmig.monitor.status",
    "AliasState": "embedmig.command",
    "CanaryOpen": "embedmig.errors",
    "Check": "embedmig.gates",
    "Config": "embedmig.config",
    "ConfigError": "embedmig.errors",
    "ContractBroken": "embedmig.errors",
    "Document": "embedmig.sources",
    "Embedder": "embedmig.embedders",
    "EmbedderDrift": "embedmig.errors",
    "EmbedderError": "embedmig.errors",
    "Encoder": "embedmig.embedders",
    "EmbedmigError": "embedmig.errors",
    "GateFailed": "embedmig.errors",
    "Gates": "embedmig.gates",
    "HistoryError": "embedmig.errors",
    "Hit": "embedmig.serve.searcher",
    "Holder": "embedmig.store.locks",
    "IterableSource": "embedmig.sources",
    "JsonlSource": "embedmig.sources",
    "LockLost": "embedmig.errors",
    "Locked": "embedmig.errors",
    "MigrationContext": "embedmig.migrate.context",
    "ProbeResult": "embedmig.monitor.probe",
    "Pruned": "embedmig.migrate.maintenance",
    "ReaderState": "embedmig.monitor.status",
    "ReadersBehind": "embedmig.errors",
    "Recovery": "embedmig.migrate.maintenance",
    "Report": "embedmig.metrics.report",
    "Revision": "embedmig.script",
    "ScriptError": "embedmig.errors",
    "Searcher": "embedmig.serve.searcher",
    "SourceError": "embedmig.errors",
    "SqlSource": "embedmig.sources",
    "StateError": "embedmig.errors",
    "StoreError": "embedmig.errors",
    "TrafficStats": "embedmig.serve.mirror",
    "Verdict": "embedmig.gates",
    "Verified": "embedmig.monitor.verify",
    "Writer": "embedmig.serve.writer",
    "command": "embedmig",
    "open_searcher": "embedmig.serve.searcher",
    "open_writer": "embedmig.serve.writer",
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
    from embedmig import command as command
    from embedmig.command import AliasState as AliasState
    from embedmig.config import Config as Config
    from embedmig.embedders import Embedder as Embedder
    from embedmig.embedders import Encoder as Encoder
    from embedmig.errors import (
        CanaryOpen as CanaryOpen,
    )
    from embedmig.errors import (
        ConfigError as ConfigError,
    )
    from embedmig.errors import ContractBroken as ContractBroken
    from embedmig.errors import EmbedderDrift as EmbedderDrift
    from embedmig.errors import (
        EmbedderError as EmbedderError,
    )
    from embedmig.errors import (
        EmbedmigError as EmbedmigError,
    )
    from embedmig.errors import (
        GateFailed as GateFailed,
    )
    from embedmig.errors import (
        HistoryError as HistoryError,
    )
    from embedmig.errors import (
        Locked as Locked,
    )
    from embedmig.errors import LockLost as LockLost
    from embedmig.errors import ReadersBehind as ReadersBehind
    from embedmig.errors import (
        ScriptError as ScriptError,
    )
    from embedmig.errors import (
        SourceError as SourceError,
    )
    from embedmig.errors import (
        StateError as StateError,
    )
    from embedmig.errors import (
        StoreError as StoreError,
    )
    from embedmig.gates import Check as Check
    from embedmig.gates import Gates as Gates
    from embedmig.gates import Verdict as Verdict
    from embedmig.metrics.report import Report as Report
    from embedmig.migrate.context import MigrationContext as MigrationContext
    from embedmig.migrate.maintenance import Pruned as Pruned
    from embedmig.migrate.maintenance import Recovery as Recovery
    from embedmig.monitor.probe import ProbeResult as ProbeResult
    from embedmig.monitor.status import AliasReaders as AliasReaders
    from embedmig.monitor.status import ReaderState as ReaderState
    from embedmig.monitor.verify import Verified as Verified
    from embedmig.render import render as render
    from embedmig.script import Revision as Revision
    from embedmig.serve.mirror import TrafficStats as TrafficStats
    from embedmig.serve.searcher import Hit as Hit
    from embedmig.serve.searcher import Searcher as Searcher
    from embedmig.serve.searcher import open_searcher as open_searcher
    from embedmig.serve.writer import Writer as Writer
    from embedmig.serve.writer import open_writer as open_writer
    from embedmig.sources import Document as Document
    from embedmig.sources import IterableSource as IterableSource
    from embedmig.sources import JsonlSource as JsonlSource
    from embedmig.sources import SqlSource as SqlSource
    from embedmig.store.locks import Holder as Holder
