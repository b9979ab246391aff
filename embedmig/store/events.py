"""History events in SQL: every upgrade, downgrade, dry run, stamp and watch, with its report.

``record`` takes an open connection and leaves the transaction to the caller, so a swap and its
history row commit together.
"""

from __future__ import annotations

import getpass
import json
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from embedmig.errors import ScriptError, StateError
from embedmig.history import schema as t
from embedmig.store.clock import now, utc

if TYPE_CHECKING:
    pass


@dataclass(frozen=True)
class HistoryRecord:
    id: int
    alias: str
    revision: str | None
    action: str
    from_index: int | None
    to_index: int | None
    status: str
    verdict: str | None
    forced: bool
    metrics: dict[str, Any] | None
    message: str | None
    user: str
    host: str
    started_at: datetime
    finished_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> HistoryRecord:
        values = dict(row._mapping)
        values["metrics"] = json.loads(values["metrics"]) if values["metrics"] else None
        return cls(**values)


def record(
    conn: sa.Connection,
    *,
    alias: str,
    revision: str | None,
    action: str,
    status: str,
    started_at: datetime,
    from_index: int | None = None,
    to_index: int | None = None,
    verdict: str | None = None,
    forced: bool = False,
    metrics: Mapping[str, Any] | None = None,
    message: str | None = None,
) -> int:
    result = conn.execute(
        t.history.insert().values(
            alias=alias,
            revision=revision,
            action=action,
            from_index=from_index,
            to_index=to_index,
            status=status,
            verdict=verdict,
            forced=forced,
            metrics=json.dumps(metrics, allow_nan=False) if metrics is not None else None,
            message=message,
            user=_user(),
            host=socket.gethostname(),
            started_at=started_at,
            finished_at=now(),
        )
    )
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def history(
    conn: sa.Connection, alias: str | None = None, revision: str | None = None
) -> list[HistoryRecord]:
    query = sa.select(t.history).order_by(t.history.c.id.desc())
    if alias is not None:
        query = query.where(t.history.c.alias == alias)
    if revision is not None:
        query = query.where(t.history.c.revision == revision)
    return [HistoryRecord.from_row(row) for row in conn.execute(query)]


# History statuses and actions of the events that changed what an alias serves: a swap to a new
# index, a rollback, or an adapter revision (the same index, queried through a map from then on).
SWAPPED = ("ok", "forced")
SWAPS = ("upgrade", "adapter")


def went_live(conn: sa.Connection, alias: str, index_id: int) -> datetime | None:
    """When ``index_id`` last became what ``alias`` serves (a swap, a rollback, or an adapter
    revision that serves it through a map)."""
    h = t.history.c
    found = conn.execute(
        sa.select(sa.func.max(h.finished_at)).where(
            h.alias == alias,
            h.to_index == index_id,
            h.status.in_(SWAPPED),
            h.action.in_((*SWAPS, "downgrade", "recover")),
        )
    ).scalar()
    return utc(found) if found is not None else None


def swap_of(
    conn: sa.Connection, alias: str, index_id: int, revision: str | None
) -> HistoryRecord | None:
    """The upgrade (or adapter revision) of ``revision`` that made ``index_id`` what the alias
    serves, with its report: the baseline of what it serves now (after a rollback, the swap of
    the revision rolled back to)."""
    h = t.history.c
    row = conn.execute(
        sa.select(t.history)
        .where(
            h.alias == alias,
            h.revision == revision,
            h.to_index == index_id,
            h.status.in_(SWAPPED),
            h.action.in_(SWAPS),
            h.metrics.is_not(None),
        )
        .order_by(h.id.desc())
        .limit(1)
    ).first()
    return HistoryRecord.from_row(row) if row is not None else None


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def with_report(conn: sa.Connection, rev: str, event: int | None = None) -> HistoryRecord:
    """History event ``event``, or the latest recorded upgrade or dry run of revision ``rev``
    (a unique prefix), with its report."""
    recorded = [e for e in history(conn) if e.metrics is not None]
    if event is not None:
        chosen = [e for e in recorded if e.id == event]
        if not chosen:
            raise StateError(f"history event #{event} has no recorded report")
        return chosen[0]
    revisions = {e.revision for e in recorded if e.revision and e.revision.startswith(rev)}
    if len(revisions) > 1:
        raise ScriptError(f"{rev!r} matches several revisions: {', '.join(sorted(revisions))}")
    chosen = [e for e in recorded if e.revision in revisions]
    if not chosen:
        raise StateError(f"no recorded upgrade or dry run of revision {rev!r}")
    return chosen[0]
