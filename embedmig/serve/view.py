"""One index as readers see it: its verified file plus its journal tail, kept up to date."""

from __future__ import annotations

from embedmig.embedders import LoadedEmbedder
from embedmig.environment import Environment
from embedmig.store import catalog, files, journal
from embedmig.store.overlay import Overlay


class IndexView:
    """``record`` as readers see it, embedded for through ``adapter`` when one serves it."""

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
        self.overlay = Overlay(files.load(env.file_of(record), record.sha256), record.base_seq)
        self._embedder = embedder

    @property
    def embedder(self) -> LoadedEmbedder:
        # Loaded on demand: folding a tail whose vectors were all journaled needs no model.
        if self._embedder is None:
            self._embedder = self.env.serving_embedder(self.record, self.adapter)
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
