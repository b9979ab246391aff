"""FAISS index files: built from a durable spool of vectors, saved atomically, verified on load.

A backfill appends each batch of vectors to a *spool* (raw float32 rows and int64 ids) and fsyncs
it before its checkpoint commits, so a killed run resumes without re-embedding. The index is built
from the spool once the corpus is done: that also lets IVF/PQ factories train on a sample first.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from embedmig.errors import StoreError
from embedmig.store.docids import last_occurrence

_CHUNK_ROWS = 65536
_MAX_TRAIN_ROWS = 100_000


def new_index(dim: int, factory: str) -> Any:
    try:
        return faiss.index_factory(dim, f"IDMap2,{factory}", faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1]
        raise StoreError(f"invalid faiss index factory {factory!r}: {reason}") from None


def build(vectors: np.ndarray, ids: np.ndarray, factory: str) -> Any:
    """An index of ``vectors`` under ``ids``; for a repeated id the last row wins."""
    index = new_index(vectors.shape[1], factory)
    keep = last_occurrence(ids)
    _train(index, vectors, keep)
    index.add_with_ids(np.ascontiguousarray(vectors[keep]), ids[keep])
    return index


class Opened:
    """A FAISS index opened for searching (``store.stores.Searchable``)."""

    def __init__(self, index: Any) -> None:
        self.index = index

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(
        self, queries: np.ndarray, k: int, threads: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        return search(self.index, queries, k, threads)

    def reconstruct_batch(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(self.index.reconstruct_batch(ids))


class Spool:
    """Append-only vectors of one index being built, durable batch by batch."""

    def __init__(self, base: Path, dim: int) -> None:
        self.vec_path = base.with_suffix(".vec")
        self.ids_path = base.with_suffix(".ids")
        self.dim = dim

    @property
    def row_bytes(self) -> int:
        return self.dim * 4

    def rows(self) -> int:
        if not self.ids_path.exists():
            return 0
        return self.ids_path.stat().st_size // 8

    def truncate(self, rows: int) -> None:
        """Drop rows written after the last checkpoint (a killed run may leave a partial batch)."""
        for path, width in ((self.vec_path, self.row_bytes), (self.ids_path, 8)):
            if not path.exists():
                continue
            with _open_for_append(path) as fh:
                fh.truncate(rows * width)
                os.fsync(fh.fileno())

    def append(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if vectors.shape != (len(ids), self.dim):
            raise StoreError(f"vectors of shape {vectors.shape} do not match dimension {self.dim}")
        for path, data in (
            (self.vec_path, np.ascontiguousarray(vectors, dtype=np.float32)),
            (self.ids_path, np.ascontiguousarray(ids, dtype=np.int64)),
        ):
            try:
                with _open_for_append(path) as fh:
                    fh.write(data.tobytes())
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:
                # Rows past the last checkpoint are truncated away by the next run.
                raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from None

    def ids(self, rows: int | None = None) -> np.ndarray:
        n = self.rows() if rows is None else rows
        return np.fromfile(self.ids_path, dtype=np.int64, count=n) if n else np.empty(0, np.int64)

    def distinct_ids(self, rows: int) -> int:
        """How many different ids the first ``rows`` rows hold."""
        return len(np.unique(self.ids(rows)))

    def build(self, factory: str, seed: int = 0, drop: np.ndarray | None = None) -> Any:
        """The index of every spooled row, read in bounded chunks; last row of an id wins.

        Ids in ``drop`` (deleted documents) are left out.
        """
        ids = self.ids()
        n = len(ids)
        index = new_index(self.dim, factory)
        keep = last_occurrence(ids)
        if drop is not None and len(drop):
            keep &= ~np.isin(ids, drop)
        if not index.is_trained:
            rng = np.random.default_rng(seed)
            sample = np.flatnonzero(keep)
            if len(sample) > _MAX_TRAIN_ROWS:
                sample = np.sort(rng.choice(sample, _MAX_TRAIN_ROWS, replace=False))
            _train(index, self._rows_at(sample), np.ones(len(sample), dtype=bool))
        for start in range(0, n, _CHUNK_ROWS):
            stop = min(n, start + _CHUNK_ROWS)
            mask = keep[start:stop]
            if mask.any():
                chunk = np.fromfile(
                    self.vec_path,
                    dtype=np.float32,
                    count=(stop - start) * self.dim,
                    offset=start * self.row_bytes,
                ).reshape(-1, self.dim)
                index.add_with_ids(np.ascontiguousarray(chunk[mask]), ids[start:stop][mask])
        return index

    def _rows_at(self, rows: np.ndarray) -> np.ndarray:
        if len(rows) == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        matrix = np.memmap(self.vec_path, dtype=np.float32, mode="r").reshape(-1, self.dim)
        return np.array(matrix[rows])

    def remove(self) -> None:
        self.vec_path.unlink(missing_ok=True)
        self.ids_path.unlink(missing_ok=True)


def save(index: Any, path: Path) -> str:
    """Write ``index`` to ``path`` atomically and durably; return the file's sha256."""

    def produce(write: Callable[[bytes], int]) -> None:
        faiss.write_index(index, faiss.PyCallbackIOWriter(write))  # type: ignore[attr-defined]

    return _write(path, "index file", produce)


