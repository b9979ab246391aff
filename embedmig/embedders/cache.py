"""The embedding cache: a text embedded once by one embedder is never sent again.

Keyed by (fingerprint, prompt and text hash): one SQLite file per fingerprint under ``cache.dir``
(a query and a document with the same prompt are the same input), so a
resumed or retried backfill, a roll-forward to a retired revision's model and an upgrade after its
own dry run embed only the texts they have not embedded yet. Each file keeps the probe vectors of
the embedder that filled it: if the model behind a fingerprint drifts, its file is emptied rather
than mixed with new vectors. ``prune`` bounds the folder to ``cache.max_mb``, least recently used
first.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from embedmig.embedders import probes
from embedmig.errors import EmbedderError
from embedmig.history.batches import in_parts

if TYPE_CHECKING:
    import numpy as np

    from embedmig.embedders.base import LoadedEmbedder

log = logging.getLogger("embedmig")

_SUFFIX = ".sqlite"


class _Unwritable(Exception):
    """The cache's folder or file cannot be written (read-only, permissions)."""


def _key(prompt: str | None, text: str) -> bytes:
    data = (prompt or "").encode("utf-8", "surrogatepass") + b"\0"
    return hashlib.blake2b(data + text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class EmbeddingCache:
    """The cached vectors of one embedder (checked and normalized as it returned them)."""

    @classmethod
    def open(
        cls, folder: Path, embedder: LoadedEmbedder, min_cosine: float
    ) -> EmbeddingCache | None:
        """The cache of ``embedder`` in ``folder``; None (with a warning) when the folder cannot
        be written: a cache is disposable, and no reason to stop a migration."""
        try:
            return cls(folder, embedder, min_cosine)
        except _Unwritable as exc:
            log.warning(
                "the embedding cache %s cannot be written (%s): going on without it "
                "(set cache = false to say so, or cache.dir to a writable folder)",
                folder,
                exc,
            )
            return None

    def __init__(self, folder: Path, embedder: LoadedEmbedder, min_cosine: float) -> None:
        probe = probes.of(embedder)  # first: for an endpoint, it tells the dimension too
        self.spec = embedder.spec
        self.dim = embedder.dim
        self.path = folder / f"{embedder.fingerprint}{_SUFFIX}"
        self._lock = threading.Lock()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, timeout=60, check_same_thread=False, isolation_level=None
            )
        except (OSError, sqlite3.OperationalError) as exc:
            raise _Unwritable(str(exc)) from None
        try:
            with self._checked(opening=True):
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS vectors (key BLOB PRIMARY KEY, vector BLOB NOT "
                    "NULL) WITHOUT ROWID"
                )
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB)"
                )
                os.utime(self.path)  # least recently used goes first when prune bounds the folder
                self._guard(probe, min_cosine, embedder.describe())
        except BaseException:
            self._db.close()
            raise

    @contextmanager
    def _checked(self, opening: bool = False) -> Iterator[None]:
        """SQLite's failures as what to do about them, naming the file. A cache that cannot be
        written is gone without when it is opened (``open``); later, it is an error."""
        try:
            yield
        except (PermissionError, sqlite3.OperationalError) as exc:
            readonly = isinstance(exc, PermissionError) or any(
                word in str(exc) for word in ("readonly", "unable to open")
            )
            if readonly and opening:
                raise _Unwritable(str(exc)) from None
            raise EmbedderError(
                f"cannot use the embedding cache {self.path}: {exc} (set cache = false to go "
                "without it)"
            ) from None
        except sqlite3.DatabaseError as exc:
            raise EmbedderError(
                f"the embedding cache {self.path} is damaged ({exc}): delete that file (it is "
                "only a cache: what it held is embedded again), or set cache = false"
            ) from None

    def _guard(self, probe: np.ndarray, min_cosine: float, what: str) -> None:
        """Empty the file if its vectors came from a model that has since drifted."""
        row = self._db.execute("SELECT value FROM meta WHERE name = 'probe'").fetchone()
        if row is not None:
            recorded = probes.from_bytes(row[0], self.dim)
            if probes.lowest_cosine(recorded, probe) >= min_cosine:
                return
            log.warning("the embedding cache of %s was emptied: the model drifted", what)
        self.clear(probe)

    def clear(self, probe: np.ndarray) -> None:
        """Empty the file, which from now on holds vectors of the model ``probe`` measured."""
        with self._lock, self._checked():
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM vectors")
            self._db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('probe', ?)", (probes.to_bytes(probe),)
            )
            self._db.execute("COMMIT")

    def _prompt(self, kind: str) -> str | None:
        return self.spec.query_prompt if kind == "query" else self.spec.document_prompt

    def lookup(self, kind: str, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The vectors of ``texts`` found (zero rows elsewhere) and which were found."""
        import numpy as np

        prompt = self._prompt(kind)
        keys = [_key(prompt, text) for text in texts]
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        found = np.zeros(len(texts), dtype=bool)
        where: dict[bytes, list[int]] = {}
        for i, key in enumerate(keys):
            where.setdefault(key, []).append(i)
        unique = list(where)
        with self._lock, self._checked():
            for part in in_parts(unique):
                marks = ",".join("?" * len(part))
                for key, blob in self._db.execute(
                    f"SELECT key, vector FROM vectors WHERE key IN ({marks})", part
                ):
                    rows = where[key]
                    vectors[rows] = np.frombuffer(blob, dtype="<f4")
                    found[rows] = True
        return vectors, found

    def store(self, kind: str, texts: list[str], vectors: np.ndarray) -> None:
        prompt = self._prompt(kind)
        rows = [
            (_key(prompt, text), probes.to_bytes(vector))
            for text, vector in zip(texts, vectors, strict=True)
        ]
        with self._lock, self._checked():
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)", rows)
            self._db.execute("COMMIT")

    def through(self, embedder: LoadedEmbedder, texts: list[str], kind: str) -> np.ndarray:
        """``texts`` embedded, asking the embedder only for those not cached."""
        vectors, found = self.lookup(kind, texts)
        missing = [text for text, hit in zip(texts, found, strict=True) if not hit]
        if missing:
            # Stored as each request is answered: a failure later in the batch loses none.
            vectors[~found] = embedder.encode_uncached(
                missing, kind, keep=lambda texts, got: self.store(kind, texts, got)
            )
        embedder.meter.add(cached=int(found.sum()))
        return vectors

    def close(self) -> None:
        with self._lock:
            self._db.close()


@dataclass(frozen=True)
class Pruned:
    removed: int  # files (one per embedder)
    freed_bytes: int
    kept_bytes: int


def prune(folder: Path, max_bytes: int) -> Pruned:
    """Remove the least recently used cache files until the folder holds at most ``max_bytes``."""
    if not folder.is_dir():
        return Pruned(0, 0, 0)
    entries = []
    for path in folder.glob(f"*{_SUFFIX}"):
        parts = [path, *(path.with_name(path.name + s) for s in ("-wal", "-shm"))]
        size = sum(p.stat().st_size for p in parts if p.exists())
        entries.append((path.stat().st_mtime, size, parts))
    entries.sort()
    total = sum(size for _, size, _ in entries)
    removed = freed = 0
    for _, size, parts in entries:
        if total <= max_bytes:
            break
        for part in parts:
            part.unlink(missing_ok=True)
        total -= size
        removed += 1
        freed += size
    return Pruned(removed, freed, total)
