"""Evaluation: embed the query sample with both models, search both indexes, build the report."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedmig.embedders import LoadedEmbedder
from embedmig.gates import OVERLAP_KS
from embedmig.metrics import kernels
from embedmig.metrics import report as rpt
from embedmig.metrics.kernels import Judgements
from embedmig.sources import Document
from embedmig.store import files


@dataclass(frozen=True)
class Side:
    embedder: LoadedEmbedder
    index: Any


@dataclass(frozen=True)
class QuerySet:
    """Evaluation queries; ``self_ids`` are the ids of queries that are corpus documents."""

    docs: Sequence[Document]
    source: str
    self_ids: np.ndarray | None = None
    judged: Judgements | None = None


class _Clock:
    """Wall time per phase, so the report can say where evaluation time went."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, phase: str, fn: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        try:
            return fn()
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - started


def run(
    *,
    alias: str,
    revision: str,
    dry_run: bool,
    old: Side | None,
    new: Side,
    queries: QuerySet,
    background: Sequence[str],
    settings: rpt.Settings,
    batch_size: int,
    keys_of: Callable[[set[int]], Mapping[int, str]],
    notes: Sequence[str] = (),
) -> rpt.Report:
    clock = _Clock()
    started = time.perf_counter()
    ntotal = int(new.index.ntotal)
    exclude = 1 if queries.self_ids is not None else 0
    candidates = ntotal - exclude
    depth = max(min(max(max(OVERLAP_KS), settings.k) + exclude, ntotal), 1)
    texts = [doc.text for doc in queries.docs]
    new_results = _search(clock, new, texts, depth, queries.self_ids, batch_size)
    old_results = _search(clock, old, texts, depth, queries.self_ids, batch_size) if old else None
    pairs_new = _background(clock, new, background, batch_size)
    pairs_old = _background(clock, old, background, batch_size) if old else None
    computed: rpt.Computed = clock.run(
        "metrics",
        lambda: rpt.compute(
            old_results,
            new_results,
            candidates=candidates,
            settings=settings,
            judged=queries.judged,
            pairs_old=pairs_old,
            pairs_new=pairs_new,
        ),
    )
    worst: dict[str, list[dict[str, Any]]] = {}
    overlap = computed.overlap_at_k
    if old_results is not None and overlap is not None and len(texts):
        worst = clock.run(
            "metrics",
            lambda: rpt.worst_queries(
                old_results, new_results, overlap, texts, keys_of, queries.judged
            ),
        )
    timings = {f"{phase}_s": seconds for phase, seconds in clock.seconds.items()}
    timings["total_s"] = time.perf_counter() - started
    return rpt.Report(
        alias=alias,
        revision=revision,
        old_model=old.embedder.spec.describe() if old else None,
        new_model=new.embedder.spec.describe(),
        dry_run=dry_run,
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
    clock: _Clock,
    side: Side,
    texts: Sequence[str],
    depth: int,
    self_ids: np.ndarray | None,
    batch_size: int,
) -> rpt.Results:
    vectors = clock.run("encode", lambda: side.embedder.encode_queries(texts, batch_size))
    scores, ids = clock.run("search", lambda: files.search(side.index, vectors, depth))
    if self_ids is not None:
        scores, ids = clock.run("metrics", lambda: _drop_self(scores, ids, self_ids))
    return rpt.Results(ids=ids, scores=scores)


def _background(
    clock: _Clock, side: Side, texts: Sequence[str], batch_size: int
) -> np.ndarray | None:
    """Cosines of all pairs of sampled documents under one model: how alike unrelated documents
    look to it."""
    if len(texts) < 2:
        return None
    vectors = clock.run("encode", lambda: side.embedder.encode_documents(texts, batch_size))
    cosines: np.ndarray = clock.run("metrics", lambda: kernels.pair_cosines(vectors))
    return cosines


def _drop_self(
    scores: np.ndarray, ids: np.ndarray, self_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Remove each query's own document from its row, keeping order; rows lose one column."""
    is_self = ids == self_ids[:, None]
    # A stable sort on the mask moves the self hit (if any) to the end of its row.
    order = np.argsort(is_self, axis=1, kind="stable")
    ids = np.take_along_axis(ids, order, axis=1)
    scores = np.take_along_axis(scores, order, axis=1)
    # Rows where the document did not find itself drop their last (lowest) hit instead.
    return scores[:, :-1].copy(), ids[:, :-1].copy()
