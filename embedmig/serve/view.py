"""One index as readers see it: its verified file plus its journal tail, kept up to date; or its
pgvector table."""

from __future__ import annotations

import numpy as np

from embedmig.embedders import LoadedEmbedder
from embedmig.environment import Environment
from embedmig.store import catalog, docids, files, journal, pgsearch, pgtables
from embedmig.store.overlay import Overlay
from embedmig.store.stores import PGVECTOR


class IndexView:
    """``record`` as readers see it, embedded for through ``adapter`` when one serves it: a FAISS
    file with its journal tail applied in memory, or a pgvector table, which writers keep
    current themselves."""

    def __init__(
        self,
        env: Environment,
        record: catalog.IndexRecord,
        embedder: LoadedEmbedder | None = None,
        adapter: catalog.AdapterRecord | None = None,
    ) -> None:
        self.env = env
        self.record = record
        self.adapter = adapter
        self.overlay: Overlay | None = None
        self.table: pgsearch.Opened | None = None
        if record.store == PGVECTOR:
            self.table = pgsearch.Opened(env.engine, pgtables.table_of(record))
        else:
            self.overlay = Overlay(files.load(env.file_of(record), record.sha256), record.base_seq)
        self._embedder = embedder

    @property
    def embedder(self) -> LoadedEmbedder:
        # Loaded on demand: folding a tail whose vectors were all journaled needs no model.
        if self._embedder is None:
            self._embedder = self.env.serving_embedder(self.record, self.adapter)
        return self._embedder

    @property
    def size(self) -> int:
        """An upper bound on the documents of the view."""
        if self.overlay is not None:
            return self.overlay.size
        assert self.table is not None
        return self.table.ntotal

    def search(
        self, queries: np.ndarray, k: int, threads: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` scores and ids, as ``files.search`` gives them."""
        if self.table is not None:
            return self.table.search(queries, k)
        assert self.overlay is not None
        return self.overlay.search(queries, k, threads)

    def search_documents(
        self, queries: np.ndarray, k: int, threads: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, dict[int, docids.DocInfo] | None]:
        """``search``, with the documents found when the store reads them with the search (a
        table joins them in the same statement); None: the caller holds them."""
        if self.table is not None:
            return self.table.search_documents(queries, k, self.record.alias)
        scores, ids = self.search(queries, k, threads)
        return scores, ids, None

    def contents(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of every document readers see now, ids ascending."""
        if self.overlay is not None:
            return self.overlay.contents()
        with self.env.engine.connect() as conn:
            return pgtables.contents(conn, pgtables.table_of(self.record))

    def catch_up(self) -> journal.Tail:
        """Apply the changes journaled since the last call; return them, folded (a table has
        them already: nothing)."""
        if self.overlay is None:
            return journal.Tail.empty(self.record.dim)
        with self.env.engine.connect() as conn:
            tail = journal.tail(
                conn, self.record.alias, self.record.id, self.overlay.applied, self.record.dim
            )
        # Changes journaled while this index received no writes (after its holdover) carry no
        # vector for it: embed their text now, so the view is still the latest document state.
        tail.fill(self.embedder.encode_documents)
        self.overlay.apply(tail)
        return tail


def follow(
    env: Environment,
    view: IndexView | None,
    record: catalog.IndexRecord,
    adapter: catalog.AdapterRecord | None = None,
) -> IndexView:
    """``view`` while it still shows ``record``'s file through ``adapter``; else a view of the
    file ``record`` names now (a compaction writes a new one), keeping the model when the index
    and adapter are the same."""
    adapter_id = adapter.id if adapter is not None else None
    same_model = view is not None and (view.adapter.id if view.adapter else None) == adapter_id
    if (
        view is not None
        and same_model
        and (view.record.id, view.record.sha256)
        == (
            record.id,
            record.sha256,
        )
    ):
        return view
    keep = view is not None and same_model and view.record.id == record.id
    fresh = IndexView(env, record, view.embedder if view is not None and keep else None, adapter)
    _ = fresh.embedder  # a changed model fails now, not in the middle of a search
    return fresh
