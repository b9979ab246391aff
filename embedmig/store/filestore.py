"""The FAISS store (the default): each index one immutable file in ``index_dir``, built from a
durable spool, verified by its sha256 whenever it is opened; writes after it live in the change
journal, which readers apply in memory (``store.overlay``) and ``compact`` folds into a new file.
The alias is the catalog's pointer alone: FAISS has no aliases of its own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import faiss
import numpy as np
import sqlalchemy as sa

from embedmig.errors import StoreError
from embedmig.store import catalog, files, sidecar
from embedmig.store.catalog import IndexRecord
from embedmig.store.stores import FAISS, Encode, Host, Searchable


class FileStore:
    name = FAISS

    def __init__(self, host: Host) -> None:
        self.host = host

    def check(self) -> None:
        pass

    def check_spec(self, spec: str, dim: int) -> None:
        files.new_index(dim, spec)

    def create(self, conn: sa.Connection, record: IndexRecord) -> None:
        folder = self.host.index_path(record.alias, record.id, record.revision).parent
        reason = files.unwritable(folder / "index.faiss")
        if reason is not None:  # fail before hours of encoding, not at the first write
            raise StoreError(f"index folder {folder} is not writable: {reason}")

    def build(self, record: IndexRecord, seed: int) -> FileBuild:
        return FileBuild(self.host, record, seed)

    def open(self, record: IndexRecord) -> files.Opened:
        return files.Opened(files.load(self.host.file_of(record), record.sha256))

    def verify(self, record: IndexRecord) -> None:
        files.verify(self.host.file_of(record), record.sha256)

    def written(self, conn: sa.Connection, record: IndexRecord) -> None:
        pass  # readers apply the journal to the file themselves

    def point(
        self,
        conn: sa.Connection,
        alias: str,
        record: IndexRecord | None,
        before: IndexRecord | None,
    ) -> None:
        pass

    def drop(self, record: IndexRecord) -> None:
        path = self.host.index_path(record.alias, record.id, record.revision)
        files.Spool(path, record.dim).remove()
        for stale in {path, self.host.file_of(record) if record.path else path}:
            files.remove_file(stale)
            files.remove_file(sidecar.path_of(stale))


class FileBuild:
    """Rows on a spool, fsynced before each checkpoint commits; one index file at the end."""

    def __init__(self, host: Host, record: IndexRecord, seed: int) -> None:
        self.host = host
        self.record = record
        self.seed = seed
        self.path = host.index_path(record.alias, record.id, record.revision)
        self.spool = files.Spool(self.path, record.dim)

    def truncate(self, rows: int) -> None:
        self.spool.truncate(rows)

    def append(
        self, conn: sa.Connection, ids: np.ndarray, vectors: np.ndarray, keys: list[str] | None
    ) -> None:
        self.spool.append(ids, vectors)

    def distinct_ids(self, rows: int) -> int:
        return self.spool.distinct_ids(rows)

    def remove(self, conn: sa.Connection) -> None:
        self.spool.remove()

    def finish(
        self,
        deleted_ids: np.ndarray,
        base_seq: int,
        encode: Encode,
        on_ready: Callable[[sa.Connection], None],
    ) -> tuple[Searchable, np.ndarray]:
        record = self.record
        index: Any = self.spool.build(record.factory, seed=self.seed, drop=deleted_ids)
        sha256 = files.save(index, self.path)
        with self.host.engine.connect() as conn:
            sidecar.save(conn, record.alias, index, self.path, sha256)
        with self.host.begin() as conn:
            catalog.update_index(
                conn,
                record.id,
                state=catalog.State.READY,
                path=self.host.stored_path(self.path),
                ntotal=int(index.ntotal),
                sha256=sha256,
                base_seq=base_seq,
            )
            on_ready(conn)
        self.spool.remove()
        return files.Opened(index), faiss.vector_to_array(index.id_map)
