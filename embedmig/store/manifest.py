"""Per-index document manifests: what each index was built from, as 64-bit text hashes.

For each document an index's backfill read, the hash of the corpus's text (``corpus_sha``); for
each document its file holds, the hash of that text (``sha``). Comparing the live index's manifest
with a new corpus read tells the corpus's own changes from writes the corpus never received.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa

from embedmig.history import schema as t
from embedmig.history.batches import in_parts
from embedmig.store import docids


def content_hash(text: str) -> int:
    """A signed 64-bit hash of a document's text (stable across processes and versions)."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@dataclass(frozen=True)
class Manifest:
    """Rows of one index's manifest, sorted by doc id; ``has_*`` say which hashes are set."""

    ids: np.ndarray
    corpus_sha: np.ndarray
    has_corpus: np.ndarray
    sha: np.ndarray
    has_sha: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def record_corpus(conn: sa.Connection, index_id: int, ids: np.ndarray, shas: Sequence[int]) -> None:
    """Record documents as read from the corpus (and so, for now, held with that text)."""
    latest = {int(i): int(h) for i, h in zip(ids, shas, strict=True)}  # a repeated key: last wins
    rows = [
        {"index_id": index_id, "doc_id": i, "corpus_sha": h, "sha": h} for i, h in latest.items()
    ]
    if rows:
        insert = docids.dialect_insert(conn)(t.manifest)
        conn.execute(
            insert.on_conflict_do_update(
                index_elements=["index_id", "doc_id"],
                set_={"corpus_sha": insert.excluded.corpus_sha, "sha": insert.excluded.sha},
            ),
            rows,
        )


def set_held(
    conn: sa.Connection,
    index_id: int,
    upsert_ids: Iterable[int],
    upsert_shas: Iterable[int],
    deleted_ids: Iterable[int],
) -> None:
    """Record what the index's file now holds for changed documents (replay, carry-over, folds)."""
    held: dict[int, int | None] = {
        int(i): int(h) for i, h in zip(upsert_ids, upsert_shas, strict=True)
    }
    held.update({int(i): None for i in deleted_ids})
    if not held:
        return
    insert = docids.dialect_insert(conn)(t.manifest)
    conn.execute(
        insert.on_conflict_do_update(
            index_elements=["index_id", "doc_id"], set_={"sha": insert.excluded.sha}
        ),
        [
            {"index_id": index_id, "doc_id": i, "corpus_sha": None, "sha": h}
            for i, h in held.items()
        ],
    )
    # A document neither read from the corpus nor held says nothing: keep the table lean.
    conn.execute(
        t.manifest.delete().where(
            t.manifest.c.index_id == index_id,
            t.manifest.c.corpus_sha.is_(None),
            t.manifest.c.sha.is_(None),
        )
    )


def load(conn: sa.Connection, index_id: int, doc_ids: Iterable[int] | None = None) -> Manifest:
    """The manifest of ``index_id`` (only ``doc_ids``, when given)."""
    columns = (t.manifest.c.doc_id, t.manifest.c.corpus_sha, t.manifest.c.sha)
    query = sa.select(*columns).where(t.manifest.c.index_id == index_id)
    rows: list[Any]
    if doc_ids is None:
        rows = list(conn.execute(query).all())
    else:
        wanted = sorted({int(i) for i in doc_ids})
        rows = []
        for part in in_parts(wanted):
            rows += conn.execute(query.where(t.manifest.c.doc_id.in_(part))).all()
    rows.sort(key=lambda row: row[0])
    n = len(rows)
    ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=n)
    corpus = np.fromiter((row[1] or 0 for row in rows), dtype=np.int64, count=n)
    has_corpus = np.fromiter((row[1] is not None for row in rows), dtype=bool, count=n)
    sha = np.fromiter((row[2] or 0 for row in rows), dtype=np.int64, count=n)
    has_sha = np.fromiter((row[2] is not None for row in rows), dtype=bool, count=n)
    return Manifest(ids, corpus, has_corpus, sha, has_sha)


def exists(conn: sa.Connection, index_id: int) -> bool:
    row = conn.execute(
        sa.select(t.manifest.c.doc_id).where(t.manifest.c.index_id == index_id).limit(1)
    ).first()
    return row is not None


def drop(conn: sa.Connection, index_id: int) -> None:
    conn.execute(t.manifest.delete().where(t.manifest.c.index_id == index_id))
