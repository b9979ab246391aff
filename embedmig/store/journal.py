"""The change journal in SQL: the source of truth for writes made after an index file was saved.

Index files are immutable snapshots; each records the journal position it reflects (``base_seq``).
Everything after it is the index's *tail*: readers apply it in memory, a backfill replays it into
its shadow, compaction folds it into a new snapshot. Like an LSM tree, with SQL as the log.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa

from embedmig.history import schema as t
from embedmig.history.batches import in_parts
from embedmig.store import catalog, clock, docids, manifest
from embedmig.store.manifest import content_hash

UPSERT, DELETE = "upsert", "delete"
# Indexes that receive writes: the live one, a shadow being built or awaiting its swap.
_WRITTEN_STATES = (catalog.State.LIVE, catalog.State.BUILDING, catalog.State.READY)
# Indexes whose tail must be kept: those, and retired ones a downgrade may restore.
_RETAINED_STATES = (*_WRITTEN_STATES, catalog.State.RETIRED)


# Built once: every write runs these, and building a statement costs more than running it.
_RETAINED = (
    sa.select(t.index)
    .where(t.index.c.alias == sa.bindparam("alias"), t.index.c.state.in_(_RETAINED_STATES))
    .order_by(t.index.c.id)
)
_LAST_SWAP = (
    sa.select(t.history.c.from_index, t.history.c.to_index, t.history.c.finished_at)
    .where(
        t.history.c.alias == sa.bindparam("alias"),
        t.history.c.action == "upgrade",
        t.history.c.status.in_(("ok", "forced")),
    )
    .order_by(t.history.c.id.desc())
    .limit(1)
)
_INSERT_CHANGE = t.journal.insert()
_CHANGE_COLUMNS = (
    t.journal.c.seq,
    t.journal.c.op,
    t.journal.c.doc_id,
    t.journal.c.text,
    t.journal.c.meta,
)
_INSERT_VECTOR = t.journal_vector.insert()


@dataclass(frozen=True)
class Change:
    op: str
    key: str
    text: str | None = None
    meta: str | None = None  # JSON text


def position(conn: sa.Connection, alias: str) -> int:
    """The sequence number of the alias's last journaled change (0: none yet)."""
    last = conn.execute(
        sa.select(t.sequence.c.last_seq).where(t.sequence.c.alias == alias)
    ).scalar_one_or_none()
    return int(last or 0)


def targets(
    conn: sa.Connection, alias: str, holdover: timedelta | None
) -> list[catalog.IndexRecord]:
    """The indexes a write to ``alias`` must reach, oldest first.

    The live index, any shadow of a migration in progress, and during the holdover the index the
    latest swap replaced (``holdover`` None: until the next swap or a prune).
    """
    params = {"alias": alias}
    records = [catalog.IndexRecord.from_row(row) for row in conn.execute(_RETAINED, params)]
    found = [record for record in records if record.state in _WRITTEN_STATES]
    live = next((record for record in found if record.state == catalog.State.LIVE), None)
    swap = conn.execute(_LAST_SWAP, params).first()
    if live is None or swap is None or swap.to_index != live.id:
        return found
    if holdover is not None and clock.utc(swap.finished_at) + holdover <= clock.now():
        return found
    # Retired, so neither pruned (dropped) nor restored by a downgrade since.
    previous = [r for r in records if r.id == swap.from_index and r.state == catalog.State.RETIRED]
    return previous + found


def append(
    conn: sa.Connection,
    alias: str,
    counters: tuple[int, int],
    changes: Sequence[Change],
    vectors: Mapping[int, np.ndarray],
) -> int:
    """Journal ``changes`` in order, with the vector of each upsert for each index in ``vectors``.

    The caller holds the alias lock with ``len(changes)`` reserved: ``counters`` is what
    ``docids.lock_alias(conn, alias, reserve=len(changes))`` returned.
    ``vectors[index_id]`` has one row per upsert, in order. Returns the last sequence number.
    The caller commits: once it has, the changes are durable and visible to every reader.
    """
    next_id, last = counters
    # Deleted keys get an id too: a backfill that reaches them later must still drop them.
    ids, _ = docids.ids_under_lock(
        conn,
        alias,
        next_id,
        [c.key for c in changes],
        [c.text or "" for c in changes],
        [c.meta for c in changes],
    )
    stamp = clock.now()
    seqs = range(last + 1, last + 1 + len(changes))
    conn.execute(
        _INSERT_CHANGE,
        [
            {
                "alias": alias,
                "seq": seq,
                "op": change.op,
                "doc_id": int(doc_id),
                "text": change.text,
                "meta": change.meta,
                "created_at": stamp,
            }
            for seq, change, doc_id in zip(seqs, changes, ids, strict=True)
        ],
    )
    upsert_seqs = [seq for seq, change in zip(seqs, changes, strict=True) if change.op == UPSERT]
    rows = [
        {"alias": alias, "seq": seq, "index_id": index_id, "vector": vector.tobytes()}
        for index_id, matrix in vectors.items()
        for seq, vector in zip(upsert_seqs, np.asarray(matrix, dtype=np.float32), strict=True)
    ]
    if rows:
        conn.execute(_INSERT_VECTOR, rows)
    return seqs[-1]


