"""Time as embedmig records and judges it.

``now`` stamps what this process did (history rows, timings). Leases and heartbeats written by
several hosts are stamped and judged with ``db_now``, the history database's own clock, so a host
whose clock runs behind or ahead neither looks dead nor outlives its lease.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import sqlalchemy as sa


def now() -> datetime:
    return datetime.now(UTC)


def utc(moment: datetime) -> datetime:
    """``moment`` as read back from SQL, timezone-aware: SQLite hands timezone-aware columns
    back naive (they were stored as UTC)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def db_now(conn: sa.Connection) -> datetime:
    """The database's clock: PostgreSQL's ``clock_timestamp()``; SQLite's ``'now'`` (computed
    by the SQLite library on the machine that holds the file)."""
    if conn.dialect.name == "postgresql":
        return utc(conn.execute(sa.select(sa.func.clock_timestamp())).scalar_one())
    if conn.dialect.name == "sqlite":
        text = conn.execute(sa.text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')")).scalar_one()
        return datetime.fromisoformat(text).replace(tzinfo=UTC)
    return utc(conn.execute(sa.select(sa.func.current_timestamp())).scalar_one())


class Phases:
    """Wall time per named phase, so a report can say where its time went: ``seconds`` maps
    ``<phase>_s`` to the seconds spent in it (a phase entered twice adds up), and ``total``
    adds ``total_s``, the time since the timer was made plus what ``add`` counted in."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._started = time.perf_counter()
        self._before = 0.0

    def add(self, name: str, seconds: float) -> None:
        """Count in a phase timed elsewhere, before this timer was made (a model's loading)."""
        key = f"{name}_s"
        self.seconds[key] = self.seconds.get(key, 0.0) + seconds
        self._before += seconds

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            key = f"{name}_s"
            self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - started

    def total(self) -> dict[str, float]:
        return {**self.seconds, "total_s": time.perf_counter() - self._started + self._before}
