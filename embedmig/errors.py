"""The one error hierarchy of embedmig.

Every failure a user can cause or meet is one of these; the CLI turns them into a one-line message
and a non-zero exit at a single boundary (``embedmig.cli``). Each carries, as attributes, the data
a caller needs to act on it without parsing the message::

    EmbedmigError
    ├── ConfigError          bad or missing configuration or argument, unusable environment folder
    ├── ScriptError          a revision script or the revision graph is broken, a target is unknown
    ├── EmbedderError        a model cannot be loaded offline or yields unusable vectors
    │   └── EmbedderDrift    its probes moved away from an index's          .lowest, .threshold
    ├── SourceError          the corpus, queries or qrels cannot be read        .path, .line
    ├── StoreError           an index file cannot be written, is missing or fails its checksum
    ├── HistoryError         the history database is unreachable, unusable or of an unknown schema
    ├── StateError           the alias is not in a state that allows the operation
    │   ├── Locked           another run holds the alias's migration lock        .holder
    │   ├── LockLost         this run's lock was taken over; it stopped           .alias
    │   └── ReadersBehind    readers still serve another index than the live one  .alias, .readers
    ├── GateFailed           a quality gate failed; the alias is untouched    .report, .checks
    ├── ContractBroken       the live alias lost a document a golden query must keep  .alias, .broken
    └── CanaryOpen           the swap waits for the canary      .alias, .compared, .needed, .report
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from embedmig.gates import Check
    from embedmig.metrics.report import Report
    from embedmig.monitor.status import ReaderState
    from embedmig.store.locks import Holder


class EmbedmigError(Exception):
    """Base of every error embedmig raises on purpose: catch this to catch them all."""


class ConfigError(EmbedmigError):
    """An option is missing, unknown in a required place, or out of range (in ``embedmig.ini``,
    ``pyproject.toml`` or an argument such as ``--sample``, ``k`` or ``--report``), or the
    environment folder cannot be used."""


class ScriptError(EmbedmigError):
    """A revision script cannot be loaded or is inconsistent (missing ``alias``, a cycle, a fork,
    ``old`` on a first revision), ``env.py`` is broken, or a target names no revision."""


class EmbedderError(EmbedmigError):
    """A model cannot be loaded offline, needs ``trust_remote_code`` that is not allowed, has
    options of the wrong type, or produces vectors that cannot be indexed (NaN, wrong shape); an
    endpoint refuses, keeps failing past ``embedder.retry_seconds``, or answers malformed; an API
    key's environment variable is not set; a ``backend="python"`` factory cannot be imported."""


class EmbedderDrift(EmbedderError):
    """An embedder no longer returns what it returned when an index was built: its probe vectors
    fell below ``probe.min_cosine`` of the recorded ones. Nothing was served, migrated or changed.

    ``lowest``: the lowest probe cosine measured; ``threshold``: ``probe.min_cosine``.
    """

    def __init__(self, message: str, *, lowest: float, threshold: float) -> None:
        super().__init__(message)
        self.lowest = lowest
        self.threshold = threshold


class SourceError(EmbedmigError):
    """The corpus, the queries or the qrels cannot be read, or hold a bad document (a key with a
    control character, a text that is not a string, invalid JSON or UTF-8).

    ``path`` and ``line`` (1-based) locate it when it comes from a file.
    """

    def __init__(self, message: str, *, path: Path | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.line = line


class StoreError(EmbedmigError):
    """An index file cannot be written or read, is missing, does not match its recorded sha256,
    or an index factory string is not one FAISS can build."""


class HistoryError(EmbedmigError):
    """The history database cannot be opened or written (unreachable, not a database, read-only)
    or its schema is newer than this embedmig."""


class StateError(EmbedmigError):
    """The alias is not in a state that allows the operation: no live index to search or roll
    back, a live index that changed during the migration, a retired index already pruned."""


class Locked(StateError):
    """Another run holds the migration lock of the alias (``upgrade``, ``downgrade``, ``stamp``,
    ``prune``, ``compact``), or ``unlock`` was refused because the holder is alive.

    ``holder`` says who: ``.pid``, ``.host``, ``.command``, ``.acquired_at`` (UTC),
    ``.heartbeat_at``.
    """

    def __init__(self, message: str, holder: Holder) -> None:
        super().__init__(message)
        self.holder = holder


class LockLost(StateError):
    """This run's migration lock was taken over while it ran: it did not renew its lease within
    ``lock.lease_seconds`` (the process was paused, or cut off from the database) and another run
    took the lock, or ``unlock --force`` removed it. It stopped at its next state change, before
    committing it: checkpoints, states, the swap and the rollback are fenced by the lock.

    ``alias``: the alias whose lock was lost.
    """

    def __init__(self, message: str, *, alias: str) -> None:
        super().__init__(message)
        self.alias = alias


class ReadersBehind(StateError):
    """Readers of an alias are not all on its live index: ``embedmig status`` found a reader on
    another index past ``readers.skew_seconds``, gone silent or refusing to serve (a drifted
    embedder), or ``upgrade --wait-readers`` ran out of time (the swap itself is done).

    ``alias``; ``readers``: the flagged readers (``embedmig.monitor.status.ReaderState``).
    """

    def __init__(self, message: str, *, alias: str, readers: Sequence[ReaderState]) -> None:
        super().__init__(message)
        self.alias = alias
        self.readers = list(readers)


class GateFailed(EmbedmigError):
    """A revision's gates failed (the coverage gates included) and ``force`` was off: the alias,
    its live index and its revision are untouched; the shadow index stays ``ready``.

    ``report`` is the full report (recorded in history too); ``checks`` the failed checks.
    """

    def __init__(self, message: str, report: Report) -> None:
        super().__init__(message)
        self.report = report

    @property
    def checks(self) -> list[Check]:
        return self.report.verdict.failures() if self.report.verdict else []


class ContractBroken(EmbedmigError):
    """``embedmig verify`` found golden queries (``contracts = FILE``) whose ``must_contain``
    documents are no longer in their top k on what the alias serves now. Nothing was changed.

    ``alias``; ``broken``: each broken contract as the report lists it (``id``, ``query``,
    ``k``, ``missing``: the documents lost with their rank now, None beyond the search).
    """

    def __init__(self, message: str, *, alias: str, broken: Sequence[Mapping[str, Any]]) -> None:
        super().__init__(message)
        self.alias = alias
        self.broken = list(broken)


class CanaryOpen(EmbedmigError):
    """The revision's ``ctx.canary()`` holds the swap: a canary was just opened, or is open and its
    gates do not pass yet (too few mirrored queries, or a ``canary_*`` gate fails). Nothing was
    swapped; searchers mirror queries to the shadow until the next ``embedmig upgrade`` passes
    (or ``embedmig canary ALIAS --close`` ends the canary).

    ``alias``; ``compared`` and ``needed``: mirrored queries compared so far, and required;
    ``report``: the offline report with the canary's metrics so far.
    """

    def __init__(
        self, message: str, *, alias: str, compared: int, needed: int, report: Report
    ) -> None:
        super().__init__(message)
        self.alias = alias
        self.compared = compared
        self.needed = needed
        self.report = report
