"""One index as readers see it: its verified file plus its journal tail, kept up to date."""

from __future__ import annotations

from embedmig.embedders import LoadedEmbedder
from embedmig.environment import Environment
from embedmig.store import catalog, files, journal
from embedmig.store.overlay import Overlay


class IndexView:
    def __init__(
        self,
        env: Environment,
        record: catalog.IndexRecord,
        embedder: LoadedEmbedder | None = None,
    ) -> None:
        self.env = env
        self.record = record
        self.overlay = Overlay(files.load(env.file_of(record), record.sha256), record.base_seq)
        self._embedder = embedder

    @property
    def embedder(self) -> LoadedEmbedder:
        # Loaded on demand: folding a tail whose vectors were all journaled needs no model.
        if self._embedder is None:
            self._embedder = self.env.embedder_of(self.record)
        return self._embedder

    def catch_up(self) -> journal.Tail:
        """Apply the changes journaled since the last call; return them, folded."""
        with self.env.engine.connect() as conn:
            tail = journal.tail(
                conn, self.record.alias, self.record.id, self.overlay.applied, self.record.dim
            )
        # Changes journaled while this index received no writes (after its holdover) carry no
        # vector for it: embed their text now, so the view is still the latest document state.
        tail.fill(self.embedder.encode_documents)
        self.overlay.apply(tail)
        return tail


def follow(env: Environment, view: IndexView | None, record: catalog.IndexRecord) -> IndexView:
    """``view`` while it still shows ``record``'s file; else a view of the file ``record`` names
    now (a compaction writes a new one), keeping the model when the index is the same."""
    if view is not None and (view.record.id, view.record.sha256) == (record.id, record.sha256):
        return view
    same_index = view is not None and view.record.id == record.id
    fresh = IndexView(env, record, view.embedder if view is not None and same_index else None)
    _ = fresh.embedder  # a changed model fails now, not in the middle of a search
    return fresh
