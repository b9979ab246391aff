"""Evaluation: embed the query sample with both models, search both indexes, build the report."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any

import faiss
import numpy as np
from threadpoolctl import ThreadpoolController

from embedmig.contracts import Contract, check_known
from embedmig.embedders import LoadedEmbedder
from embedmig.environment import Environment
from embedmig.metrics import contracts as contract_figures
from embedmig.metrics import kernels
from embedmig.metrics import report as rpt
from embedmig.metrics.names import OVERLAP_KS
from embedmig.metrics.relevance import Judgements
from embedmig.metrics.segments import SegmentSettings
from embedmig.migrate import cost
from embedmig.migrate.backfill import Sampler, Shadow
from embedmig.migrate.progress import Meter
from embedmig.migrate.settings import CLUSTER, EvalSettings
from embedmig.monitor import watch
from embedmig.names import blank
from embedmig.script import Revision
from embedmig.sources import Document, Qrels
from embedmig.store import catalog, docids
from embedmig.store.clock import Phases
from embedmig.store.stores import Searchable

_SLICE = 512  # queries per encode + search while evaluating


@dataclass(frozen=True)
class Side:
    embedder: LoadedEmbedder
    index: Searchable


@dataclass(frozen=True)
class QuerySet:
    """Evaluation queries; ``self_ids`` are the ids of queries that are corpus documents."""

    docs: Sequence[Document]
    source: str
    self_ids: np.ndarray | None = None
    judged: Judgements | None = None


@dataclass(frozen=True)
class QuerySource:
    """What a migration evaluates on, read once: the configured queries (a file, env.py or the
    query log) with their judgements, or, when none are configured, sampled corpus documents."""

    docs: Iterable[Document] | None
    qrels: Qrels | None
    from_log: bool
    contracts: Sequence[Contract] | None = None  # golden queries, checked beside the sample

    @classmethod
    def of(cls, env: Environment, alias: str, *, first_index: bool = False) -> QuerySource:
        """``first_index``: an alias's first index has served no traffic, so ``queries = log``
        leaves it to the sampled corpus documents (as the upgrade's early check of the log does)."""
        docs = None if first_index and env.uses_query_log() else env.queries(alias)
        # Judgements apply only to configured queries.
        qrels = env.qrels(alias) if docs is not None else None
        return cls(docs, qrels, env.uses_query_log(), env.contracts(alias))

    def judged_keys(self) -> set[str]:
        """The documents the judgements and the contracts name: a dry run embeds each of them."""
        keys = {key for judged in (self.qrels or {}).values() for key in judged}
        return keys.union(*(c.keys for c in self.contracts or ()))

    def sample(
        self,
        settings: EvalSettings,
        corpus_sample: Sequence[Document],
        ids_of: Mapping[str, int],
        *,
        compared: bool,
    ) -> QuerySet:
        """The seeded query sample, judged where there are qrels; ``ids_of`` gives the ids (or
        sample columns) of documents. Nothing when nothing is ``compared`` (an alias's first
        index without gates) and there are no judgements."""
        if not compared and self.qrels is None:
            return QuerySet([], "none (first index of the alias, no qrels)")
        if self.docs is None:
            docs = [d for d in corpus_sample if d.key in ids_of][: settings.sample]
            self_ids = np.array([ids_of[d.key] for d in docs], dtype=np.int64)
            return QuerySet(docs, "sampled corpus documents", self_ids=self_ids)
        sampler = Sampler(settings.sample, settings.seed)
        for doc in self.docs:
            if not blank(doc.text) and (self.qrels is None or doc.key in self.qrels):
                sampler.offer(doc)
        docs = sampler.documents()
        if self.from_log:
            return QuerySet(docs, "query log: queries searchers served")
        if self.qrels is None:
            return QuerySet(docs, "queries file")
        qrels = self.qrels
        triples = [
            (row, ids_of[key], grade)
            for row, doc in enumerate(docs)
            for key, grade in qrels[doc.key].items()
            if key in ids_of
        ]
        judged = (
            Judgements(*(np.array(column, dtype=np.int64) for column in zip(*triples, strict=True)))
            if triples
            else Judgements.empty()
        )
        return QuerySet(docs, "queries file with qrels", judged=judged)


def evaluate_shadow(
    env: Environment,
    rev: Revision,
    shadow: Shadow,
    new: LoadedEmbedder,
    live: catalog.IndexRecord | None,
    old_embedder: LoadedEmbedder | None,
    queries: QuerySource,
    settings: EvalSettings,
) -> rpt.Report:
    """An upgrade's evaluation: the query sample searched in the live index with the old model
    (``old_embedder``: as the alias serves it) and in the shadow with the new one."""
    alias = rev.alias
    with env.engine.connect() as conn:
        ids_of = docids.lookup_ids(
            conn, alias, {d.key for d in shadow.sample} | queries.judged_keys()
        )
    query_set = queries.sample(
        settings, shadow.sample, ids_of, compared=rev.old is not None or bool(rev.gates)
    )
    old = None
    if live is not None and old_embedder is not None:
        old = Side(old_embedder, env.open_index(live))
    index = shadow.index
    if index is None:  # evaluated before (a canary's shadow): read it back, verified
        index = env.open_index(shadow.record)

    def keys_of(ids: set[int]) -> dict[int, str]:
        with env.engine.connect() as conn:
            described = docids.describe_ids(conn, alias, ids)
        return {i: doc.key for i, doc in described.items()}

    # Nothing is compared for a first index without qrels: no background either.
    background = [d.text for d in shadow.sample[: settings.pair_docs]] if query_set.docs else []
    report = run(
        alias=alias,
        revision=rev.revision,
        old=old,
        new=Side(new, index),
        queries=query_set,
        background=background,
        settings=settings.metrics(rev.gates.thresholds),
        keys_of=keys_of,
        notes=shadow.stats.notes,
        progress=env.progress,
        segment=settings.segment,
    )
    after_the_swap(env, rev, report, queries, Side(new, index), old, settings.k)
    report.timings.update(shadow.stats.seconds)
    report.embedding = cost.spent(
        shadow.stats.usage, new.spec.price(env.settings.price_per_million_tokens)
    )
    # The swap needs only the saved file: free the index now rather than inside the swap.
    shadow.index = None
    return report


def after_the_swap(
    env: Environment,
    rev: Revision,
    report: rpt.Report,
    queries: QuerySource,
    new: Side,
    old: Side | None,
    k: int,
) -> None:
    """What an upgrade's report keeps for after its swap: the golden queries on both sides, and
    the traffic baseline `embedmig watch` compares the traffic after the swap with."""
    if queries.contracts:
        check_contracts(env, rev.alias, report, queries.contracts, new, old)
    thresholds = watch.remapped(rev.gates, report.metrics, first_index=old is None)
    kept = watch.baseline(
        env,
        rev.alias,
        new.embedder,
        new.index.search,
        k,
        thresholds,
    )
    if kept is not None:
        report.distributions["watch_baseline"] = kept


def check_contracts(
    env: Environment,
    alias: str,
    report: rpt.Report,
    contracts: Sequence[Contract],
    new: Side,
    old: Side | None,
) -> None:
    """The golden queries searched on both sides: their metrics and broken ones in ``report``."""
    with env.engine.connect() as conn:
        ids_of = docids.lookup_ids(conn, alias, set().union(*(c.keys for c in contracts)))
    check_known(contracts, ids_of, alias)
    compiled = contract_figures.compile_(contracts, ids_of)
    texts = [c.query for c in contracts]

    def judged(side: Side) -> contract_figures.Judged:
        _, ids = side.index.search(side.embedder.encode_queries(texts), compiled.depth)
        return contract_figures.judge(ids, compiled)

    on_new, on_old = judged(new), judged(old) if old is not None else None
    report.metrics.update(contract_figures.metrics(on_new, on_old))
    report.distributions["contracts"] = contract_figures.section(compiled, on_new, on_old)


def run(
    *,
    alias: str,
    revision: str,
    old: Side | None,
    new: Side,
    queries: QuerySet,
    background: Sequence[str],
    settings: rpt.Settings,
    keys_of: Callable[[set[int]], Mapping[int, str]],
    notes: Sequence[str] = (),
    progress: bool = False,
    segment: SegmentSettings | None = None,
) -> rpt.Report:
    clock = Phases()
    ntotal = int(new.index.ntotal)
    exclude = 1 if queries.self_ids is not None else 0
    candidates = ntotal - exclude
    depth = max(min(max(max(OVERLAP_KS), settings.k) + exclude, ntotal), 1)
    texts = [doc.text for doc in queries.docs]
    meter = Meter(f"evaluate {alias}", len(texts) * (2 if old else 1), bar=progress, unit="queries")
    try:
        new_results, new_vectors = _search(clock, new, texts, depth, meter)
        old_results, old_vectors = (
            _search(clock, old, texts, depth, meter) if old else (None, new_vectors)
        )
    finally:
        meter.close()
    notes = list(notes)
    labels = (
        segment_labels(segment, queries.docs, old_vectors, settings.seed, notes)
        if segment is not None and len(texts)
        else None
    )
    background_new = _encode_background(clock, new, background)
    background_old = _encode_background(clock, old, background) if old else None
    worst: dict[str, list[dict[str, Any]]] = {}
    with clock.phase("metrics"), _one_blas_thread():
        if queries.self_ids is not None:
            new_results = drop_self(new_results, queries.self_ids)
            old_results = drop_self(old_results, queries.self_ids) if old_results else None
        computed = rpt.compute(
            old_results,
            new_results,
            candidates=candidates,
            settings=settings,
            judged=queries.judged,
            pairs_old=kernels.pair_cosines(background_old) if background_old is not None else None,
            pairs_new=kernels.pair_cosines(background_new) if background_new is not None else None,
            segmenting=(labels, segment) if labels is not None and segment is not None else None,
        )
        overlap = computed.overlap_at_k
        if old_results is not None and overlap is not None and len(texts):
            worst = rpt.worst_queries(
                old_results, new_results, overlap, texts, keys_of, queries.judged
            )
    timings = clock.total()
    return rpt.Report(
        alias=alias,
        revision=revision,
        old_model=old.embedder.describe() if old else None,
        new_model=new.embedder.describe(),
        kind=rpt.Kind.UPGRADE,
        corpus_size=ntotal,
        query_source=queries.source,
        n_queries=len(texts),
        k=settings.k,
        metrics=computed.metrics,
        distributions=computed.distributions,
        worst=worst,
        notes=list(notes),
        timings=timings,
    )


def _search(
    clock: Phases, side: Side, texts: Sequence[str], depth: int, meter: Meter
) -> tuple[rpt.Results, np.ndarray]:
    """Every text's top ``depth`` on one side, and the query vectors."""
    found = []
    encoded = []
    # In slices, so the meter moves; each slice is one encode and one FAISS search.
    for start in range(0, max(len(texts), 1), _SLICE):
        part = texts[start : start + _SLICE]
        with clock.phase("encode"):
            vectors = side.embedder.encode_queries(part)
        with clock.phase("search"):
            found.append(side.index.search(vectors, depth))
        encoded.append(vectors)
        meter.update(len(part))
    results = rpt.Results(
        ids=np.concatenate([ids for _, ids in found]),
        scores=np.concatenate([scores for scores, _ in found]),
    )
    return results, np.concatenate(encoded)


def segment_labels(
    segment: SegmentSettings,
    docs: Sequence[Document],
    vectors: np.ndarray,
    seed: int,
    notes: list[str],
) -> list[str] | None:
    """Each query's segment: its ``eval.segment_by`` field (``(none)`` where it has none), or its
    k-means cluster of the old model's query vectors (named by one of its queries)."""
    if not segment.by.startswith(CLUSTER):
        field = segment.by
        return [
            str(d.meta[field]) if d.meta and d.meta.get(field) is not None else "(none)"
            for d in docs
        ]
    clusters = int(segment.by.removeprefix(CLUSTER))
    if len(docs) < clusters:
        notes.append(f"{segment.by}: {len(docs)} queries cannot make {clusters} clusters")
        return None
    data = np.ascontiguousarray(vectors, dtype=np.float32)
    kmeans = faiss.Kmeans(data.shape[1], clusters, niter=20, seed=seed, verbose=False)
    kmeans.train(data)
    _, assigned = kmeans.index.search(data, 1)
    assigned = assigned[:, 0]
    named: dict[int, str] = {}
    for row, cluster in enumerate(assigned):
        named.setdefault(int(cluster), f"cluster {int(cluster)} ({_clip(docs[row].text)})")
    return [named[int(c)] for c in assigned]


def _clip(text: str, width: int = 32) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _encode_background(clock: Phases, side: Side, texts: Sequence[str]) -> np.ndarray | None:
    """The sampled documents under one model: their pair cosines show how alike unrelated
    documents look to it. None when there are fewer than two."""
    if len(texts) < 2:
        return None
    with clock.phase("encode"):
        vectors: np.ndarray = side.embedder.encode_documents(texts)
    return vectors


@contextmanager
def _one_blas_thread() -> Iterator[None]:
    """numpy's BLAS on one thread while the metrics run.

    The metric matrices are small, and right after encoding or searching, the model's and
    FAISS's OpenMP workers still spin on the other core: a second BLAS thread then waits for a
    core, and a 200 x 200 Gram matrix measured 1 ms alone but up to 17 ms there. The limit is
    process-wide (BLAS has no other kind) and lasts the few ms of the metrics.
    """
    with _blas().limit(limits=1):
        yield


@cache
def _blas() -> ThreadpoolController:
    # Finding the loaded BLAS libraries takes a few ms: once per process.
    return ThreadpoolController().select(user_api="blas")


def drop_self(results: rpt.Results, self_ids: np.ndarray) -> rpt.Results:
    """Remove each query's own document from its row, keeping order; rows lose one column."""
    ids, scores = results.ids, results.scores
    is_self = ids == self_ids[:, None]
    # A stable sort on the mask moves the self hit (if any) to the end of its row.
    order = np.argsort(is_self, axis=1, kind="stable")
    ids = np.take_along_axis(ids, order, axis=1)
    scores = np.take_along_axis(scores, order, axis=1)
    # Rows where the document did not find itself drop their last (lowest) hit instead.
    return rpt.Results(ids=ids[:, :-1].copy(), scores=scores[:, :-1].copy())
