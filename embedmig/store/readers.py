"""Readers in SQL: one heartbeat row per running searcher, so every reader's index is in view.

Like ``catalog``, every function takes an open connection and leaves the transaction to the caller.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from embedmig.history import schema as t
from embedmig.store import clock, locks


@dataclass(frozen=True)
class Beat:
    """What a searcher reports about itself at each heartbeat."""

    id: str
    alias: str
    host: str
    pid: int
    index_id: int | None  # the index it served last; None before its first search
    since: datetime | None  # when it began serving that index
    served: int  # queries answered since it started
    drift: str | None  # why it cannot serve the live index now, None while it can
    started_at: datetime


def beat(conn: sa.Connection, now: Beat) -> None:
    """Write ``now`` as the reader's row: only that reader writes it, so update-or-insert is safe."""
    values = {
        "alias": now.alias,
        "host": now.host,
        "pid": now.pid,
        "index_id": now.index_id,
        "since": now.since,
        "served": now.served,
        "drift": now.drift,
        "started_at": now.started_at,
        "heartbeat_at": clock.db_now(conn),
    }
    updated = conn.execute(t.reader.update().where(t.reader.c.id == now.id).values(**values))
    if updated.rowcount == 0:
        conn.execute(t.reader.insert().values(id=now.id, **values))


def leave(conn: sa.Connection, reader_id: str) -> None:
    conn.execute(t.reader.delete().where(t.reader.c.id == reader_id))


def forget(conn: sa.Connection, reader_ids: Iterable[str]) -> None:
    ids = list(reader_ids)
    if ids:
        conn.execute(t.reader.delete().where(t.reader.c.id.in_(ids)))


@dataclass(frozen=True)
class Reader:
    id: str
    alias: str
    host: str
    pid: int
    index_id: int | None
    since: datetime | None
    served: int
    drift: str | None
    started_at: datetime
    heartbeat_at: datetime

    def silent(self, after: timedelta, at: datetime) -> bool:
        """Whether it is gone: on this host, its process is; on another, it sent no heartbeat
        for ``after`` (``at`` is the database's clock, as heartbeats are written)."""
        if self.host == socket.gethostname():
            return not locks.pid_alive(self.pid)
        return self._quiet(after, at)

    def stalled(self, after: timedelta, at: datetime) -> bool:
        """Whether it is on this host, its process alive, but sent no heartbeat for ``after``:
        paused (SIGSTOP, a debugger) or hung. It still holds the index it served."""
        here = self.host == socket.gethostname()
        return here and locks.pid_alive(self.pid) and self._quiet(after, at)

    def _quiet(self, after: timedelta, at: datetime) -> bool:
        return at - clock.utc(self.heartbeat_at) > after

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"


def of(conn: sa.Connection, alias: str | None = None) -> list[Reader]:
    """The readers that reported on ``alias`` (every alias when None), oldest first."""
    query = sa.select(t.reader).order_by(t.reader.c.started_at, t.reader.c.id)
    if alias is not None:
        query = query.where(t.reader.c.alias == alias)
    return [Reader(**dict(row._mapping)) for row in conn.execute(query)]


def held(conn: sa.Connection, alias: str, silent_after: timedelta) -> set[int]:
    """The indexes of ``alias`` that a reader still reporting serves: their files must stay."""
    at = clock.db_now(conn)
    return {
        r.index_id
        for r in of(conn, alias)
        if r.index_id is not None and not r.silent(silent_after, at)
    }
