"""The catalog in SQL: indexes and their lifecycle, alias pointers, stable document ids, history.

Every function takes an open connection and leaves the transaction to the caller, so a swap and its
history row, or a batch and its checkpoint, commit together.
"""

from __future__ import annotations

import getpass
import json
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from embedmig.errors import StateError
from embedmig.history import schema as t
from embedmig.names import check_key
from embedmig.store.clock import now, utc

if TYPE_CHECKING:
    import numpy as np

SNIPPET_CHARS = 200

BUILDING, READY, LIVE, RETIRED, DROPPED = "building", "ready", "live", "retired", "dropped"


@dataclass(frozen=True)
class IndexRecord:
    id: int
    alias: str
    revision: str
    path: str | None
    fingerprint: str
    model: str
    dim: int
    metric: str
    factory: str
    ntotal: int
    sha256: str | None
    state: str
    base_seq: int
    created_at: datetime
    updated_at: datetime
    probe: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_row(cls, row: Any) -> IndexRecord:
        return cls(**dict(row._mapping))


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


# ---- aliases and versions -------------------------------------------------------------------


def versions(conn: sa.Connection) -> dict[str, str]:
    rows = conn.execute(sa.select(t.version.c.alias, t.version.c.revision))
    return {alias: revision for alias, revision in rows}


def set_version(conn: sa.Connection, alias: str, revision: str | None) -> None:
    conn.execute(t.version.delete().where(t.version.c.alias == alias))
    if revision is not None:
        conn.execute(t.version.insert().values(alias=alias, revision=revision, updated_at=now()))


def live_index(conn: sa.Connection, alias: str) -> IndexRecord | None:
    row = conn.execute(
        sa.select(t.index).where(t.index.c.alias == alias, t.index.c.state == LIVE)
    ).first()
    return IndexRecord.from_row(row) if row else None


def get_index(conn: sa.Connection, index_id: int) -> IndexRecord:
    row = conn.execute(sa.select(t.index).where(t.index.c.id == index_id)).first()
    if row is None:
        raise StateError(f"no index #{index_id}")
    return IndexRecord.from_row(row)


def indexes(conn: sa.Connection, alias: str | None = None) -> list[IndexRecord]:
    query = sa.select(t.index).order_by(t.index.c.id)
    if alias is not None:
        query = query.where(t.index.c.alias == alias)
    return [IndexRecord.from_row(row) for row in conn.execute(query)]


def find_index(
    conn: sa.Connection, alias: str, revision: str, states: Sequence[str]
) -> IndexRecord | None:
    """The newest index of ``alias`` built by ``revision`` in one of ``states``."""
    row = conn.execute(
        sa.select(t.index)
        .where(
            t.index.c.alias == alias,
            t.index.c.revision == revision,
            t.index.c.state.in_(states),
        )
        .order_by(t.index.c.id.desc())
    ).first()
    return IndexRecord.from_row(row) if row else None


def previous_index(conn: sa.Connection, live: IndexRecord, down_revision: str) -> IndexRecord:
    """The retired index that ``live`` replaced, which a rollback of its revision restores: the
    one its upgrade swapped out (history), else the newest retired index of ``down_revision``."""
    for event in history(conn, live.alias, live.revision):
        if event.action == "upgrade" and event.to_index == live.id and event.from_index:
            previous = get_index(conn, event.from_index)
            break
    else:
        found = find_index(conn, live.alias, down_revision, [RETIRED])
        if found is None:
            raise StateError(f"no retained index of {down_revision} to roll back to")
        previous = found
    if previous.state != RETIRED:
        raise StateError(
            f"index #{previous.id} of {previous.revision} is {previous.state}, not retired; "
            "it cannot be restored without re-embedding"
        )
    return previous


def register_index(
    conn: sa.Connection,
    *,
    alias: str,
    revision: str,
    fingerprint: str,
    model: str,
    dim: int,
    factory: str,
    metric: str,
    base_seq: int = 0,
    probe: bytes | None = None,
) -> int:
    stamp = now()
    result = conn.execute(
        t.index.insert().values(
            alias=alias,
            revision=revision,
            fingerprint=fingerprint,
            model=model,
            dim=dim,
            metric=metric,
            factory=factory,
            ntotal=0,
            base_seq=base_seq,
            probe=probe,
            state=BUILDING,
            created_at=stamp,
            updated_at=stamp,
        )
    )
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def update_index(conn: sa.Connection, index_id: int, **values: Any) -> None:
    conn.execute(
        t.index.update().where(t.index.c.id == index_id).values(updated_at=now(), **values)
    )


def delete_index(conn: sa.Connection, index_id: int) -> None:
    conn.execute(t.index.delete().where(t.index.c.id == index_id))


