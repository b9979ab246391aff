"""Backfill: stream the corpus through the new embedder into a shadow index, resumably."""

from __future__ import annotations

import hashlib
import heapq
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedmig.embedders import LoadedEmbedder, Usage, probes
from embedmig.environment import Environment
from embedmig.errors import SourceError
from embedmig.metrics import coverage
from embedmig.metrics.coverage import Docs
from embedmig.migrate import carryover, executors
from embedmig.migrate.progress import Meter
from embedmig.migrate.settings import MigrationSettings
from embedmig.names import blank
from embedmig.script import Revision
from embedmig.sources import Document
from embedmig.store import catalog, checkpoints, docids, journal, manifest
from embedmig.store.stores import METRIC, Build

log = logging.getLogger("embedmig")


class Sampler:
    """A seeded sample of documents that does not depend on corpus order or on resuming.

    Keeps the ``size`` keys with the smallest seeded hash (a bottom-k sketch), or with ``rate``
    every key whose hash falls below that share of the hash range (a Bernoulli sample of a corpus
    of any size, known in one pass). A later document with a sampled key replaces the earlier
    one, as it does in the index.
    """

    def __init__(self, size: int, seed: int, rate: float | None = None) -> None:
        self.size = size
        self.rate = rate
        self._salt = str(seed).encode() + b"\0"
        self._heap: list[tuple[int, str]] = []  # (-hash, key): the root is the largest hash kept
        self._docs: dict[str, Document] = {}
        self._below = None if rate is None else int(rate * 2**64)

    def offer(self, doc: Document) -> None:
        if doc.key in self._docs:
            self._docs[doc.key] = doc
            return
        h = int.from_bytes(hashlib.blake2b(self._salt + doc.key.encode(), digest_size=8).digest())
        if self._below is not None:
            if h < self._below:
                self._heap.append((-h, doc.key))
                self._docs[doc.key] = doc
        elif len(self._heap) < self.size:
            heapq.heappush(self._heap, (-h, doc.key))
            self._docs[doc.key] = doc
        elif self._heap and h < -self._heap[0][0]:
            _, dropped = heapq.heapreplace(self._heap, (-h, doc.key))
            del self._docs[dropped]
            self._docs[doc.key] = doc

    def documents(self) -> list[Document]:
        """The sample, smallest hash first: any prefix is itself a seeded sample."""
        return [self._docs[key] for _, key in sorted(self._heap, reverse=True)]


@dataclass
class CorpusStats:
    documents: int = 0
    skipped_empty: int = 0
    duplicates: int = 0
    truncated: int = 0
    usage: Usage = field(default_factory=Usage)  # what this run's embedding cost
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # backfill_s, build_s


@dataclass
class Shadow:
    record: catalog.IndexRecord
    index: Any
    sample: list[Document]
    stats: CorpusStats
    coverage: carryover.Result


class SourceChanged(Exception):
    """The documents before a resume point are not those the checkpoint consumed."""


class Progress:
    """A running digest of the documents consumed, and the counts a resumed run carries on from."""

    def __init__(self, saved: Mapping[str, Any] | None, stats: CorpusStats) -> None:
        self._digest = hashlib.blake2b(digest_size=16)
        self._expected = saved.get("digest") if saved else None
        self.stats = stats
        if saved:
            stats.skipped_empty = int(saved.get("skipped_empty", 0))
            stats.truncated = int(saved.get("truncated", 0))

    def consume(self, doc: Document) -> None:
        for part in (doc.key, doc.text):
            data = part.encode("utf-8", "surrogatepass")
            self._digest.update(len(data).to_bytes(8, "big") + data)

    def verify(self) -> None:
        """At the resume point: the documents consumed must be the checkpoint's."""
        if self._expected is not None and self._digest.hexdigest() != self._expected:
            raise SourceChanged

    def state(self) -> dict[str, Any]:
        return {
            "digest": self._digest.hexdigest(),
            "skipped_empty": self.stats.skipped_empty,
            "truncated": self.stats.truncated,
        }


@dataclass(frozen=True)
class Chunk:
    """Non-empty documents to embed, and the source position after them: the count consumed and
    the Progress state, taken when the chunk was read (an executor may read ahead of the
    checkpoints)."""

    consumed: int
    docs: list[Document]
    state: dict[str, Any]

    def texts(self) -> list[str]:
        return [doc.text for doc in self.docs]


