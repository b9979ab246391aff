"""Compaction: fold each index's journal tail into a new immutable snapshot, then trim the journal."""

from __future__ import annotations

from dataclasses import dataclass

from embedmig.environment import Environment
from embedmig.errors import StateError
from embedmig.serve.view import IndexView
from embedmig.store import catalog, files, journal, manifest, sidecar
from embedmig.store.stores import FAISS

# Indexes a reader or a downgrade may open; a shadow still building folds its tail at its end.
_COMPACTED = (catalog.State.LIVE, catalog.State.READY, catalog.State.RETIRED)


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


def compact(env: Environment, alias: str, *, wait: float = 0.0) -> Compaction:
    """Write a snapshot of each live, ready or retired index of ``alias`` that has a tail,
    holding the alias's lock (waiting up to ``wait`` seconds for a running migration).

    Each new file is saved atomically under a new name before its row points at it, so a reader
    sees the old file and its tail or the new file and the rest of the tail, never a gap.
    """
    with env.engine.connect() as conn:
        if not catalog.indexes(conn, alias):
            raise StateError(f"alias {alias!r} has no indexes")
    with env.lock([alias], "compact", wait):
        return _compact(env, alias)


def _compact(env: Environment, alias: str) -> Compaction:
    with env.engine.connect() as conn:
        # A pgvector table is never behind its journal: writers change it with each write.
        records = [
            r
            for r in catalog.indexes(conn, alias)
            if r.state in _COMPACTED and r.path and r.store == FAISS
        ]
    folded = [_fold(env, record) for record in records]
    with env.begin() as conn:
        removed = journal.collect(conn, alias)
    return Compaction(alias, folded, removed)


def _fold(env: Environment, record: catalog.IndexRecord) -> Folded:
    view = IndexView(env, record)
    tail = view.catch_up()
    changes = tail.changes
    if changes == 0:
        return Folded(record.id, record.state, 0, record.ntotal, str(record.path))
    assert view.overlay is not None
    index = view.overlay.fold()
    path = env.index_path(record.alias, record.id, record.revision, view.overlay.applied)
    sha256 = files.save(index, path)
    with env.engine.connect() as conn:
        sidecar.save(conn, record.alias, index, path, sha256)
    with env.begin() as conn:
        catalog.update_index(
            conn,
            record.id,
            path=env.stored_path(path),
            sha256=sha256,
            ntotal=int(index.ntotal),
            base_seq=view.overlay.applied,
        )
        # An index built before manifests has none: a partial one would pass for complete.
        if record.ntotal == 0 or manifest.exists(conn, record.id):
            hashes = [manifest.content_hash(text) for text in tail.texts]
            manifest.set_held(conn, record.id, tail.upsert_ids, hashes, tail.deleted_ids)
    previous = env.file_of(record)
    if previous != path:
        files.remove_file(previous)
        files.remove_file(sidecar.path_of(previous))
    return Folded(record.id, record.state, changes, int(index.ntotal), str(path))
