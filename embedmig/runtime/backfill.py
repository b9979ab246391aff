"""Backfill: stream the corpus through the new embedder into a shadow index, resumably."""

from __future__ import annotations

import hashlib
import heapq
import logging
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedmig.embedders import LoadedEmbedder
from embedmig.errors import SourceError, StoreError
from embedmig.runtime.environment import Environment
from embedmig.script import Revision
from embedmig.sources import Document
from embedmig.store import catalog, files, journal

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
    notes: list[str] = field(default_factory=list)


@dataclass
class Shadow:
    record: catalog.IndexRecord
    index: Any
    sample: list[Document]
    stats: CorpusStats


def batches(
    docs: Iterable[Document], size: int, stats: CorpusStats, sampler: Sampler, skip: int
) -> Iterator[tuple[int, list[Document]]]:
    """Batches of non-empty documents after the first ``skip``, with the count consumed so far.

    Skipped documents still reach the sampler, so a resumed run samples the same queries.
    """
    batch: list[Document] = []
    consumed = 0
    for doc in docs:
        consumed += 1
        sampler.offer(doc)
        if consumed <= skip:
            continue
        if not doc.text.strip():
            stats.skipped_empty += 1
            continue
        batch.append(doc)
        if len(batch) >= size:
            yield consumed, batch
            batch = []
    stats.documents = consumed
    if batch:
        yield consumed, batch


def backfill(env: Environment, rev: Revision, embedder: LoadedEmbedder, sample_size: int) -> Shadow:
    """Build (or resume building) the shadow index of ``rev`` and mark it ready."""
    engine = env.engine
    docs = env.corpus(rev.alias)  # first: a corpus that cannot be opened registers nothing
    with engine.begin() as conn:
        index_id, skip, rows = _start(conn, env, rev, embedder)
    path = env.index_path(rev.alias, index_id, rev.revision)
    spool = files.Spool(path, embedder.dim)
    spool.truncate(rows)
    if skip:
        log.info("resuming backfill of %s at document %d (%d vectors kept)", rev.alias, skip, rows)
    stats = CorpusStats()
    sampler = Sampler(sample_size, env.config.get_int("eval.seed", minimum=0))
    seen_max_len = embedder.max_seq_length
    started, last_log = time.monotonic(), time.monotonic()
    try:
        for consumed, batch in batches(docs, env.checkpoint_every, stats, sampler, skip):
            texts = [doc.text for doc in batch]
            if seen_max_len is not None:
                stats.truncated += _count_truncated(embedder, texts, seen_max_len, env.batch_size)
            vectors = embedder.encode_documents(texts, env.batch_size)
            with engine.begin() as conn:
                ids = catalog.assign_ids(conn, rev.alias, [doc.key for doc in batch], texts)
                spool.append(ids, vectors)
                rows += len(batch)
                catalog.save_checkpoint(conn, index_id, consumed, rows)
            if time.monotonic() - last_log > 10:
                last_log = time.monotonic()
                rate = rows / max(1e-9, last_log - started)
                log.info("backfill %s: %d documents embedded (%.0f/s)", rev.alias, rows, rate)
        if rows == 0:
            raise SourceError(f"the corpus of alias {rev.alias!r} has no non-empty documents")
        streamed = rows
        replayed = _replay(env, rev.alias, index_id, embedder, spool)
        rows += len(replayed.upsert_ids)
    except BaseException:
        # Keep a checkpointed build for the next run to resume; one with nothing durable in it
        # is removed, so a failure on the first batch leaves no trace.
        if rows == 0:
            _abandon(env, index_id, spool)
        raise
    stats.duplicates = streamed - spool.distinct_ids(streamed)
    index = spool.build(
        rev.index_factory,
        seed=env.config.get_int("eval.seed", minimum=0),
        drop=replayed.deleted_ids,
    )
    sha256 = files.save(index, path)
    with engine.begin() as conn:
        catalog.update_index(
            conn,
            index_id,
            state=catalog.READY,
            path=str(path),
            ntotal=int(index.ntotal),
            sha256=sha256,
            base_seq=replayed.last_seq,
        )
        catalog.clear_checkpoint(conn, index_id)
    spool.remove()
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
    if stats.skipped_empty:
        stats.notes.append(f"{stats.skipped_empty} empty document(s) skipped")
    if stats.truncated:
        stats.notes.append(
            f"{stats.truncated} document(s) longer than the model's {seen_max_len} tokens were truncated"
        )
    log.info("backfill %s: %d vectors in index #%d", rev.alias, index.ntotal, index_id)
    return Shadow(_get(env, index_id), index, sampler.documents(), stats)


