"""Evaluation: embed the query sample with both models, search both indexes, build the report."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedmig.embedders import LoadedEmbedder
from embedmig.gates import OVERLAP_KS
from embedmig.metrics import report as rpt
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
    relevance: Mapping[int, Mapping[int, int]] | None = None


def run(
    *,
    alias: str,
    revision: str,
    dry_run: bool,
    old: Side | None,
    new: Side,
    queries: QuerySet,
    k: int,
    batch_size: int,
    keys_of: Callable[[set[int]], Mapping[int, str]],
    notes: Sequence[str] = (),
) -> rpt.Report:
    ntotal = int(new.index.ntotal)
    exclude = 1 if queries.self_ids is not None else 0
    candidates = ntotal - exclude
    depth = max(min(max(max(OVERLAP_KS), k) + exclude, ntotal), 1)
    texts = [doc.text for doc in queries.docs]
    new_results = _search(new, texts, depth, queries.self_ids, batch_size)
    old_results = _search(old, texts, depth, queries.self_ids, batch_size) if old else None
    metrics, distributions = rpt.compute(
        old_results, new_results, k=k, candidates=candidates, relevance=queries.relevance
    )
    worst: list[dict[str, Any]] = []
    if old_results is not None and len(texts) and k <= candidates:
        wanted = {
            int(i) for r in (old_results, new_results) for i in r.ids[:, :5].ravel() if i >= 0
        }
        worst = rpt.worst_queries(old_results, new_results, k, texts, keys_of(wanted))
    return rpt.Report(
        alias=alias,
        revision=revision,
        old_model=old.embedder.spec.describe() if old else None,
        new_model=new.embedder.spec.describe(),
        dry_run=dry_run,
        corpus_size=ntotal,
        query_source=queries.source,
        n_queries=len(texts),
        k=k,
        metrics=metrics,
        distributions=distributions,
        worst=worst,
        notes=list(notes),
    )


def _search(
    side: Side, texts: Sequence[str], depth: int, self_ids: np.ndarray | None, batch_size: int
) -> rpt.Results:
    vectors = side.embedder.encode_queries(texts, batch_size)
    scores, ids = files.search(side.index, vectors, depth)
    if self_ids is not None:
        scores, ids = _drop_self(scores, ids, self_ids)
    return rpt.Results(ids=ids, scores=scores)


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
