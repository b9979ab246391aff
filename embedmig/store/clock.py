"""Time as embedmig records and judges it.

``now`` stamps what this process did (history rows, timings). Leases and heartbeats written by
several hosts are stamped and judged with ``db_now``, the history database's own clock, so a host
whose clock runs behind or ahead neither looks dead nor outlives its lease.
"""

from __future__ import annotations

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
