"""embedmig: embedding-model changes as versioned, reviewable, reversible migrations."""

from embedmig.config import Config
from embedmig.embedders import Embedder
from embedmig.errors import (
    ConfigError,
    EmbedderError,
    EmbedmigError,
    GateFailed,
    HistoryError,
    ScriptError,
    SourceError,
    StateError,
    StoreError,
)
from embedmig.gates import Gates
from embedmig.runtime.context import MigrationContext
from embedmig.runtime.searcher import Hit, Searcher, open_searcher
from embedmig.runtime.writer import Writer, open_writer
from embedmig.sources import Document, IterableSource, JsonlSource, SqlSource

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "Document",
    "Embedder",
    "EmbedderError",
    "EmbedmigError",
    "GateFailed",
    "Gates",
    "HistoryError",
    "Hit",
    "IterableSource",
    "JsonlSource",
    "MigrationContext",
    "ScriptError",
    "Searcher",
    "SourceError",
    "SqlSource",
    "StateError",
    "StoreError",
    "Writer",
    "open_searcher",
    "open_writer",
]
