"""The keys, snippets and metadata of an index file's documents, in a file beside it.

A searcher shows them with each hit without asking SQL: when it opens an index file it reads the
file's sidecar (a few arrays: no Python object per document until one is shown) and keeps it
current from the journal. The sidecar is a cache of the history database, written after the index
file and naming that file's sha256: one missing, unreadable or written for another file is read
from SQL instead (``Documents.of``).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from embedmig.store import docids, files
from embedmig.store.docids import DocInfo

_FIELDS = ("key", "snippet", "meta")


def path_of(index_file: Path) -> Path:
    return index_file.with_name(f"{index_file.name}.docs.npz")


def save(conn: sa.Connection, alias: str, index: Any, index_file: Path, index_sha256: str) -> None:
    """Write the sidecar of ``index`` (saved as ``index_file``, whose sha256 is
    ``index_sha256``), atomically: its documents as ``conn`` describes them now."""
    import faiss

    described = docids.describe_ids(conn, alias, faiss.vector_to_array(index.id_map))
    ids = np.fromiter(sorted(described), dtype=np.int64, count=len(described))
    docs = [described[int(i)] for i in ids]
    arrays: dict[str, np.ndarray] = {"ids": ids, "sha256": np.array(index_sha256)}
    for name, texts in (
        ("key", [d.key for d in docs]),
        ("snippet", [d.snippet for d in docs]),
        ("meta", [json.dumps(d.meta) if d.meta is not None else "" for d in docs]),
    ):
        encoded = [text.encode() for text in texts]
        arrays[f"{name}_ends"] = np.cumsum([len(b) for b in encoded], dtype=np.int64)
        arrays[name] = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    files.save_bytes(buffer.getvalue(), path_of(index_file), "sidecar")


class Documents:
    """id -> key, snippet and metadata of an index's documents: its sidecar's, decoded as they
    are shown, and every change the journal brought since (``update``)."""

    def __init__(
        self,
        ids: np.ndarray,
        ends: Mapping[str, np.ndarray],
        blobs: Mapping[str, bytes],
        known: dict[int, DocInfo] | None = None,
    ) -> None:
        self._ids = ids
        self._ends = ends
        self._blobs = blobs
        self._known: dict[int, DocInfo] = known if known is not None else {}

    @classmethod
    def of(cls, described: dict[int, DocInfo]) -> Documents:
        """Documents read from SQL (no sidecar)."""
        empty = np.empty(0, dtype=np.int64)
        return cls(empty, {}, {}, described)

    def get(self, doc_id: int) -> DocInfo | None:
        found = self._known.get(doc_id)
        if found is None and len(self._ids):
            at = int(np.searchsorted(self._ids, doc_id))
            if at < len(self._ids) and self._ids[at] == doc_id:
                found = self._known[doc_id] = self._decode(at)
        return found

    def update(self, described: Mapping[int, DocInfo]) -> None:
        self._known.update(described)

    def _decode(self, at: int) -> DocInfo:
        key, snippet, meta = (
            self._blobs[name][
                int(self._ends[name][at - 1]) if at else 0 : int(self._ends[name][at])
            ].decode()
            for name in _FIELDS
        )
        return DocInfo(key, snippet, json.loads(meta) if meta else None)


def read(index_file: Path, index_sha256: str | None) -> Documents | None:
    """The sidecar of ``index_file`` if it was written for the file with ``index_sha256``."""
    try:
        with np.load(path_of(index_file), allow_pickle=False) as data:
            if index_sha256 is None or str(data["sha256"]) != index_sha256:
                return None
            return Documents(
                np.asarray(data["ids"]),
                {name: np.asarray(data[f"{name}_ends"]) for name in _FIELDS},
                {name: np.asarray(data[name]).tobytes() for name in _FIELDS},
            )
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
