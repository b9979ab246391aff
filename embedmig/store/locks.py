"""One migration per alias at a time: a fenced lease in SQL, renewed by a heartbeat while held.

A row per locked alias (insert to take it: the primary key makes this atomic on SQLite and
PostgreSQL alike). A holder that stopped renewing for longer than the lease, or whose process is
gone from this host, is dead: its lock is taken over with a compare-and-swap on its owner id,
which also bumps the row's generation (``token``).

Leases are stamped and judged on the database's clock (``clock.db_now``), never a client's: a
host whose clock runs hours behind is not taken for dead. Being taken over is not enough to stop
a holder that was only paused (SIGSTOP, a VM pause, a long GC) and resumes: so every
state-changing transaction of a holder first checks its fencing token, the (owner, generation)
pair it acquired, in that same transaction (``Lease.check``), and refuses with ``LockLost`` when
the row holds another. The check is an UPDATE of the lock row: until the transaction commits, a
takeover waits for it, so no state change can commit after a takeover.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa

from embedmig.errors import Locked, LockLost, StateError
from embedmig.history import schema as t
from embedmig.store import clock

log = logging.getLogger("embedmig")


@dataclass(frozen=True)
class Holder:
    alias: str
    owner: str
    token: int
    host: str
    pid: int
    command: str
    acquired_at: datetime
    heartbeat_at: datetime

    def describe(self) -> str:
        return (
            f"{self.command} by pid {self.pid} on {self.host} since "
            f"{clock.utc(self.acquired_at):%Y-%m-%d %H:%M:%S} UTC"
        )

    def alive(self, lease: timedelta, at: datetime) -> bool:
        """Whether it holds the lock still, ``at`` being the database's clock now."""
        if self.host == socket.gethostname():
            return pid_alive(self.pid)
        return at - clock.utc(self.heartbeat_at) < lease


@dataclass
class Lease:
    """The locks one run holds: its owner id and, per alias, the generation it acquired."""

    owner: str
    seconds: float
    tokens: dict[str, int] = field(default_factory=dict)
    lost: threading.Event = field(default_factory=threading.Event)

    def check(self, conn: sa.Connection) -> None:
        """Refuse (LockLost) unless every lock of this lease is still ours, in ``conn``'s
        transaction: the caller's changes then commit only while it holds them."""
        for alias, token in sorted(self.tokens.items()):
            if self.lost.is_set() or not _touch(conn, alias, self.owner, token):
                self.lost.set()
                raise LockLost(
                    f"this run lost the migration lock of {alias!r}: its lease "
                    f"({self.seconds:g} s, lock.lease_seconds) ran out while it did not renew it "
                    "(paused or cut off) and another run took it over; it stopped before "
                    "changing anything more. Check `embedmig current`, then re-run",
                    alias=alias,
                )


def holder(engine: sa.Engine, alias: str) -> Holder | None:
    with engine.connect() as conn:
        return _holder(conn, alias)


def _holder(conn: sa.Connection, alias: str) -> Holder | None:
    row = conn.execute(sa.select(t.lock).where(t.lock.c.alias == alias)).first()
    return Holder(**dict(row._mapping)) if row else None


@contextmanager
def hold(
    engine: sa.Engine,
    aliases: Iterable[str],
    command: str,
    *,
    wait: float,
    lease: float,
) -> Iterator[Lease]:
    """Hold the locks of ``aliases`` (taken in sorted order, so two runs cannot deadlock); the
    lease it yields fences the holder's transactions (``Lease.check``)."""
    held = Lease(uuid.uuid4().hex, lease)
    lease_span = timedelta(seconds=lease)
    stop = threading.Event()
    try:
        for alias in sorted(set(aliases)):
            held.tokens[alias] = _acquire(engine, alias, held.owner, command, wait, lease_span)
        beat = threading.Thread(
            target=_heartbeat,
            args=(engine, held, stop, lease / 3),
            name="embedmig-lock",
            daemon=True,
        )
        beat.start()
        try:
            yield held
        finally:
            stop.set()
            beat.join()
    finally:
        if held.tokens:
            with engine.begin() as conn:
                conn.execute(t.lock.delete().where(t.lock.c.owner == held.owner))


def unlock(engine: sa.Engine, alias: str, *, force: bool = False, lease: float = 60.0) -> Holder:
    """Remove ``alias``'s lock for a human; refuses while its holder is alive, unless ``force``.
    A holder that is only paused finds its lock gone when it resumes and stops (``LockLost``)."""
    with engine.begin() as conn:
        current = _holder(conn, alias)
        if current is None:
            raise StateError(f"alias {alias!r} is not locked")
        if current.alive(timedelta(seconds=lease), clock.db_now(conn)) and not force:
            raise Locked(
                f"alias {alias!r} is locked by a live {current.describe()}; --force to remove it",
                current,
            )
        conn.execute(
            t.lock.delete().where(t.lock.c.alias == alias, t.lock.c.owner == current.owner)
        )
    return current


def _acquire(
    engine: sa.Engine, alias: str, owner: str, command: str, wait: float, lease: timedelta
) -> int:
    """Take ``alias``'s lock; returns the generation acquired."""
    deadline = time.monotonic() + wait
    while True:
        values = {
            "alias": alias,
            "owner": owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "command": command,
        }
        try:
            with engine.begin() as conn:
                at = clock.db_now(conn)
                conn.execute(
                    t.lock.insert().values(token=1, acquired_at=at, heartbeat_at=at, **values)
                )
            return 1
        except sa.exc.IntegrityError:
            pass
        with engine.begin() as conn:
            current, at = _holder(conn, alias), clock.db_now(conn)
            if current is not None and not current.alive(lease, at):
                taken = conn.execute(
                    t.lock.update()
                    .where(
                        t.lock.c.alias == alias,
                        t.lock.c.owner == current.owner,
                        t.lock.c.token == current.token,
                    )
                    .values(token=current.token + 1, acquired_at=at, heartbeat_at=at, **values)
                ).rowcount
                if taken == 1:
                    log.warning(
                        "took over the lock of %s from %s (no heartbeat within %g s)",
                        alias,
                        current.describe(),
                        lease.total_seconds(),
                    )
                    return current.token + 1
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


def _touch(conn: sa.Connection, alias: str, owner: str, token: int) -> bool:
    """Take the row lock of our lock row (so a takeover waits for this transaction); False
    when it is no longer ours."""
    return (
        conn.execute(
            t.lock.update()
            .where(t.lock.c.alias == alias, t.lock.c.owner == owner, t.lock.c.token == token)
            .values(token=t.lock.c.token)
        ).rowcount
        == 1
    )


def _heartbeat(engine: sa.Engine, held: Lease, stop: threading.Event, every: float) -> None:
    while not stop.wait(every):
        try:
            with engine.begin() as conn:
                at = clock.db_now(conn)
                renewed = conn.execute(
                    t.lock.update().where(t.lock.c.owner == held.owner).values(heartbeat_at=at)
                ).rowcount
        except sa.exc.SQLAlchemyError:
            continue  # a missed beat is retried; the lease allows several
        if renewed < len(held.tokens):
            # Taken over while this process was paused: its next fenced transaction refuses.
            held.lost.set()
            log.error("the migration lock was taken over by another run; stopping")
            return


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
