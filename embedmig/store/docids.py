"""Stable document ids in SQL: each alias's keys, the ids they were given, their snippets, and
the per-alias counters that hand out ids and journal positions.

Every function takes an open connection and leaves the transaction to the caller, so a batch's ids
and its checkpoint commit together.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from embedmig.errors import StateError
from embedmig.history import schema as t
from embedmig.history.batches import in_parts
from embedmig.names import check_key

SNIPPET_CHARS = 200

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
    for part in in_parts(unique):
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
    for part in in_parts(unique):
        rows = conn.execute(
            sa.select(t.doc.c.key, t.doc.c.id).where(t.doc.c.alias == alias, t.doc.c.key.in_(part))
        )
        found.update({key: int(doc_id) for key, doc_id in rows})
    return found


class DocInfo(NamedTuple):
    key: str
    snippet: str
    meta: dict[str, Any] | None


def describe_all(conn: sa.Connection, alias: str) -> dict[int, DocInfo]:
    """id -> key, snippet and metadata of every document ``alias`` ever held, in one read."""
    rows = conn.execute(
        sa.select(t.doc.c.id, t.doc.c.key, t.doc.c.snippet, t.doc.c.meta).where(
            t.doc.c.alias == alias
        )
    )
    return _described(rows)


def describe_ids(conn: sa.Connection, alias: str, ids: Iterable[int]) -> dict[int, DocInfo]:
    """id -> key, snippet and metadata of the given ids."""
    wanted = sorted({int(i) for i in ids if i >= 0})
    found: dict[int, DocInfo] = {}
    for part in in_parts(wanted):
        rows = conn.execute(
            sa.select(t.doc.c.id, t.doc.c.key, t.doc.c.snippet, t.doc.c.meta).where(
                t.doc.c.alias == alias, t.doc.c.id.in_(part)
            )
        )
        found.update(_described(rows))
    return found


def _described(rows: Iterable[Any]) -> dict[int, DocInfo]:
    return {
        int(i): DocInfo(key, snippet, json.loads(meta) if meta else None)
        for i, key, snippet, meta in rows
    }


def last_occurrence(ids: np.ndarray) -> np.ndarray:
    """Mask of the rows that hold the last occurrence of their id."""
    keep = np.zeros(len(ids), dtype=bool)
    if len(ids):
        _, first_in_reversed = np.unique(ids[::-1], return_index=True)
        keep[len(ids) - 1 - first_in_reversed] = True
    return keep
