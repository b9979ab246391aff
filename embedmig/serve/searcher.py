"""The alias-resolving reader: always searches the alias's current live index."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedmig.config import MAX_K, Config
from embedmig.embedders import Embedder
from embedmig.environment import Environment
from embedmig.errors import ConfigError, EmbedmigError, StateError, StoreError
from embedmig.names import blank
from embedmig.serve.mirror import Mirror, TrafficStats
from embedmig.serve.view import IndexView, follow
from embedmig.store import catalog, docids, journal


@dataclass(frozen=True)
class Hit:
    rank: int
    key: str
    score: float
    snippet: str
    metadata: dict[str, Any] | None = None
    # The index that answered, and the revision that built it: which space the score is in.
    index_id: int | None = None
    revision: str | None = None


class Searcher:
    """Searches ``alias``: its live index file plus every change journaled since it was saved.

    Each search reads the alias's live index from SQL and the journal after the last change it
    applied (two indexed lookups), so an acknowledged write, a swap or a rollback in any process is
    seen by the next search, with no reopening. Index file and model load only when the live
    index or its file (after compaction) changes.

    With ``searcher.log_queries`` it logs a share of the queries it serves, and while a canary is
    open on the alias it mirrors a share of them to the shadow (see ``embedmig.serve.mirror``):
    both off the request path. ``close()`` records what is still queued.

    Every ``readers.heartbeat_seconds`` it reports, off the request path too, the index it holds
    (``embedmig status``): before each report it follows a swap or rollback even when no query
    came, so an idle reader holds, and reports, what it would serve now. ``close()`` removes
    that report.

    A searcher is safe to share between threads (one per process, as a FastAPI or gRPC server
    holds it): a search holds the searcher's view of the alias under a lock while it embeds and
    searches, so each answer comes from one view, whole. ``search_many`` answers a batch from
    one view in one FAISS call. A single query searches on one FAISS thread, as FAISS advises
    for serving; a batch on ``searcher.threads`` (default: FAISS's, every core). Either setting
    holds for that call, in that thread only.

    When an adapter revision is current, queries are embedded with its new model and mapped
    into the live index's space. ``model`` asks for one model's queries: the live index's own,
    an adapter's, or, while a backfill with a bridge runs, the new model through the bridge.
    """

    def __init__(self, env: Environment, alias: str, model: Embedder | None = None) -> None:
        self.env = env
        self.alias = alias
        self.model = model
        self._model_fingerprint: str | None = None
        self._view: IndexView | None = None
        # The request path and the worker (which follows swaps between queries) share the view.
        self._view_lock = threading.Lock()
        self._mirror = Mirror(env, alias)  # reads its options now: a bad one fails here
        self._threads = int(env.config.get_range("searcher.threads", 0, 1024))
        self._mirror.follow = lambda: self._refresh().record.id

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def mirroring(self) -> bool:
        """Whether this searcher mirrors queries to an open canary now (it polls for one)."""
        return self._mirror.target is not None

    @property
    def traffic(self) -> TrafficStats:
        """Queries logged, mirrored to a canary, dropped (queue full) or failed (write error)."""
        return self._mirror.stats

    @property
    def index_record(self) -> catalog.IndexRecord:
        return self._refresh().record

    @property
    def view(self) -> IndexView:
        return self._refresh()

    def search(self, text: str, k: int = 10, *, meta: Mapping[str, Any] | None = None) -> list[Hit]:
        """The top ``k`` documents for ``text`` (fewer when the alias holds fewer). ``meta``
        (JSON-able, ``{"lang": "de"}``) is logged with the query: ``eval.segment_by`` reads it."""
        _check_k(k)
        if not isinstance(text, str) or blank(text):
            raise ConfigError("the query is empty: give a text to search for")
        encoded = _meta(meta)
        with self._view_lock:  # the worker may follow a swap meanwhile: not during a search
            view = self._served_view(1)
            vectors = view.embedder.encode_queries([text])
            # A mirrored query's live answer is read to the canary's depth in the same search.
            target = self._mirror.plan()
            depth = max(k, target.k) if target is not None else k
            scores, ids = view.overlay.search(vectors, depth)
        (hits,) = self._hits(view.record, ids[:, :k], scores[:, :k])
        self._mirror.served(text, k, target, ids[0], scores[0], encoded)
        return hits

    def search_many(
        self,
        texts: Sequence[str],
        k: int = 10,
        *,
        metas: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[list[Hit]]:
        """The top ``k`` documents for each of ``texts``, as ``search`` gives them, from one
        view of the alias: the queries encoded in batches (``batch_size``) and searched in one
        FAISS call on up to ``searcher.threads`` threads. Each query is logged, mirrored and
        counted as ``search`` does; ``metas``, if given, holds one ``meta`` per text."""
        _check_k(k)
        texts = list(texts)
        if any(not isinstance(t, str) or blank(t) for t in texts):
            raise ConfigError("a query is empty: give a text to search for, each")
        if metas is not None and len(metas) != len(texts):
            raise ConfigError(f"metas holds {len(metas)} entries for {len(texts)} texts")
        encoded = [_meta(m) for m in metas] if metas is not None else [None] * len(texts)
        if not texts:
            return []
        with self._view_lock:
            view = self._served_view(len(texts))
            vectors = view.embedder.encode_queries(texts)
            targets = [self._mirror.plan() for _ in texts]
            depth = max([k, *(t.k for t in targets if t is not None)])
            scores, ids = view.overlay.search(vectors, depth, self._threads)
        found = self._hits(view.record, ids[:, :k], scores[:, :k])
        for i, text in enumerate(texts):
            self._mirror.served(text, k, targets[i], ids[i], scores[i], encoded[i])
        return found

    def _served_view(self, queries: int) -> IndexView:
        """The view to answer ``queries`` queries from, counted in the heartbeat; a refusal
        (a drifted embedder) is reported by it too. Under the view lock."""
        try:
            view = self._follow()
        except EmbedmigError as exc:
            self._mirror.heartbeat.refused(str(exc))
            self._mirror.start()
            raise
        self._mirror.heartbeat.served(view.record.id, queries)
        return view

    def _hits(
        self, record: catalog.IndexRecord, ids: np.ndarray, scores: np.ndarray
    ) -> list[list[Hit]]:
        """Each row's hits, its documents described in one read."""
        wanted = {int(i) for i in ids.ravel() if i >= 0}
        with self.env.engine.connect() as conn:
            described = docids.describe_ids(conn, self.alias, wanted)
        rows = []
        for row_ids, row_scores in zip(ids, scores, strict=True):
            hits = []
            for rank, (doc_id, score) in enumerate(zip(row_ids, row_scores, strict=True), 1):
                if doc_id < 0:
                    break
                doc = described.get(int(doc_id), docids.DocInfo(f"#{int(doc_id)}", "", None))
                hits.append(
                    Hit(
                        rank,
                        doc.key,
                        float(score),
                        doc.snippet,
                        doc.meta,
                        record.id,
                        record.revision,
                    )
                )
            rows.append(hits)
        return rows

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the queries queued for the log and the canary are recorded; False if they
        are not within ``timeout`` seconds."""
        return self._mirror.flush(timeout)

    def _refresh(self) -> IndexView:
        with self._view_lock:
            return self._follow()

    def _follow(self) -> IndexView:
        live, adapter = self._live()
        try:
            view = follow(self.env, self._view, live, adapter)
        except StoreError:
            # Compaction may have replaced the file between reading its row and opening it.
            newer, adapter = self._live()
            if (newer.id, newer.sha256) == (live.id, live.sha256):
                raise
            view = follow(self.env, self._view, newer, adapter)
        self._view = view
        view.catch_up()
        return view

    def _live(self) -> tuple[catalog.IndexRecord, catalog.AdapterRecord | None]:
        with self.env.engine.connect() as conn:
            live = catalog.live_index(conn, self.alias)
            maps = catalog.adapters(conn, self.alias, [catalog.State.LIVE, catalog.State.BRIDGE])
        if live is None:
            raise StateError(f"alias {self.alias!r} has no live index; run `embedmig upgrade`")
        maps = [m for m in maps if m.index_id == live.id]
        current = next((m for m in maps if m.state == catalog.State.LIVE), None)
        if self.model is None:
            return live, current
        wanted = self._wanted()
        if current is not None and current.fingerprint == wanted:
            return live, current
        if live.fingerprint == wanted:
            return live, None
        bridge = next((m for m in maps if m.fingerprint == wanted), None)
        if bridge is None:
            raise StateError(
                f"alias {self.alias!r} serves no index or map for {self.model.describe()}: its "
                "live index was built by another model and no adapter or bridge maps this one"
            )
        return live, bridge

    def _wanted(self) -> str:
        if self._model_fingerprint is None:
            assert self.model is not None
            self._model_fingerprint = self.env.load_embedder(self.model).fingerprint
        return self._model_fingerprint

    def close(self) -> None:
        self._mirror.close()
        self._view = None
        self.env.dispose()


def _check_k(k: object) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise ConfigError(f"k must be an integer from 1 to {MAX_K:,}, got {k!r}")


def _meta(meta: Mapping[str, Any] | None) -> str | None:
    """A query's metadata as the log keeps it (JSON): checked on the request path, so a bad one
    fails its search, not the log's next batch."""
    if meta is None:
        return None
    if not isinstance(meta, Mapping):
        raise ConfigError(f"meta must be a mapping, got {type(meta).__name__}")
    try:
        return journal.encode_meta(meta)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"meta must be JSON (strings, numbers, lists, maps): {exc}") from None


def open_searcher(config: Config, alias: str, model: Embedder | None = None) -> Searcher:
    """A searcher on ``alias`` for pipelines and services: ``open_searcher(cfg, "docs").search(q)``.

    ``model``: search with this model's queries (see ``Searcher``); by default the model the
    alias serves."""
    env = Environment(config)
    try:
        env.engine  # noqa: B018  # the history database must be there: a searcher never creates one
        return Searcher(env, alias, model)
    except BaseException:
        env.dispose()
        raise