def _start(
    conn: Any, env: Environment, rev: Revision, embedder: LoadedEmbedder
) -> tuple[int, int, int]:
    """Resume a killed build of this revision with this model, or register a new shadow.

    A new shadow starts at the journal's current position, with writers locked out for the
    moment: every later change is written to it too (dual-write), and is replayed into it.
    """
    _check_writable(env.index_path(rev.alias, 0, rev.revision).parent)
    # No row yet means no change journaled yet; a writer creating one meanwhile only makes the
    # replay start at 0, a superset, so a failed first run need not leave a row behind.
    _, start_seq = catalog.lock_alias(conn, rev.alias, create=False)
    building = catalog.find_index(conn, rev.alias, rev.revision, [catalog.BUILDING])
    if building is not None and building.fingerprint == embedder.fingerprint:
        skip, rows = catalog.checkpoint(conn, building.id)
        return building.id, skip, rows
    # An unswapped shadow of an earlier run may be stale (the corpus moved on): rebuild it.
    for old in catalog.indexes(conn, rev.alias):
        if old.revision == rev.revision and old.state in (catalog.BUILDING, catalog.READY):
            catalog.update_index(conn, old.id, state=catalog.DROPPED)
            catalog.clear_checkpoint(conn, old.id)
            env.remove_index_files(old)
    index_id = catalog.register_index(
        conn,
        alias=rev.alias,
        revision=rev.revision,
        fingerprint=embedder.fingerprint,
        model=embedder.spec_json,
        dim=embedder.dim,
        factory=rev.index_factory,
        metric=files.METRIC,
        base_seq=start_seq,
    )
    # Fail now, not after hours of encoding, if the factory string is not valid for this model.
    files.new_index(embedder.dim, rev.index_factory)
    return index_id, 0, 0


def _replay(
    env: Environment, alias: str, index_id: int, embedder: LoadedEmbedder, spool: files.Spool
) -> journal.Tail:
    """Append the net effect of the changes journaled since the shadow started to its spool.

    The corpus was read over a span of time, so a document changed meanwhile may have been read in
    its old state: each change after the start position is applied on top, in order. Not
    checkpointed: a resumed run truncates these rows and replays again (replay is idempotent).
    """
    with env.engine.begin() as conn:
        catalog.lock_alias(conn, alias, create=False)  # no writer may commit in between
        record = catalog.get_index(conn, index_id)
        tail = journal.tail(conn, alias, index_id, record.base_seq, embedder.dim)
        # The stream set the snippets of changed documents back to what it read; restore them.
        catalog.describe_docs(conn, alias, tail.upsert_ids, tail.texts, tail.metas)
    # Writers add this shadow's vectors as they journal; only writes of a writer that had not yet
    # seen the shadow started lack one.
    tail.fill(lambda texts: embedder.encode_documents(texts, env.batch_size))
    if len(tail.upsert_ids):
        spool.append(tail.upsert_ids, tail.vectors)
    return tail


def _check_writable(folder: Path) -> None:
    """Fail before hours of encoding, not at the first write, if the index folder is unusable."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise StoreError(f"index folder {folder} is not writable: {exc.strerror or exc}") from None


def _get(env: Environment, index_id: int) -> catalog.IndexRecord:
    with env.engine.connect() as conn:
        return catalog.get_index(conn, index_id)


def _abandon(env: Environment, index_id: int, spool: files.Spool) -> None:
    with env.engine.begin() as conn:
        catalog.clear_checkpoint(conn, index_id)
        catalog.delete_index(conn, index_id)
    spool.remove()


def _count_truncated(embedder: LoadedEmbedder, texts: list[str], max_len: int, step: int) -> int:
    """How many texts exceed the model's token limit (the model truncates them silently)."""
    tokenizer = getattr(embedder.model, "tokenizer", None)
    if tokenizer is None or not callable(tokenizer):
        return 0
    count = 0
    # In slices, so the token lists of a whole checkpoint chunk never sit in memory at once.
    for start in range(0, len(texts), step):
        try:
            encoded = tokenizer(texts[start : start + step], truncation=False)["input_ids"]
        except Exception:  # static and custom tokenizers differ; counting is a courtesy, not a must
            return 0
        count += int(np.count_nonzero(np.fromiter(map(len, encoded), dtype=np.int64) > max_len))
    return count