def batches(
    docs: Iterable[Document],
    size: int,
    progress: Progress,
    sampler: Sampler,
    skip: int,
) -> Iterator[Chunk]:
    """Chunks of non-empty documents after the first ``skip``.

    Skipped documents still reach the sampler, so a resumed run samples the same queries, and the
    digest, which must match the checkpoint's (else SourceChanged).
    """
    stats = progress.stats
    batch: list[Document] = []
    consumed = 0
    for doc in docs:
        consumed += 1
        sampler.offer(doc)
        progress.consume(doc)
        if consumed <= skip:
            if consumed == skip:
                progress.verify()
            continue
        if blank(doc.text):
            stats.skipped_empty += 1
            continue
        batch.append(doc)
        if len(batch) >= size:
            yield Chunk(consumed, batch, progress.state())
            batch = []
    if consumed < skip:  # the source shrank below the resume point
        raise SourceChanged
    stats.documents = consumed
    if batch:
        yield Chunk(consumed, batch, progress.state())


def backfill(
    env: Environment, rev: Revision, embedder: LoadedEmbedder, settings: MigrationSettings
) -> Shadow:
    """Build (or resume building) the shadow index of ``rev`` and mark it ready."""
    try:
        return _backfill(env, rev, embedder, settings, restart=False)
    except SourceChanged:
        log.warning(
            "the corpus of %s changed before the killed backfill's last checkpoint: "
            "starting the backfill over",
            rev.alias,
        )
        shadow = _backfill(env, rev, embedder, settings, restart=True)
        shadow.stats.notes.insert(
            0,
            "the corpus changed under the checkpoint of a killed run: the backfill started over",
        )
        return shadow


def _backfill(
    env: Environment,
    rev: Revision,
    embedder: LoadedEmbedder,
    settings: MigrationSettings,
    *,
    restart: bool,
) -> Shadow:
    docs = env.corpus(rev.alias)  # first: a corpus that cannot be opened registers nothing
    env.store(rev.index_store).check()
    probes.of(embedder)  # before writers are locked out below: an endpoint may take its time
    with env.begin() as conn:
        index_id, point, dropped = _start(conn, env, rev, embedder, restart=restart)
    for record in dropped:  # after the commit, as prune does: a rollback keeps file and row
        env.drop_index(record)
    started_as = _get(env, index_id)  # with the probes the build started with
    build = env.store(started_as.store).build(started_as, settings.eval.seed)
    build.truncate(point.rows)
    skip, rows = point.docs_consumed, point.rows
    if skip:
        log.info("resuming backfill of %s at document %d (%d vectors kept)", rev.alias, skip, rows)
    stats = CorpusStats()
    progress = Progress(point.progress, stats)
    sampler = Sampler(settings.eval.sample, settings.eval.seed)
    started = time.perf_counter()
    meter = Meter(f"backfill {rev.alias}", docs.total(), initial=skip, bar=env.progress)
    executor = executors.open_executor(embedder, env.settings, env.config.root, settings.ray)
    try:
        chunks = batches(docs, settings.checkpoint_every, progress, sampler, skip)
        for chunk, encoded in executor.map(chunks, Chunk.texts):
            stats.truncated += encoded.usage.truncated
            stats.usage += encoded.usage
            if embedder.remote:
                # What an endpoint or user code returns may change mid-run: a chunk commits
                # only while the model still returns what the build started with.
                env.recheck(embedder, started_as, "during the backfill")
            rows = _commit(env, rev.alias, index_id, build, chunk, encoded.vectors, rows, stats)
            meter.update(chunk.consumed - meter.done)
        if rows == 0:
            raise SourceError(f"the corpus of alias {rev.alias!r} has no non-empty documents")
        streamed = rows
        stats.duplicates = streamed - build.distinct_ids(streamed)
        before = embedder.usage
        merged = _reconcile(env, rev.alias, index_id, embedder, build, settings.checkpoint_every)
        stats.usage += embedder.usage - before
    except BaseException:
        # Keep a checkpointed build for the next run to resume; one with nothing durable in it
        # is removed, so a failure on the first batch leaves no trace.
        if rows == 0:
            _abandon(env, index_id, build)
        raise
    finally:
        meter.close()
        executor.close()
    stats.seconds["backfill_s"] = time.perf_counter() - started
    started = time.perf_counter()
    index, held_ids = build.finish(
        merged.deleted_ids,
        merged.tail.last_seq,
        embedder.encode_documents,
        lambda conn: _held(conn, index_id, merged),
    )
    stats.seconds["build_s"] = time.perf_counter() - started
    with env.engine.connect() as conn:  # a read: writers need not wait for the check
        covered = merged.check(conn, rev.alias, held_ids)
    _notes(stats, merged.tail, covered, embedder)
    log.info("backfill %s: %d vectors in index #%d", rev.alias, index.ntotal, index_id)
    return Shadow(_get(env, index_id), index, sampler.documents(), stats, covered)