@dataclass
class Tail:
    """The net effect of an index's journaled changes up to ``last_seq``.

    Each document appears once, in its final state: upserted (with its vector for this index, or
    its text when the change was journaled without one) or deleted.
    """

    last_seq: int
    upsert_ids: np.ndarray
    texts: list[str]  # final text of each upserted document
    metas: list[str | None]  # and its metadata (JSON)
    vectors: np.ndarray  # rows of upsert_ids; rows listed in `missing` are zero until filled
    missing: np.ndarray  # rows whose vector must be computed from their text
    deleted_ids: np.ndarray
    changes: int = 0

    @classmethod
    def empty(cls, dim: int, last_seq: int = 0) -> Tail:
        none = np.empty(0, dtype=np.int64)
        return cls(last_seq, none, [], [], np.empty((0, dim), np.float32), none, none)

    @property
    def touched_ids(self) -> np.ndarray:
        return np.concatenate([self.upsert_ids, self.deleted_ids])

    def fill(self, encode: Callable[[list[str]], np.ndarray]) -> None:
        """Compute the missing vectors with ``encode(texts) -> ndarray`` (the index's embedder)."""
        if len(self.missing):
            self.vectors[self.missing] = encode([self.texts[i] for i in self.missing])
            self.missing = np.empty(0, dtype=np.int64)


def tail(conn: sa.Connection, alias: str, index_id: int, after: int, dim: int) -> Tail:
    """The changes of ``alias`` after ``after``, folded, with their vectors for ``index_id``."""
    vector = t.journal_vector
    query = (
        sa.select(*_CHANGE_COLUMNS, vector.c.vector)
        .select_from(
            t.journal.outerjoin(
                vector,
                sa.and_(
                    vector.c.alias == t.journal.c.alias,
                    vector.c.seq == t.journal.c.seq,
                    vector.c.index_id == index_id,
                ),
            )
        )
        .where(t.journal.c.alias == alias, t.journal.c.seq > after)
        .order_by(t.journal.c.seq)
    )
    rows = conn.execute(query).all()
    upserts, deletes = _fold(rows)
    vectors = np.zeros((len(upserts), dim), dtype=np.float32)
    have = [i for i, row in enumerate(upserts) if row.vector is not None]
    if have:
        joined = b"".join(upserts[i].vector for i in have)
        vectors[have] = np.frombuffer(joined, dtype=np.float32).reshape(len(have), dim)
    missing = [i for i, row in enumerate(upserts) if row.vector is None]
    return Tail(
        last_seq=int(rows[-1].seq) if rows else after,
        upsert_ids=np.array([row.doc_id for row in upserts], dtype=np.int64),
        texts=[row.text or "" for row in upserts],
        metas=[row.meta for row in upserts],
        vectors=vectors,
        missing=np.array(missing, dtype=np.int64),
        deleted_ids=np.array([row.doc_id for row in deletes], dtype=np.int64),
        changes=len(rows),
    )


@dataclass(frozen=True)
class Net:
    """The net effect of changes, without vectors: final upserts (with their text hashes), deletes."""

    upsert_ids: np.ndarray
    upsert_sha: np.ndarray
    deleted_ids: np.ndarray


def net_changes(conn: sa.Connection, alias: str, after: int) -> Net:
    """The net effect of the retained changes of ``alias`` after ``after``."""
    query = (
        sa.select(*_CHANGE_COLUMNS)
        .where(t.journal.c.alias == alias, t.journal.c.seq > after)
        .order_by(t.journal.c.seq)
    )
    upserts, deletes = _fold(conn.execute(query).all())
    return Net(
        np.array([row.doc_id for row in upserts], dtype=np.int64),
        np.array([content_hash(row.text or "") for row in upserts], dtype=np.int64),
        np.array([row.doc_id for row in deletes], dtype=np.int64),
    )