def point_alias(
    conn: sa.Connection, alias: str, revision: str | None, index_id: int | None
) -> IndexRecord | None:
    """Make ``index_id`` the live index of ``alias`` (None: no live index); return the old one.

    The caller's transaction makes this atomic: readers see the old index or the new, never none.
    """
    previous = live_index(conn, alias)
    retire_adapters(conn, alias)  # the alias now serves an index as its own model built it
    if previous is not None:
        update_index(conn, previous.id, state=RETIRED)
    if index_id is not None:
        update_index(conn, index_id, state=LIVE)
    set_version(conn, alias, revision)
    return previous


# ---- adapters --------------------------------------------------------------------------------

# An adapter is "live" while its alias serves through it, a "bridge" while a backfill builds the
# index it stands in for; then "retired" (a rollback may restore it) or "dropped" by prune. A map
# is stored only once it serves: a fit whose gate failed leaves no row.
BRIDGE = "bridge"


@dataclass(frozen=True)
class AdapterRecord:
    id: int
    alias: str
    revision: str
    index_id: int
    kind: str
    path: str | None
    sha256: str | None
    fingerprint: str
    model: str
    dim: int
    pairs: int
    state: str
    created_at: datetime
    updated_at: datetime
    probe: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_row(cls, row: Any) -> AdapterRecord:
        return cls(**dict(row._mapping))


def register_adapter(conn: sa.Connection, **values: Any) -> int:
    stamp = now()
    result = conn.execute(t.adapter.insert().values(created_at=stamp, updated_at=stamp, **values))
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def update_adapter(conn: sa.Connection, adapter_id: int, **values: Any) -> None:
    conn.execute(
        t.adapter.update().where(t.adapter.c.id == adapter_id).values(updated_at=now(), **values)
    )


def adapters(
    conn: sa.Connection, alias: str | None = None, states: Sequence[str] | None = None
) -> list[AdapterRecord]:
    """Adapters, newest first."""
    query = sa.select(t.adapter).order_by(t.adapter.c.id.desc())
    if alias is not None:
        query = query.where(t.adapter.c.alias == alias)
    if states is not None:
        query = query.where(t.adapter.c.state.in_(states))
    return [AdapterRecord.from_row(row) for row in conn.execute(query)]


def live_adapter(conn: sa.Connection, alias: str) -> AdapterRecord | None:
    """The map the alias serves its live index through, if an adapter revision is current."""
    found = adapters(conn, alias, [LIVE])
    return found[0] if found else None


def retire_adapters(conn: sa.Connection, alias: str) -> None:
    """The alias stops serving through any map: its live adapter and bridges are retired."""
    conn.execute(
        t.adapter.update()
        .where(t.adapter.c.alias == alias, t.adapter.c.state.in_([LIVE, BRIDGE]))
        .values(state=RETIRED, updated_at=now())
    )


# ---- document ids ----------------------------------------------------------------------------


_LOCK = (
    t.sequence.update()
    .where(t.sequence.c.alias == sa.bindparam("b_alias"))
    .values(
        next_doc_id=t.sequence.c.next_doc_id + sa.bindparam("reserve"),
        last_seq=t.sequence.c.last_seq + sa.bindparam("reserve"),
    )
    .returning(t.sequence.c.next_doc_id, t.sequence.c.last_seq)
)
_DOCS_BY_KEY = sa.select(t.doc.c.key, t.doc.c.id, t.doc.c.snippet, t.doc.c.meta).where(
    t.doc.c.alias == sa.bindparam("alias"), t.doc.c.key.in_(sa.bindparam("keys", expanding=True))
)


def lock_alias(
    conn: sa.Connection, alias: str, *, reserve: int = 0, create: bool = True
) -> tuple[int, int]:
    """Serialize id assignment and journaling of ``alias``; return (next doc id, last seq).

    A write is the transaction's first statement, so SQLite takes its write lock here (rather than
    failing later on a stale read snapshot) and PostgreSQL a row lock, held until commit. Without
    ``create``, an alias that never had a document is left without a row: (1, 0).
    ``reserve`` > 0 also claims that many doc ids and sequence numbers after the returned ones, in
    the same statement (ids a caller does not use are skipped: int64 ids do not run out).
    """
    for _ in range(2):
        row = conn.execute(_LOCK, {"b_alias": alias, "reserve": reserve}).first()
        if row is not None:
            return int(row[0]) - reserve, int(row[1]) - reserve
        if not create:
            return 1, 0
        # A concurrent first writer may create the row too: whoever loses locks the winner's row.
        insert = dialect_insert(conn)(t.sequence).values(alias=alias, next_doc_id=1, last_seq=0)
        conn.execute(insert.on_conflict_do_nothing(index_elements=["alias"]))
    raise StateError(f"cannot lock the id sequence of alias {alias!r}")


def dialect_insert(conn: sa.Connection) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert
    if conn.dialect.name == "sqlite":
        return sqlite.insert
    raise StateError(f"history databases on {conn.dialect.name} are not supported")


