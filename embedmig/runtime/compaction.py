"""Compaction: fold each index's journal tail into a new immutable snapshot, then trim the journal."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from embedmig.runtime.environment import Environment, remove_file
from embedmig.runtime.view import IndexView
from embedmig.store import catalog, files, journal

# Indexes a reader or a downgrade may open; a shadow still building folds its tail at its end.
_COMPACTED = (catalog.LIVE, catalog.READY, catalog.RETIRED)


@dataclass(frozen=True)
class Folded:
    index_id: int
    state: str
    changes: int  # journaled changes folded into the new file (0: the file was already current)
    ntotal: int
    path: str


@dataclass(frozen=True)
class Compaction:
    alias: str
    folded: list[Folded]
    journal_removed: int


def compact(env: Environment, alias: str) -> Compaction:
    """Write a snapshot of each live, ready or retired index of ``alias`` that has a tail.

    Each new file is saved atomically under a new name before its row points at it, so a reader
    sees the old file and its tail or the new file and the rest of the tail, never a gap.
    """
    with env.engine.connect() as conn:
        records = [r for r in catalog.indexes(conn, alias) if r.state in _COMPACTED and r.path]
    folded = [_fold(env, record) for record in records]
    with env.engine.begin() as conn:
        removed = journal.collect(conn, alias)
    return Compaction(alias, folded, removed)


def _fold(env: Environment, record: catalog.IndexRecord) -> Folded:
    view = IndexView(env, record)
    changes = view.catch_up()
    if changes == 0:
        return Folded(record.id, record.state, 0, record.ntotal, str(record.path))
    index = view.overlay.fold()
    path = env.index_path(record.alias, record.id, record.revision, view.overlay.applied)
    sha256 = files.save(index, path)
    with env.engine.begin() as conn:
        catalog.update_index(
            conn,
            record.id,
            path=str(path),
            sha256=sha256,
            ntotal=int(index.ntotal),
            base_seq=view.overlay.applied,
        )
    if record.path != str(path):
        remove_file(Path(str(record.path)))
    return Folded(record.id, record.state, changes, int(index.ntotal), str(path))
