"""The one error hierarchy of embedmig.

Every failure a user can cause or meet is one of these; the CLI turns them into a one-line message
and a non-zero exit at a single boundary (``embedmig.cli``)::

    EmbedmigError
    ├── ConfigError          bad or missing configuration, unusable environment folder
    ├── ScriptError          a revision script or the revision graph is broken, a target is unknown
    ├── EmbedderError        a model cannot be loaded offline or yields unusable vectors
    ├── SourceError          the corpus, queries or qrels cannot be read
    ├── StoreError           an index file cannot be written, is missing, or fails its checksum
    ├── HistoryError         the history database is unreachable or of an unknown schema
    ├── StateError           the alias is not in a state that allows the operation
    └── GateFailed           a quality gate failed; carries the report
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from embedmig.metrics.report import Report


class EmbedmigError(Exception):
    """Base of every error embedmig raises on purpose."""


class ConfigError(EmbedmigError):
    pass


class ScriptError(EmbedmigError):
    pass


class EmbedderError(EmbedmigError):
    pass


class SourceError(EmbedmigError):
    pass


class StoreError(EmbedmigError):
    pass


class HistoryError(EmbedmigError):
    pass


class StateError(EmbedmigError):
    pass


class GateFailed(EmbedmigError):
    """Raised when metrics break a gate; the alias is left untouched."""

    def __init__(self, message: str, report: Report) -> None:
        super().__init__(message)
        self.report = report