def _commit(
    env: Environment,
    alias: str,
    index_id: int,
    build: Build,
    chunk: Chunk,
    vectors: np.ndarray,
    rows: int,
    stats: CorpusStats,
) -> int:
    """One chunk's ids, vectors, manifest rows and checkpoint, in one transaction: the rows the
    shadow then holds."""
    texts = chunk.texts()
    hashes = [manifest.content_hash(text) for text in texts]
    # As it was when the chunk was read, with the truncations counted up to it.
    state = {**chunk.state, "truncated": stats.truncated}
    with env.begin() as conn:
        ids = docids.assign_ids(conn, alias, [doc.key for doc in chunk.docs], texts)
        build.append(conn, ids, vectors, [doc.key for doc in chunk.docs])
        manifest.record_corpus(conn, index_id, ids, hashes)
        rows += len(texts)
        checkpoints.save_checkpoint(
            conn, index_id, checkpoints.Checkpoint(chunk.consumed, rows, state)
        )
    return rows


def _held(conn: Any, index_id: int, merged: _Merged) -> None:
    """A ready index's bookkeeping: what it holds; its checkpoint is done."""
    manifest.set_held(conn, index_id, merged.upsert_ids, merged.upsert_sha, merged.deleted_ids)
    checkpoints.clear_checkpoint(conn, index_id)


def _notes(
    stats: CorpusStats, replayed: journal.Tail, covered: carryover.Result, embedder: LoadedEmbedder
) -> None:
    """What the report says about the corpus the backfill read."""
    if stats.duplicates:
        stats.notes.append(
            f"{stats.duplicates} repeated document key(s): the last text of each won"
        )
    if replayed.changes:
        stats.notes.append(
            f"{replayed.changes} change(s) written during the backfill were replayed from the "
            f"journal ({len(replayed.upsert_ids)} document(s) upserted, "
            f"{len(replayed.deleted_ids)} deleted)"
        )
    stats.notes += covered.notes
    if stats.skipped_empty:
        stats.notes.append(f"{stats.skipped_empty} empty document(s) skipped")
    if stats.truncated:
        stats.notes.append(
            f"{stats.truncated} document(s) reached the model's {embedder.max_seq_length} "
            "tokens: it reads no further (longer ones were truncated)"
        )


def _start(
    conn: Any, env: Environment, rev: Revision, embedder: LoadedEmbedder, *, restart: bool
) -> tuple[int, checkpoints.Checkpoint, list[catalog.IndexRecord]]:
    """Resume a killed build of this revision with this model, or register a new shadow.

    A new shadow starts at the journal's current position, with writers locked out for the
    moment: every later change is written to it too (dual-write), and is replayed into it.
    Also returns the stale shadows it dropped, whose files the caller removes once this commits.
    """
    store = env.store(rev.index_store)
    # Fail now, not after hours of encoding, if the index cannot be made for this model.
    store.check_spec(rev.index_spec, embedder.dim)
    # No row yet means no change journaled yet; a writer creating one meanwhile only makes the
    # replay start at 0, a superset, so a failed first run need not leave a row behind.
    _, start_seq = docids.lock_alias(conn, rev.alias, create=False)
    building = catalog.find_index(conn, rev.alias, rev.revision, [catalog.State.BUILDING])
    if (
        not restart
        and building is not None
        and (building.fingerprint, building.store) == (embedder.fingerprint, rev.index_store)
    ):
        # The checkpointed vectors came from this model: refuse to add others to them.
        env.check_drift(embedder, building)
        return building.id, checkpoints.checkpoint(conn, building.id), []
    # An unswapped shadow of an earlier run may be stale (the corpus moved on): rebuild it.
    dropped = [
        old
        for old in catalog.indexes(conn, rev.alias)
        if old.revision == rev.revision
        and old.state in (catalog.State.BUILDING, catalog.State.READY)
    ]
    for old in dropped:
        catalog.update_index(conn, old.id, state=catalog.State.DROPPED)
        checkpoints.clear_checkpoint(conn, old.id)
        manifest.drop(conn, old.id)
    index_id = catalog.register_index(
        conn,
        alias=rev.alias,
        revision=rev.revision,
        fingerprint=embedder.fingerprint,
        model=embedder.spec_json,
        dim=embedder.dim,
        factory=rev.index_spec,
        metric=METRIC,
        base_seq=start_seq,
        probe=probes.to_bytes(probes.of(embedder)),
        store=rev.index_store,
    )
    store.create(conn, catalog.get_index(conn, index_id))  # rolled back with the row if it fails
    return index_id, checkpoints.Checkpoint(), dropped


