"""A backfill's checkpoints in SQL: how far the shadow got, committed with its batch."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from embedmig.history import schema as t
from embedmig.store.clock import now

if TYPE_CHECKING:
    pass


@dataclass(frozen=True)
class Checkpoint:
    docs_consumed: int = 0
    rows: int = 0
    progress: dict[str, Any] | None = None  # what a resumed run needs of the consumed documents


def checkpoint(conn: sa.Connection, index_id: int) -> Checkpoint:
    """What was recorded for an index being built (nothing yet: zeros)."""
    row = conn.execute(
        sa.select(t.checkpoint.c.docs_consumed, t.checkpoint.c.rows, t.checkpoint.c.progress).where(
            t.checkpoint.c.index_id == index_id
        )
    ).first()
    if row is None:
        return Checkpoint()
    return Checkpoint(int(row[0]), int(row[1]), json.loads(row[2]) if row[2] else None)


def save_checkpoint(conn: sa.Connection, index_id: int, point: Checkpoint) -> None:
    values = {
        "docs_consumed": point.docs_consumed,
        "rows": point.rows,
        "progress": json.dumps(point.progress) if point.progress is not None else None,
        "updated_at": now(),
    }
    updated = conn.execute(
        t.checkpoint.update().where(t.checkpoint.c.index_id == index_id).values(**values)
    )
    if updated.rowcount == 0:
        conn.execute(t.checkpoint.insert().values(index_id=index_id, **values))


def clear_checkpoint(conn: sa.Connection, index_id: int) -> None:
    conn.execute(t.checkpoint.delete().where(t.checkpoint.c.index_id == index_id))
