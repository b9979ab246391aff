"""A searcher's heartbeat: which index it serves, written to SQL off the request path.

The request path only sets two attributes and bumps a counter; the searcher's background worker
(``embedmig.serve.mirror``) writes the row every ``readers.heartbeat_seconds``, and ``close()``
deletes it. ``embedmig status`` reads the rows, ``prune`` keeps the files they name.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from embedmig.config import Config
from embedmig.store import catalog, clock, readers


class Heartbeat:
    """One searcher's report of itself: set on the request path, sent by its worker."""

    def __init__(self, alias: str, every: float) -> None:
        self.every = every  # seconds; 0: no heartbeat
        self._id = uuid.uuid4().hex
        self._alias = alias
        self._started = clock.now()
        self._index: int | None = None
        self._since = self._started
        self._served = 0
        self._drift: str | None = None
        self._next = 0.0  # monotonic time of the next beat: the first is at once
        self._sent = False

    # ---- request path ------------------------------------------------------------------------

    def served(self, index_id: int) -> None:
        self.holds(index_id)
        self._served += 1

    def holds(self, index_id: int) -> None:
        """Its view holds ``index_id`` now: served, or followed off the request path."""
        if index_id != self._index:
            self._index, self._since = index_id, clock.now()
        self._drift = None

    def refused(self, why: str) -> None:
        """The searcher could not serve the live index (a drifted embedder, say): say why."""
        self._drift = why

    # ---- worker ------------------------------------------------------------------------------

    def due(self) -> float | None:
        """Seconds until the next beat is due (0: now); None without heartbeats."""
        if not self.every:
            return None
        return max(0.0, self._next - time.monotonic())

    def send(self, engine: sa.Engine) -> None:
        """Write the row now (the caller catches failures: a searcher serves on regardless)."""
        self._next = time.monotonic() + self.every
        beat = readers.Beat(
            id=self._id,
            alias=self._alias,
            host=socket.gethostname(),
            pid=os.getpid(),
            index_id=self._index,
            since=self._since if self._index is not None else None,
            served=self._served,
            drift=self._drift,
            started_at=self._started,
        )
        with engine.begin() as conn:
            readers.beat(conn, beat)
        self._sent = True

    def leave(self, engine: sa.Engine) -> None:
        """Delete the row: a reader that closed is not a reader gone silent."""
        if self._sent:
            with engine.begin() as conn:
                readers.leave(conn, self._id)
            self._sent = False


# ---- what the heartbeats say -----------------------------------------------------------------

LIVE, BEHIND, SKEW, SILENT, STALLED, IDLE, REFUSED = (
    "live",
    "behind",
    "skew",
    "silent",
    "stalled",
    "idle",
    "refused",
)
# What a swap waits for no longer: on the live index, gone, or not serving anything yet.
SETTLED = (LIVE, SILENT, IDLE)


@dataclass(frozen=True)
class ReaderState:
    reader: readers.Reader
    state: str  # one of the constants above
    # How long it has served another index than the live one since the swap (seconds).
    behind_for: float | None = None

    @property
    def flagged(self) -> bool:
        return self.state in (SKEW, SILENT, STALLED, REFUSED)


@dataclass(frozen=True)
class AliasReaders:
    """The readers of one alias against its live index."""

    alias: str
    live: catalog.IndexRecord | None
    live_since: datetime | None  # when the live index became live (its swap or rollback)
    readers: list[ReaderState]

    @property
    def flagged(self) -> list[ReaderState]:
        return [r for r in self.readers if r.flagged]

    @property
    def converged(self) -> bool:
        """Whether every reader still reporting serves the live index."""
        return all(r.state in SETTLED for r in self.readers)


@dataclass(frozen=True)
class ReaderSettings:
    """``readers.*``: when a reader is silent, and when one on another index is skew."""

    silent_after: timedelta
    skew_after: timedelta

    @classmethod
    def of(cls, config: Config) -> ReaderSettings:
        return cls(
            timedelta(seconds=config.get_range("readers.silent_seconds", 0)),
            timedelta(seconds=config.get_range("readers.skew_seconds", 0)),
        )


def survey(conn: sa.Connection, alias: str, settings: ReaderSettings) -> AliasReaders:
    """Every reader of ``alias`` that reported, judged against the live index now (on the
    database's clock, as heartbeats are written)."""
    at = clock.db_now(conn)
    live = catalog.live_index(conn, alias)
    since = catalog.went_live(conn, alias, live.id) if live is not None else None
    states = []
    for reader in readers.of(conn, alias):
        behind = None
        if reader.silent(settings.silent_after, at):
            state = SILENT
        elif reader.stalled(settings.silent_after, at):
            state = STALLED
        elif reader.drift is not None:
            state = REFUSED
        elif reader.index_id is None:
            state = IDLE
        elif live is not None and reader.index_id == live.id:
            state = LIVE
        else:
            # On another index since the swap (or since it started, if it started later).
            start = max(since, clock.utc(reader.started_at)) if since else None
            behind = (at - start).total_seconds() if start else None
            late = behind is None or behind > settings.skew_after.total_seconds()
            state = SKEW if late else BEHIND
        states.append(ReaderState(reader, state, behind))
    return AliasReaders(alias, live, since, states)


def describe(state: ReaderState) -> str:
    """One reader in a line: who, where it is, for how long."""
    reader = state.reader
    where = f"index #{reader.index_id}" if reader.index_id is not None else "no index yet"
    behind = f" for {state.behind_for:.0f} s" if state.behind_for is not None else ""
    why = f" ({reader.drift})" if state.state == REFUSED and reader.drift else ""
    return f"{reader.describe()} on {where}: {state.state}{behind}{why}"


def converge(
    engine: sa.Engine, alias: str, settings: ReaderSettings, timeout: float
) -> tuple[float, AliasReaders]:
    """Wait until every reader of ``alias`` still reporting serves its live index, at most
    ``timeout`` seconds; the seconds waited and the readers as last seen."""
    started = time.monotonic()
    while True:
        with engine.connect() as conn:
            seen = survey(conn, alias, settings)
        waited = time.monotonic() - started
        if seen.converged or waited >= timeout:
            return waited, seen
        time.sleep(min(_CONVERGE_POLL, max(0.0, timeout - waited)))


_CONVERGE_POLL = 0.2  # seconds between looks at the heartbeats while waiting for readers