@dataclass(frozen=True)
class _Merged:
    """The corpus read with the journal's changes on top: replayed and carried over."""

    now: Docs  # the corpus read
    tail: journal.Tail  # changes written during the backfill
    plan: carryover.Plan | None  # None: the live index predates manifests
    live: catalog.IndexRecord | None
    upsert_ids: np.ndarray  # everything put into the build after the corpus read
    upsert_sha: np.ndarray
    deleted_ids: np.ndarray

    @property
    def held(self) -> Docs:
        """What the new index holds, by the bookkeeping."""
        return self.now.apply(self.upsert_ids, self.upsert_sha, self.deleted_ids)

    def check(self, conn: Any, alias: str, index_ids: np.ndarray) -> carryover.Result:
        """Coverage of the built index (its own id list) against what it must hold."""
        if self.plan is None:
            assert self.live is not None
            return carryover.unknown(self.live)
        want = self.plan.target.docs
        found = coverage.compare(want, carryover.observed(index_ids, self.held, want))
        return carryover.result(conn, alias, found, self.plan, "were carried over")


def _reconcile(
    env: Environment,
    alias: str,
    index_id: int,
    embedder: LoadedEmbedder,
    build: Build,
    step: int,
) -> _Merged:
    """Put into the build, after the corpus read, the net effect of the changes journaled since
    the shadow started (the replay) and the writes the alias serves that the corpus lacks (the
    carry-over).

    The corpus was read over a span of time, so a document changed meanwhile may have been read in
    its old state: each change after the start position is applied on top, in order. Not
    checkpointed: a resumed run truncates these rows and does both again (they are idempotent).
    """
    with env.engine.connect() as conn:
        read = manifest.load(conn, index_id)
    now = Docs(read.ids[read.has_corpus], read.corpus_sha[read.has_corpus])
    with env.begin() as conn:
        docids.lock_alias(conn, alias, create=False)  # no writer may commit in between
        record = catalog.get_index(conn, index_id)
        live = catalog.live_index(conn, alias)
        tail = journal.tail(conn, alias, index_id, record.base_seq, embedder.dim)
        plan = carryover.plan(conn, alias, live, now, tail.touched_ids)
        carried = plan.upserts if plan else coverage.EMPTY_IDS
        texts = [plan.texts[int(i)] for i in carried] if plan else []
        # The stream set the snippets of these documents back to what it read; restore them.
        docids.describe_docs(
            conn,
            alias,
            np.concatenate([carried, tail.upsert_ids]),
            [text for text, _ in texts] + tail.texts,
            [meta for _, meta in texts] + tail.metas,
        )
    # Writers add this shadow's vectors as they journal; only writes of a writer that had not yet
    # seen the shadow started lack one.
    tail.fill(embedder.encode_documents)
    for start in range(0, len(carried), step):
        chunk = [text for text, _ in texts[start : start + step]]
        vectors = embedder.encode_documents(chunk)
        with env.begin() as conn:
            build.append(conn, carried[start : start + step], vectors, None)
    if len(tail.upsert_ids):
        with env.begin() as conn:
            build.append(conn, tail.upsert_ids, tail.vectors, None)
    hashes = [manifest.content_hash(text) for text in [t for t, _ in texts] + tail.texts]
    deleted = plan.changes.deleted_ids if plan else coverage.EMPTY_IDS
    return _Merged(
        now,
        tail,
        plan,
        live,
        np.concatenate([carried, tail.upsert_ids]),
        np.array(hashes, dtype=np.int64),
        np.concatenate([deleted, tail.deleted_ids]),
    )


def _get(env: Environment, index_id: int) -> catalog.IndexRecord:
    with env.engine.connect() as conn:
        return catalog.get_index(conn, index_id)


def _abandon(env: Environment, index_id: int, build: Build) -> None:
    with env.begin() as conn:
        checkpoints.clear_checkpoint(conn, index_id)
        manifest.drop(conn, index_id)
        catalog.delete_index(conn, index_id)
        build.remove(conn)
