"""The alias-resolving reader: always searches the alias's current live index."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedmig.config import Config
from embedmig.embedders import Embedder, LoadedEmbedder
from embedmig.errors import StateError, StoreError
from embedmig.runtime.environment import Environment
from embedmig.store import catalog, files


@dataclass(frozen=True)
class Hit:
    rank: int
    key: str
    score: float
    snippet: str


class Searcher:
    """Searches ``alias``; a swap or a rollback is picked up at the next call, no reopening.

    Each search reads the alias's live index id from SQL (one indexed lookup); the index file and
    model are loaded, verified, only when that id changes.
    """

    def __init__(self, env: Environment, alias: str) -> None:
        self.env = env
        self.alias = alias
        self._record: catalog.IndexRecord | None = None
        self._index: Any = None
        self._embedder: LoadedEmbedder | None = None

    @property
    def index_record(self) -> catalog.IndexRecord:
        return self._refresh()

    def search(self, text: str, k: int = 10) -> list[Hit]:
        if k < 1:
            raise StateError("k must be at least 1")
        self._refresh()
        assert self._embedder is not None
        vectors = self._embedder.encode_queries([text], self.env.batch_size)
        scores, ids = files.search(self._index, vectors, k)
        with self.env.engine.connect() as conn:
            described = catalog.describe_ids(conn, self.alias, ids[0])
        hits = []
        for rank, (doc_id, score) in enumerate(zip(ids[0], scores[0], strict=True), 1):
            if doc_id < 0:
                break
            key, snippet = described.get(int(doc_id), (f"#{int(doc_id)}", ""))
            hits.append(Hit(rank, key, float(score), snippet))
        return hits

    def _refresh(self) -> catalog.IndexRecord:
        with self.env.engine.connect() as conn:
            live = catalog.live_index(conn, self.alias)
        if live is None:
            raise StateError(f"alias {self.alias!r} has no live index; run `embedmig upgrade`")
        if self._record is None or live.id != self._record.id:
            if live.path is None:
                raise StoreError(f"live index #{live.id} of {self.alias!r} has no file")
            embedder = self.env.load_embedder(Embedder.from_json(live.model))
            if embedder.fingerprint != live.fingerprint:
                raise StateError(
                    f"model files of {embedder.spec.model} changed since index #{live.id} was "
                    "built; its vectors would not match new queries"
                )
            self._index = files.load(Path(live.path), live.sha256)
            self._embedder = embedder
            self._record = live
        return live

    def close(self) -> None:
        self._index = None
        self.env.dispose()


def open_searcher(config: Config, alias: str) -> Searcher:
    """A searcher on ``alias`` for pipelines and services: ``open_searcher(cfg, "docs").search(q)``."""
    return Searcher(Environment(config), alias)