def assign_ids(
    conn: sa.Connection, alias: str, keys: Sequence[str], texts: Sequence[str]
) -> np.ndarray:
    """Stable int64 ids of ``keys`` (new keys get fresh ids); refreshes changed snippets.

    Locks the alias (see ``lock_alias``) for the rest of the caller's transaction.
    """
    for key in keys:
        check_key(key)
    next_id, last_seq = lock_alias(conn, alias)
    ids, after = ids_under_lock(conn, alias, next_id, keys, texts)
    if after != next_id:
        set_counters(conn, alias, after, last_seq)
    return ids


def ids_under_lock(
    conn: sa.Connection,
    alias: str,
    next_id: int,
    keys: Sequence[str],
    texts: Sequence[str],
    metas: Sequence[str | None] | None = None,
) -> tuple[np.ndarray, int]:
    """``assign_ids`` for a caller holding the alias lock: the ids and the next free id after.

    Without ``metas`` (a backfill) the stored metadata is left as it is.
    """
    keep_meta = metas is None
    described = {
        key: (text[:SNIPPET_CHARS], meta)
        for key, text, meta in zip(keys, texts, metas or [None] * len(keys), strict=True)
    }
    known: dict[str, int] = {}
    stale: list[tuple[int, str, str | None]] = []
    unique = list(described)
    for start in range(0, len(unique), 500):
        part = unique[start : start + 500]
        rows = conn.execute(_DOCS_BY_KEY, {"alias": alias, "keys": part})
        for key, doc_id, snippet, meta in rows:
            known[key] = doc_id
            wanted_snippet, wanted_meta = described[key]
            if keep_meta:
                wanted_meta = meta
            if (snippet, meta) != (wanted_snippet, wanted_meta):
                stale.append((doc_id, wanted_snippet, wanted_meta))
    missing = [key for key in unique if key not in known]
    if missing:
        fresh = {key: next_id + i for i, key in enumerate(missing)}
        conn.execute(
            t.doc.insert(),
            [
                {
                    "alias": alias,
                    "id": i,
                    "key": k,
                    "snippet": described[k][0],
                    "meta": described[k][1],
                }
                for k, i in fresh.items()
            ],
        )
        known.update(fresh)
    if stale:
        stale_ids, snippets, metas_now = zip(*stale, strict=True)
        describe_docs(conn, alias, stale_ids, snippets, metas_now)
    import numpy as np  # here: the read-only commands use this module without numpy

    ids = np.fromiter((known[key] for key in keys), dtype=np.int64, count=len(keys))
    return ids, next_id + len(missing)


def describe_docs(
    conn: sa.Connection,
    alias: str,
    ids: Iterable[int],
    texts: Iterable[str],
    metas: Iterable[str | None],
) -> None:
    """Set the snippet and metadata of existing documents by id."""
    rows = [
        {"b_id": int(i), "b_snippet": text[:SNIPPET_CHARS], "b_meta": meta}
        for i, text, meta in zip(ids, texts, metas, strict=True)
    ]
    if rows:
        conn.execute(
            t.doc.update()
            .where(t.doc.c.alias == alias, t.doc.c.id == sa.bindparam("b_id"))
            .values(snippet=sa.bindparam("b_snippet"), meta=sa.bindparam("b_meta")),
            rows,
        )


def set_counters(conn: sa.Connection, alias: str, next_doc_id: int, last_seq: int) -> None:
    conn.execute(
        t.sequence.update()
        .where(t.sequence.c.alias == alias)
        .values(next_doc_id=next_doc_id, last_seq=last_seq)
    )


def lookup_ids(conn: sa.Connection, alias: str, keys: Iterable[str]) -> dict[str, int]:
    """Ids of the ``keys`` that have one; assigns nothing (dry runs must not write)."""
    found: dict[str, int] = {}
    unique = list(dict.fromkeys(keys))
    for start in range(0, len(unique), 500):
        rows = conn.execute(
            sa.select(t.doc.c.key, t.doc.c.id).where(
                t.doc.c.alias == alias, t.doc.c.key.in_(unique[start : start + 500])
            )
        )
        found.update({key: int(doc_id) for key, doc_id in rows})
    return found


class DocInfo(NamedTuple):
    key: str
    snippet: str
    meta: dict[str, Any] | None


def describe_ids(conn: sa.Connection, alias: str, ids: Iterable[int]) -> dict[int, DocInfo]:
    """id -> key, snippet and metadata of the given ids."""
    wanted = sorted({int(i) for i in ids if i >= 0})
    found: dict[int, DocInfo] = {}
    for start in range(0, len(wanted), 500):
        rows = conn.execute(
            sa.select(t.doc.c.id, t.doc.c.key, t.doc.c.snippet, t.doc.c.meta).where(
                t.doc.c.alias == alias, t.doc.c.id.in_(wanted[start : start + 500])
            )
        )
        found.update(
            {
                int(i): DocInfo(key, snippet, json.loads(meta) if meta else None)
                for i, key, snippet, meta in rows
            }
        )
    return found


# ---- checkpoints -----------------------------------------------------------------------------


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


# ---- history ---------------------------------------------------------------------------------


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