def written_texts(
    conn: sa.Connection, alias: str, wanted: Mapping[int, int]
) -> dict[int, tuple[str, str | None]]:
    """(text, metadata) of the latest journaled upsert of each doc id in ``wanted`` whose text has
    the wanted hash; ids whose text the journal no longer holds are left out."""
    found: dict[int, tuple[str, str | None]] = {}
    ids = sorted(wanted)
    for part in in_parts(ids):
        rows = conn.execute(
            sa.select(t.journal.c.doc_id, t.journal.c.text, t.journal.c.meta)
            .where(
                t.journal.c.alias == alias,
                t.journal.c.op == UPSERT,
                t.journal.c.doc_id.in_(part),
            )
            .order_by(t.journal.c.seq)
        )
        for doc_id, text, meta in rows:
            if text is not None and content_hash(text) == wanted[doc_id]:
                found[doc_id] = (text, meta)
    return found


def _fold(rows: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """The last row of each document, split into upserts and deletes, in journal order."""
    if not rows:
        return [], []
    doc_ids = np.fromiter((row.doc_id for row in rows), dtype=np.int64, count=len(rows))
    final = docids.last_occurrence(doc_ids)
    upserts = [row for row, keep in zip(rows, final, strict=True) if keep and row.op == UPSERT]
    deletes = [row for row, keep in zip(rows, final, strict=True) if keep and row.op == DELETE]
    return upserts, deletes


def collect(conn: sa.Connection, alias: str) -> int:
    """Delete journal entries no retained index needs any more; return how many went.

    Every retained index has folded the entries up to the lowest ``base_seq``: those go, except a
    document's latest upsert while some retained index holds its text from that write rather than
    from its corpus read. A later migration must embed that text again if the corpus still lacks
    it (see ``embedmig.metrics.coverage``).
    """
    retained = [
        (record.id, record.base_seq)
        for record in catalog.indexes(conn, alias)
        if record.state in _RETAINED_STATES
    ]
    floor = min((base for _, base in retained), default=position(conn, alias))
    conn.execute(
        t.journal_vector.delete().where(
            t.journal_vector.c.alias == alias,
            sa.or_(
                t.journal_vector.c.seq <= floor,
                t.journal_vector.c.index_id.not_in([index_id for index_id, _ in retained]),
            ),
        )
    )
    rows = conn.execute(
        sa.select(t.journal.c.seq, t.journal.c.op, t.journal.c.doc_id, t.journal.c.text)
        .where(t.journal.c.alias == alias, t.journal.c.seq <= floor)
        .order_by(t.journal.c.seq)
    ).all()
    kept = _written_only(conn, [index_id for index_id, _ in retained], rows)
    doomed = [row.seq for row in rows if row.seq not in kept]
    for part in in_parts(doomed):
        conn.execute(
            t.journal.delete().where(t.journal.c.alias == alias, t.journal.c.seq.in_(part))
        )
    return len(doomed)


def _written_only(conn: sa.Connection, retained: Sequence[int], rows: Sequence[Any]) -> set[int]:
    """Sequence numbers of the latest upserts in ``rows`` that a retained index holds as written
    rather than as read from its corpus (all of them while no index serves the alias, or for an
    index built before manifests, whose origins are unknown)."""
    upserts, _ = _fold(rows)
    if not upserts:
        return set()
    hashes = {int(row.doc_id): content_hash(row.text or "") for row in upserts}
    needed: set[int] = set() if retained else set(hashes)
    for index_id in retained:
        if not manifest.exists(conn, index_id):
            return {int(row.seq) for row in upserts}
        rows_of = manifest.load(conn, index_id, hashes)
        for i, doc_id in enumerate(rows_of.ids.tolist()):
            text_sha = hashes[doc_id]
            holds = rows_of.has_sha[i] and rows_of.sha[i] == text_sha
            read = rows_of.has_corpus[i] and rows_of.corpus_sha[i] == text_sha
            if holds and not read:
                needed.add(doc_id)
    return {int(row.seq) for row in upserts if int(row.doc_id) in needed}


def encode_meta(meta: Mapping[str, Any] | None) -> str | None:
    return None if meta is None else json.dumps(dict(meta), allow_nan=False, sort_keys=True)
