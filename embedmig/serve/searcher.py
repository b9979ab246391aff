"""The alias-resolving reader: always searches the alias's current live index."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedmig.config import MAX_K, Config
from embedmig.embedders import Embedder
from embedmig.environment import Environment
from embedmig.errors import ConfigError, StateError, StoreError
from embedmig.names import blank
from embedmig.serve.mirror import Mirror, TrafficStats
from embedmig.serve.view import IndexView, follow
from embedmig.store import catalog, docids, journal, sidecar


# Not frozen: a frozen dataclass sets each field through object.__setattr__, which made building
# a batch's hits a tenth of search_many's time over an HNSW index.
@dataclass(slots=True)
class Hit:
    """One document of an answer: its rank (from 1), key, score in the index's space, snippet
    (its first 200 characters) and metadata, with the index and revision that answered."""

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

    The alias's state (its live index, adapter, journal position and the model's probe verdict)
    is held in memory, so a search issues no SQL: a refresher thread reads the alias's reader
    clock (``catalog.reader_clock``: one primary-key read) every ``searcher.refresh_ms`` and,
    when it moved, follows the swap, rollback, new file or writes it counts. **Staleness bound:**
    a swap, a rollback or a write acknowledged before a search started is served by it when it
    started at least ``searcher.refresh_ms`` after the commit, plus the time to read the change
    (and, for a swap, to open the new index file and model: until then the view before it
    answers). With ``searcher.refresh_ms = 0`` every search reads the clock itself, one
    statement, and sees every commit before it. A refusal (a drifted model, a history database
    gone) is found the same way and refuses searches until a follow succeeds (tried again when
    the clock moves, else every second).
    Keys, snippets and metadata of hits come from memory too: from the sidecar written with the
    index file (``embedmig.store.sidecar``), kept current from the journal. On a pgvector table
    (``index_store = pgvector``) each search is one SQL statement instead, which reads the table
    writers change and joins the hits' documents: an acknowledged write is served at once.

    With ``searcher.log_queries`` it logs a share of the queries it serves, and while a canary is
    open on the alias it mirrors a share of them to the shadow (see ``embedmig.serve.mirror``):
    both off the request path. ``close()`` records what is still queued.

    Every ``readers.heartbeat_seconds`` it reports, off the request path too, the index it holds
    (``embedmig status``), which the refresher keeps current even when no query comes: an idle
    reader holds, and reports, what it would serve now. ``close()`` removes that report.

    A searcher is safe to share between threads (one per process, as a FastAPI or gRPC server
    holds it): each search answers from one view of the alias, whole, and searches run at once.
    ``search_many`` answers a batch from one view in one FAISS call. A single query searches on
    one FAISS thread, as FAISS advises for serving; a batch on ``searcher.threads`` (default:
    FAISS's, every core). Either setting holds for that call, in that thread only.

    When an adapter revision is current, queries are embedded with its new model and mapped
    into the live index's space. ``model`` asks for one model's queries: the live index's own,
    an adapter's, or, while a backfill with a bridge runs, the new model through the bridge.
    """

    def __init__(self, env: Environment, alias: str, model: Embedder | None = None) -> None:
        self.env = env
        self.alias = alias
        self.model = model
        self._model_fingerprint: str | None = None
        self._mirror = Mirror(env, alias)  # reads its options now: a bad one fails here
        self._threads = int(env.config.get_range("searcher.threads", 0, 1024))
        self._refresh_s = env.config.get_range("searcher.refresh_ms", 0, 3_600_000) / 1000
        self._held: _Held | None = None  # what the request path answers from, replaced whole
        self._following = threading.Lock()  # one follow at a time: the refresher's or a search's
        self._refresher: threading.Thread | None = None
        self._closing = threading.Event()
        self._mirror.follow = lambda: self._now().serving().record.id

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
    def refresh_seconds(self) -> float:
        """``searcher.refresh_ms`` in seconds: how often the alias's state is followed (its
        staleness bound, without the time to follow); 0: at every search."""
        return self._refresh_s

    @property
    def index_record(self) -> catalog.IndexRecord:
        """The index this searcher serves now."""
        return self._now().serving().record

    @property
    def view(self) -> IndexView:
        return self._now().serving()

    def search(self, text: str, k: int = 10, *, meta: Mapping[str, Any] | None = None) -> list[Hit]:
        """The top ``k`` documents for ``text`` (fewer when the alias holds fewer). ``meta``
        (JSON-able, ``{"lang": "de"}``) is logged with the query: ``eval.segment_by`` reads it."""
        _check_k(k)
        if not isinstance(text, str) or blank(text):
            raise ConfigError("the query is empty: give a text to search for")
        encoded = _meta(meta)
        held = self._served(1)
        view = held.serving()
        vectors = view.embedder.encode_queries([text])
        # A mirrored query's live answer is read to the canary's depth in the same search.
        target = self._mirror.plan()
        depth = max(k, target.k) if target is not None else k
        scores, ids, found = view.search_documents(vectors, depth)
        (hits,) = held.hits(ids[:, :k], scores[:, :k], found)
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
        held = self._served(len(texts))
        view = held.serving()
        vectors = view.embedder.encode_queries(texts)
        targets = self._mirror.plan_many(len(texts))
        depth = max([k, *(t.k for t in targets if t is not None)])
        scores, ids, documents = view.search_documents(vectors, depth, self._threads)
        found = held.hits(ids[:, :k], scores[:, :k], documents)
        for i, text in enumerate(texts):
            self._mirror.served(text, k, targets[i], ids[i], scores[i], encoded[i])
        return found

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the queries queued for the log and the canary are recorded; False if they
        are not within ``timeout`` seconds."""
        return self._mirror.flush(timeout)

    def _served(self, queries: int) -> _Held:
        """What to answer ``queries`` queries from, counted in the heartbeat; a refusal (a
        drifted embedder) is reported by it too."""
        held = self._held if self._refresh_s else None
        try:
            if held is None:
                held = self._now()
            view = held.serving()
        except Exception as exc:
            self._mirror.heartbeat.refused(str(exc))
            self._mirror.start()
            raise
        self._mirror.heartbeat.served(view.record.id, queries)
        return held

    def _now(self) -> _Held:
        """The alias as it is now: followed here, at once. Raises what refuses it."""
        held = self._follow()
        if self._refresh_s and self._refresher is None and not self._closing.is_set():
            self._refresher = threading.Thread(
                target=self._refresh, name=f"embedmig-refresh-{self.alias}", daemon=True
            )
            self._refresher.start()
        held.serving()
        return held

    def _refresh(self) -> None:
        while not self._closing.wait(self._refresh_s):
            self._follow()

    def _follow(self) -> _Held:
        """Read the reader clock; when it moved (or the last follow was refused), follow the
        alias: its live index and adapter, the journal since, the keys of what changed.
        Whatever fails (a drifted model, a history database gone or unreachable) is held as
        the refusal searches raise until a follow succeeds: tried again when the clock moves,
        else a second later."""
        with self._following:
            held = self._held
            clock = (-1, -1)
            try:
                with self.env.engine.connect() as conn:
                    clock = catalog.reader_clock(conn, self.alias)
                if held is None or held.clock != clock or held.stale():
                    held = self._followed(held, clock)
            except Exception as exc:
                held = _Held(None, sidecar.Documents.of({}), clock, exc, time.monotonic())
            self._held = held
            return held

    def _followed(self, held: _Held | None, clock: tuple[int, int]) -> _Held:
        live, adapter = self._live()
        before = held.view if held is not None else None
        try:
            view = follow(self.env, before, live, adapter)
        except StoreError:
            # Compaction may have replaced the file between reading its row and opening it.
            newer, adapter = self._live()
            if (newer.id, newer.sha256) == (live.id, live.sha256):
                raise
            view = follow(self.env, before, newer, adapter)
        tail = view.catch_up()
        with self.env.engine.connect() as conn:
            if held is not None and view is held.view:
                docs = held.docs
            elif view.table is not None:  # a table: each search reads the documents it finds
                docs = sidecar.Documents.of({})
            else:  # a new file: its documents are in its sidecar, written with it
                file = self.env.file_of(view.record)
                docs = sidecar.read(file, view.record.sha256) or sidecar.Documents.of(
                    docids.describe_all(conn, self.alias)
                )
            docs.update(docids.describe_ids(conn, self.alias, tail.upsert_ids))
        return _Held(view, docs, clock)

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
        self._closing.set()
        if self._refresher is not None:
            self._refresher.join()
            self._refresher = None
        self._mirror.close()
        self._held = None
        self.env.dispose()


_RETRY_REFUSED = 1.0  # seconds


@dataclass(frozen=True)
class _Held:
    """One follow's outcome: a view with its documents' keys, at a reader clock; or what
    refused it."""

    view: IndexView | None
    docs: sidecar.Documents
    clock: tuple[int, int]
    refusal: Exception | None = None
    refused_at: float = 0.0  # time.monotonic()

    def stale(self) -> bool:
        """A refusal to try again although nothing changed (the model's files, say, may be
        fixed): a second after it, not at every refresh, as opening a file and a model is the
        work a refused follow repeats."""
        return self.refusal is not None and time.monotonic() - self.refused_at >= _RETRY_REFUSED

    def serving(self) -> IndexView:
        if self.refusal is not None:
            raise self.refusal.with_traceback(None)
        assert self.view is not None
        return self.view

    def hits(
        self,
        ids: np.ndarray,
        scores: np.ndarray,
        found: Mapping[int, docids.DocInfo] | None = None,
    ) -> list[list[Hit]]:
        """Hits of the ids found, with the documents held, or ``found`` with them."""
        record = self.serving().record
        docs = self.docs if found is None else found
        index_id, revision = record.id, record.revision
        rows = []
        for row_ids, row_scores in zip(ids.tolist(), scores.tolist(), strict=True):
            hits = []
            for rank, (doc_id, score) in enumerate(zip(row_ids, row_scores, strict=True), 1):
                if doc_id < 0:
                    break
                doc = docs.get(doc_id) or docids.DocInfo(f"#{doc_id}", "", None)
                hits.append(Hit(rank, doc.key, score, doc.snippet, doc.meta, index_id, revision))
            rows.append(hits)
        return rows


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