def save_bytes(data: bytes, path: Path, what: str) -> str:
    """``data`` to ``path`` as ``save`` writes an index (an adapter's map); its sha256."""
    return _write(path, what, lambda write: write(data))


def _write(path: Path, what: str, produce: Callable[[Callable[[bytes], int]], object]) -> str:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A run killed while saving leaves its temp file behind; it is never read, only replaced.
        for stale in path.parent.glob(f".{path.name}.tmp-*"):
            stale.unlink(missing_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot write to {path.parent}: {exc.strerror or exc}") from None
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with tmp.open("wb") as fh:

            def write(block: bytes) -> int:
                digest.update(block)
                return fh.write(block)

            produce(write)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
    return digest.hexdigest()


def load(path: Path, sha256: str | None) -> Any:
    """Read an index file, refusing it unless its sha256 matches the recorded one."""
    with _checked(path, sha256) as read:
        try:
            return faiss.read_index(faiss.PyCallbackIOReader(read))  # type: ignore[attr-defined]
        except RuntimeError:
            raise StoreError(f"index file {path} is truncated or corrupt") from None


def verify(path: Path, sha256: str | None) -> None:
    """Refuse a file that is missing, unreadable or not the one recorded (by its sha256)."""
    with _checked(path, sha256):
        pass


def read_bytes(path: Path, sha256: str | None, what: str) -> bytes:
    """A whole small file (an adapter's map), refused unless it is the one recorded."""
    blocks: list[bytes] = []
    with _checked(path, sha256, what) as read:
        while block := read(1 << 20):
            blocks.append(block)
    return b"".join(blocks)


@contextmanager
def _checked(
    path: Path, sha256: str | None, what: str = "index file"
) -> Iterator[Callable[[int], bytes]]:
    """A reader of ``path`` whose bytes feed a digest; on leaving, the rest is read and the whole
    file must match ``sha256``. A missing or unreadable file is a StoreError."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:

            def read(n: int) -> bytes:
                block = fh.read(n)
                digest.update(block)
                return block

            yield read
            while read(1 << 20):
                pass
    except FileNotFoundError:
        raise StoreError(f"{what} {path} is missing") from None
    except OSError as exc:
        raise StoreError(f"cannot read {what} {path}: {exc.strerror}") from None
    if sha256 is not None and digest.hexdigest() != sha256:
        raise StoreError(f"{what} {path} does not match its recorded sha256; refusing it")


def search(
    index: Any, queries: np.ndarray, k: int, threads: int | None = None, params: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` scores and ids, at most as many columns as the index holds vectors (FAISS would
    allocate ``k`` results per query whatever it holds: a k of 10,000 on 50 vectors is 10,000
    columns of padding); rows shorter than that are padded with id -1 and score -inf.

    ``threads``: FAISS's threads for this call (default: one for a single query, as FAISS
    advises for serving, where more only contend with the rest of the machine; the process's
    setting for a batch)."""
    if len(queries) == 0 or k < 1:
        return np.empty((len(queries), max(k, 0)), np.float32), np.empty(
            (len(queries), 0), np.int64
        )
    k = max(1, min(k, int(index.ntotal)))
    vectors = np.ascontiguousarray(queries, dtype=np.float32)
    with faiss_threads(1 if threads is None and len(queries) == 1 else threads):
        if params is None:
            scores, ids = index.search(vectors, k)
        else:
            scores, ids = index.search(vectors, k, params=params)
    scores[ids < 0] = -np.inf
    return scores, ids


@contextmanager
def faiss_threads(count: int | None) -> Iterator[None]:
    """FAISS's OpenMP threads for the calls made inside, in this thread only, then as before.
    libgomp keeps the setting per thread, so other threads of the process (a server's) never
    see it; ``None`` or 0 changes nothing."""
    before = faiss.omp_get_max_threads()
    if not count or count == before:
        yield
        return
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def unwritable(path: Path) -> str | None:
    """Why a file could not be made at ``path`` (None: it could), asked before the work that
    writes it at the end; creates nothing."""
    if path.is_dir():
        return "it is a directory"
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is not a directory"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{folder} is not writable"
    return None


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_for_append(path: Path) -> Any:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return path.open("ab")
    except OSError as exc:
        raise StoreError(f"cannot write {path}: {exc.strerror}") from None


def _train(index: Any, vectors: np.ndarray, keep: np.ndarray) -> None:
    if index.is_trained:
        return
    sample = np.ascontiguousarray(vectors[keep])
    try:
        index.train(sample)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1]
        raise StoreError(f"cannot train the index on {len(sample)} vectors: {reason}") from None


def remove_file(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot remove {path}: {exc.strerror}") from None
