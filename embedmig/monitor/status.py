"""Readers' status (``embedmig status``, ``upgrade --wait-readers``, ``prune``): what the
heartbeats the searchers write (``embedmig.serve.heartbeat``) say about each alias's readers,
judged on the database's clock.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import sqlalchemy as sa

from embedmig.config import Config
from embedmig.environment import Environment
from embedmig.errors import ReadersBehind, StateError
from embedmig.store import catalog, clock, events, readers

log = logging.getLogger("embedmig")


class Reading(StrEnum):
    """What a reader is doing, judged from its heartbeat against the alias's live index."""

    LIVE = "live"  # serves the live index
    BEHIND = "behind"  # serves another one, for less than readers.skew_seconds since the swap
    SKEW = "skew"  # serves another one, for longer
    SILENT = "silent"  # no heartbeat for readers.silent_seconds, or its process is gone
    STALLED = "stalled"  # on this host, alive but not reporting: paused or hung
    IDLE = "idle"  # has served nothing yet
    REFUSED = "refused"  # its embedder drifted: it refuses to serve


# What a swap waits for no longer: on the live index, gone, or not serving anything yet.
SETTLED = (Reading.LIVE, Reading.SILENT, Reading.IDLE)


@dataclass(frozen=True)
class ReaderState:
    reader: readers.Reader
    state: Reading
    # How long it has served another index than the live one since the swap (seconds).
    behind_for: float | None = None

    @property
    def flagged(self) -> bool:
        return self.state in (Reading.SKEW, Reading.SILENT, Reading.STALLED, Reading.REFUSED)


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
    since = events.went_live(conn, alias, live.id) if live is not None else None
    states = []
    for reader in readers.of(conn, alias):
        behind = None
        if reader.silent(settings.silent_after, at):
            state = Reading.SILENT
        elif reader.stalled(settings.silent_after, at):
            state = Reading.STALLED
        elif reader.drift is not None:
            state = Reading.REFUSED
        elif reader.index_id is None:
            state = Reading.IDLE
        elif live is not None and reader.index_id == live.id:
            state = Reading.LIVE
        else:
            # On another index since the swap (or since it started, if it started later).
            start = max(since, clock.utc(reader.started_at)) if since else None
            behind = (at - start).total_seconds() if start else None
            late = behind is None or behind > settings.skew_after.total_seconds()
            state = Reading.SKEW if late else Reading.BEHIND
        states.append(ReaderState(reader, state, behind))
    return AliasReaders(alias, live, since, states)


def describe(state: ReaderState) -> str:
    """One reader in a line: who, where it is, for how long."""
    reader = state.reader
    where = f"index #{reader.index_id}" if reader.index_id is not None else "no index yet"
    behind = f" for {state.behind_for:.0f} s" if state.behind_for is not None else ""
    why = f" ({reader.drift})" if state.state == Reading.REFUSED and reader.drift else ""
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


def aliases(env: Environment, alias: str | None = None) -> list[AliasReaders]:
    """The readers of every alias with a live index or a reader (or of ``alias``)."""
    settings = ReaderSettings.of(env.config)
    if not env.has_history():
        if alias is not None:
            raise StateError(f"alias {alias!r} has no live index and no readers")
        return []
    with env.engine.connect() as conn:
        if alias is not None:
            names = [alias]
        else:
            names = sorted(
                {r.alias for r in catalog.live_indexes(conn)} | {r.alias for r in readers.of(conn)}
            )
        found = [survey(conn, name, settings) for name in names]
    if alias is not None and found[0].live is None and not found[0].readers:
        raise StateError(f"alias {alias!r} has no live index and no readers")
    return found


def await_readers(env: Environment, alias: str, timeout: float) -> float:
    """Wait until every reader of ``alias`` still reporting serves its live index: the seconds
    it took; ReadersBehind, naming them, after ``timeout``."""
    waited, seen = converge(env.engine, alias, ReaderSettings.of(env.config), timeout)
    behind = [r for r in seen.readers if r.state not in SETTLED]
    if behind:
        raise ReadersBehind(
            f"{alias} swapped, but after {waited:.1f} s {len(behind)} reader(s) still serve "
            f"another index: {', '.join(describe(r) for r in behind[:5])}",
            alias=alias,
            readers=behind,
        )
    log.info(
        "%s: %d reader(s) serve index #%s, %.1f s after the swap",
        alias,
        sum(r.state == Reading.LIVE for r in seen.readers),
        seen.live.id if seen.live else "-",
        waited,
    )
    return waited
