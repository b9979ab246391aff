"""An immutable index file with its journal tail applied in memory (an LSM memtable over FAISS).

The base index is never modified: ids the tail touched are masked out of its results with a FAISS
``IDSelector``, and their current vectors live in a small flat index searched alongside. Results of
both are merged by score. Folding the two gives the next immutable snapshot (compaction).

An overlay is safe to share between threads: searches run at once, and a tail is applied between
them (FAISS indexes may be searched concurrently, never while they change).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import faiss
import numpy as np

from embedmig.errors import StoreError
from embedmig.store import files
from embedmig.store.journal import Tail


class Overlay:
    def __init__(self, base: Any, base_seq: int) -> None:
        self.base = base
        self.applied = base_seq
        self.delta: Any = faiss.IndexIDMap2(faiss.IndexFlatIP(base.d))
        self._hidden = np.empty(0, dtype=np.int64)  # sorted ids masked out of the base
        self._params: Any = None
        self._turns = _Turns()

    def apply(self, tail: Tail) -> None:
        """Apply a tail read after ``self.applied`` (its missing vectors filled)."""
        if len(tail.missing):
            raise StoreError("tail vectors must be filled before they are applied")
        touched = tail.touched_ids
        if len(touched):
            hidden = np.union1d(self._hidden, touched)
            params = _excluding(self.base, hidden)
            vectors = np.ascontiguousarray(tail.vectors)
            with self._turns.alone():
                self.delta.remove_ids(touched)
                if len(tail.upsert_ids):
                    self.delta.add_with_ids(vectors, tail.upsert_ids)
                self._hidden, self._params = hidden, params
        self.applied = max(self.applied, tail.last_seq)

    @property
    def size(self) -> int:
        """An upper bound on the documents of the view (base plus tail, masked ones counted)."""
        return int(self.base.ntotal) + int(self.delta.ntotal)

    def search(
        self, queries: np.ndarray, k: int, threads: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` over base and tail, like ``files.search`` on the folded index."""
        with self._turns.shared():
            return self._search(queries, k, threads)

    def _search(
        self, queries: np.ndarray, k: int, threads: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if not len(self._hidden):
            return files.search(self.base, queries, k, threads)
        scores, ids = files.search(self.base, queries, k, threads, self._params)
        if self.delta.ntotal:
            more_scores, more_ids = files.search(self.delta, queries, k, threads)
            scores = np.concatenate([scores, more_scores], axis=1)
            ids = np.concatenate([ids, more_ids], axis=1)
            order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            scores = np.take_along_axis(scores, order, axis=1)
            ids = np.take_along_axis(ids, order, axis=1)
        return scores, ids

    def contents(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of every document in the folded view, ids ascending."""
        base_ids, base_vectors = _all_vectors(self.base)
        with self._turns.shared():
            keep = ~np.isin(base_ids, self._hidden)
            delta_ids, delta_vectors = _all_vectors(self.delta)
        ids = np.concatenate([base_ids[keep], delta_ids])
        vectors = np.concatenate([base_vectors[keep], delta_vectors])
        order = np.argsort(ids, kind="stable")
        return ids[order], vectors[order]

    def fold(self) -> Any:
        """A new index equal to this view; keeps the base's training (IVF centroids, PQ codes).

        Rebuilt from the view's vectors rather than with ``remove_ids``: IVF keeps its internal
        ids on removal while ``IndexIDMap2`` compacts its id map, so ids would come out wrong.
        """
        if not len(self._hidden):
            return self.base
        ids, vectors = self.contents()
        folded: Any = faiss.clone_index(self.base)
        folded.reset()
        if len(ids):
            folded.add_with_ids(vectors, ids)
        return folded


class _Turns:
    """Many searches at once, or one change alone: a change waits for the searches under way
    and holds new ones back until it is done (so a stream of searches cannot starve it)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._searching = 0
        self._changing = False
        self._waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._changing and not self._waiting)
            self._searching += 1
        try:
            yield
        finally:
            with self._cond:
                self._searching -= 1
                if not self._searching:
                    self._cond.notify_all()

    @contextmanager
    def alone(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            self._cond.wait_for(lambda: not self._changing and not self._searching)
            self._waiting -= 1
            self._changing = True
        try:
            yield
        finally:
            with self._cond:
                self._changing = False
                self._cond.notify_all()


def _excluding(index: Any, hidden: np.ndarray) -> Any:
    """Search parameters that skip ``hidden`` ids and keep the index's own nprobe / efSearch."""
    api: Any = faiss  # its bundled type stubs predate search parameters with selectors
    selector = api.IDSelectorNot(api.IDSelectorBatch(hidden))
    if hasattr(index, "id_map"):
        # Given a plain selector, IndexIDMap wraps it by writing into the parameters for the
        # length of each search: parameters shared by concurrent searches must come wrapped.
        selector = api.IDSelectorTranslated(index.id_map, selector)
    inner = api.downcast_index(index.index) if hasattr(index, "index") else index
    ivf = api.try_extract_index_ivf(inner)
    if ivf is not None:
        params = api.SearchParametersIVF(sel=selector, nprobe=ivf.nprobe)
    elif isinstance(inner, api.IndexHNSW):
        params = api.SearchParametersHNSW(sel=selector, efSearch=inner.hnsw.efSearch)
    else:
        params = api.SearchParameters(sel=selector)
    params.referenced_objects = [selector]  # the SWIG wrapper would otherwise free it
    return params


def _all_vectors(index: Any) -> tuple[np.ndarray, np.ndarray]:
    """Every (id, vector) of an ``IDMap2`` index, reconstructed from its storage."""
    n = int(index.ntotal)
    if n == 0:
        return np.empty(0, dtype=np.int64), np.empty((0, index.d), dtype=np.float32)
    ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    try:
        vectors = index.index.reconstruct_n(0, n)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1]
        raise StoreError(f"this index type cannot return its vectors: {reason}") from None
    return ids, np.asarray(vectors, dtype=np.float32)
