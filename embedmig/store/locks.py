"""One migration per alias at a time: a lease in SQL, renewed by a heartbeat while held.

A row per locked alias (insert to take it: the primary key makes this atomic on SQLite and
PostgreSQL alike). A holder that stopped renewing for longer than the lease, or whose process is
gone from this host, is dead: its lock is taken over with a compare-and-swap on its owner id.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from embedmig.errors import Locked, StateError
from embedmig.history import schema as t
from embedmig.store import catalog


@dataclass(frozen=True)
class Holder:
    alias: str
    owner: str
    host: str
    pid: int
    command: str
    acquired_at: datetime
    heartbeat_at: datetime

    def describe(self) -> str:
        return (
            f"{self.command} by pid {self.pid} on {self.host} since "
            f"{catalog.utc(self.acquired_at):%Y-%m-%d %H:%M:%S} UTC"
        )

    def alive(self, lease: timedelta) -> bool:
        if self.host == socket.gethostname():
            return pid_alive(self.pid)
        return datetime.now(UTC) - catalog.utc(self.heartbeat_at) < lease


def holder(engine: sa.Engine, alias: str) -> Holder | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(t.lock).where(t.lock.c.alias == alias)).first()
    return Holder(**dict(row._mapping)) if row else None


@contextmanager
def hold(
    engine: sa.Engine,
    aliases: Iterable[str],
    command: str,
    *,
    wait: float = 0.0,
    lease: float = 60.0,
) -> Iterator[None]:
    """Hold the locks of ``aliases`` (taken in sorted order, so two runs cannot deadlock)."""
    owner = uuid.uuid4().hex
    lease_span = timedelta(seconds=lease)
    taken: list[str] = []
    stop = threading.Event()
    try:
        for alias in sorted(set(aliases)):
            _acquire(engine, alias, owner, command, wait, lease_span)
            taken.append(alias)
        beat = threading.Thread(
            target=_heartbeat,
            args=(engine, owner, stop, lease / 3),
            name="embedmig-lock",
            daemon=True,
        )
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join()
    finally:
        if taken:
            with engine.begin() as conn:
                conn.execute(t.lock.delete().where(t.lock.c.owner == owner))


def unlock(engine: sa.Engine, alias: str, *, force: bool = False, lease: float = 60.0) -> Holder:
    """Remove ``alias``'s lock for a human; refuses while its holder is alive, unless ``force``."""
    current = holder(engine, alias)
    if current is None:
        raise StateError(f"alias {alias!r} is not locked")
    if current.alive(timedelta(seconds=lease)) and not force:
        raise Locked(
            f"alias {alias!r} is locked by a live {current.describe()}; --force to remove it",
            current,
        )
    with engine.begin() as conn:
        conn.execute(
            t.lock.delete().where(t.lock.c.alias == alias, t.lock.c.owner == current.owner)
        )
    return current


def _acquire(
    engine: sa.Engine, alias: str, owner: str, command: str, wait: float, lease: timedelta
) -> None:
    deadline = time.monotonic() + wait
    while True:
        now = datetime.now(UTC)
        values = {
            "alias": alias,
            "owner": owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "command": command,
            "acquired_at": now,
            "heartbeat_at": now,
        }
        try:
            with engine.begin() as conn:
                conn.execute(t.lock.insert().values(**values))
            return
        except sa.exc.IntegrityError:
            pass
        current = holder(engine, alias)
        if current is not None and not current.alive(lease):
            with engine.begin() as conn:
                taken = conn.execute(
                    t.lock.update()
                    .where(t.lock.c.alias == alias, t.lock.c.owner == current.owner)
                    .values(**values)
                ).rowcount
            if taken == 1:
                return
            continue  # someone else took it over first: look again
        if current is None:
            continue  # released in between
        if time.monotonic() >= deadline:
            waited = f" after waiting {wait:g} s" if wait else ""
            raise Locked(
                f"alias {alias!r} is locked{waited}: {current.describe()}; "
                "retry later, pass --wait SECONDS, or `embedmig unlock` a dead holder",
                current,
            )
        time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))


def _heartbeat(engine: sa.Engine, owner: str, stop: threading.Event, every: float) -> None:
    while not stop.wait(every):
        try:
            with engine.begin() as conn:
                conn.execute(
                    t.lock.update()
                    .where(t.lock.c.owner == owner)
                    .values(heartbeat_at=datetime.now(UTC))
                )
        except sa.exc.SQLAlchemyError:
            continue  # a missed beat is retried; the lease allows several


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
