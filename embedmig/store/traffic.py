"""Live traffic in SQL: the query log, canaries, and the comparisons searchers mirror to them.

Like ``catalog``, every function takes an open connection and leaves the transaction to the caller.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import sqlalchemy as sa

from embedmig.history import schema as t
from embedmig.history.batches import in_parts
from embedmig.store import clock

OPEN, PASSED, FORCED, CLOSED, ABANDONED = "open", "passed", "forced", "closed", "abandoned"


# ---- query log -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """One query a searcher answered, as the log keeps it."""

    at: datetime
    sha: int
    text: str | None  # None when searcher.log_text = false
    k: int
    meta: str | None = None  # JSON; None without (or with searcher.log_text = false)


def log(conn: sa.Connection, alias: str, queries: Sequence[Served], keep: int) -> None:
    """Append ``queries`` to the log of ``alias`` and trim it to its newest ``keep`` entries."""
    if not queries:
        return
    conn.execute(
        t.query_log.insert(),
        [
            {"alias": alias, "at": q.at, "sha": q.sha, "text": q.text, "k": q.k, "meta": q.meta}
            for q in queries
        ],
    )
    log_ = t.query_log.c
    cut = conn.execute(
        sa.select(log_.id).where(log_.alias == alias).order_by(log_.id.desc()).offset(keep).limit(1)
    ).scalar()
    if cut is not None:
        conn.execute(t.query_log.delete().where(log_.alias == alias, log_.id <= cut))


@dataclass(frozen=True)
class LogCounts:
    entries: int
    with_text: int


def log_counts(conn: sa.Connection, alias: str) -> LogCounts:
    log_ = t.query_log.c
    entries, with_text = conn.execute(
        sa.select(sa.func.count(), sa.func.count(log_.text)).where(log_.alias == alias)
    ).one()
    return LogCounts(int(entries), int(with_text))


def latest_queries(
    conn: sa.Connection, alias: str, limit: int | None
) -> list[tuple[int, str, dict[str, Any] | None]]:
    """The ``limit`` most recently served distinct queries (all when None): (hash, text, meta);
    a text served with two metadata is two queries."""
    log_ = t.query_log.c
    newest = sa.func.max(log_.id).label("newest")
    query = (
        sa.select(log_.sha, log_.text, log_.meta, newest)
        .where(log_.alias == alias, log_.text.is_not(None))
        .group_by(log_.sha, log_.text, log_.meta)
        .order_by(newest.desc())
    )
    if limit is not None:
        query = query.limit(limit)
    return [
        (int(sha), str(text), json.loads(meta) if meta else None)
        for sha, text, meta, _ in conn.execute(query)
    ]


def sample_served(
    conn: sa.Connection, alias: str, *, since: datetime | None, limit: int, seed: int
) -> tuple[list[str], int]:
    """A seeded uniform sample of at most ``limit`` logged queries of ``alias`` served at or
    after ``since`` (all when None), repeats kept (a frequent query weighs as it did), with the
    number of queries logged in that window (with or without their text)."""
    log_ = t.query_log.c
    window = [log_.alias == alias] + ([log_.at >= since] if since is not None else [])
    total = int(conn.execute(sa.select(sa.func.count()).where(*window)).scalar() or 0)
    ids = np.fromiter(
        conn.execute(sa.select(log_.id).where(*window, log_.text.is_not(None))).scalars(),
        dtype=np.int64,
    )
    if len(ids) > limit:
        ids = np.sort(np.random.default_rng(seed).choice(ids, limit, replace=False))
    texts: list[str] = []
    for chunk in in_parts([int(i) for i in ids]):
        texts += [
            str(text)
            for text in conn.execute(
                sa.select(log_.text).where(log_.id.in_(chunk)).order_by(log_.id)
            ).scalars()
        ]
    return texts, total


# ---- canaries --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Canary:
    id: int
    alias: str
    revision: str
    index_id: int
    live_id: int | None
    fraction: float
    k: int
    min_queries: int
    status: str
    dropped: int
    report: dict[str, Any] | None
    opened_at: datetime
    closed_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> Canary:
        values = dict(row._mapping)
        values["report"] = json.loads(values["report"]) if values["report"] else None
        return cls(**values)


def open_canary(conn: sa.Connection, alias: str) -> Canary | None:
    """The canary open on ``alias``, if any (at most one: a unique index says so)."""
    row = conn.execute(
        sa.select(t.canary).where(t.canary.c.alias == alias, t.canary.c.status == OPEN)
    ).first()
    return Canary.from_row(row) if row is not None else None


def start(
    conn: sa.Connection,
    *,
    alias: str,
    revision: str,
    index_id: int,
    live_id: int | None,
    fraction: float,
    k: int,
    min_queries: int,
    report: dict[str, Any],
) -> int:
    result = conn.execute(
        t.canary.insert().values(
            alias=alias,
            revision=revision,
            index_id=index_id,
            live_id=live_id,
            fraction=fraction,
            k=k,
            min_queries=min_queries,
            status=OPEN,
            report=json.dumps(report, allow_nan=False),
            opened_at=clock.now(),
        )
    )
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def close(conn: sa.Connection, canary_id: int, status: str) -> None:
    conn.execute(
        t.canary.update()
        .where(t.canary.c.id == canary_id, t.canary.c.status == OPEN)
        .values(status=status, closed_at=clock.now())
    )


def set_fraction(conn: sa.Connection, canary_id: int, fraction: float) -> None:
    conn.execute(t.canary.update().where(t.canary.c.id == canary_id).values(fraction=fraction))


def add_dropped(conn: sa.Connection, canary_id: int, count: int) -> None:
    if count:
        conn.execute(
            t.canary.update()
            .where(t.canary.c.id == canary_id)
            .values(dropped=t.canary.c.dropped + count)
        )


# ---- mirrored comparisons --------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """One mirrored query: both top-k lists, each ``k`` long (-1 ids pad a short result)."""

    at: datetime
    text: str | None
    old_ids: np.ndarray
    old_scores: np.ndarray
    new_ids: np.ndarray
    new_scores: np.ndarray


def record(conn: sa.Connection, canary_id: int, comparisons: Sequence[Comparison]) -> None:
    if comparisons:
        conn.execute(
            t.canary_result.insert(),
            [
                {
                    "canary_id": canary_id,
                    "at": c.at,
                    "text": c.text,
                    "old_ids": c.old_ids.astype("<i8").tobytes(),
                    "old_scores": c.old_scores.astype("<f4").tobytes(),
                    "new_ids": c.new_ids.astype("<i8").tobytes(),
                    "new_scores": c.new_scores.astype("<f4").tobytes(),
                }
                for c in comparisons
            ],
        )


@dataclass(frozen=True)
class Comparisons:
    """Every comparison of a canary, as aligned ``n x k`` arrays (rows in mirroring order)."""

    texts: list[str | None]
    old_ids: np.ndarray
    old_scores: np.ndarray
    new_ids: np.ndarray
    new_scores: np.ndarray
    first_at: datetime | None
    last_at: datetime | None

    def __len__(self) -> int:
        return len(self.texts)


def comparisons(conn: sa.Connection, canary: Canary) -> Comparisons:
    c = t.canary_result.c
    rows = conn.execute(
        sa.select(c.at, c.text, c.old_ids, c.old_scores, c.new_ids, c.new_scores)
        .where(c.canary_id == canary.id)
        .order_by(c.id)
    ).all()
    k = canary.k

    def stacked(column: int, dtype: str) -> np.ndarray:
        data = b"".join(row[column] for row in rows)
        return np.frombuffer(data, dtype=dtype).reshape(len(rows), k).copy()

    return Comparisons(
        texts=[row[1] for row in rows],
        old_ids=stacked(2, "<i8").astype(np.int64),
        old_scores=stacked(3, "<f4").astype(np.float32),
        new_ids=stacked(4, "<i8").astype(np.int64),
        new_scores=stacked(5, "<f4").astype(np.float32),
        first_at=rows[0][0] if rows else None,
        last_at=rows[-1][0] if rows else None,
    )
