"""A dry run's evaluation: forecast what ``upgrade`` will measure on the full corpus.

The old side is exact: the live index holds every document's old vector, so the old model's
query vectors search it whole (nothing is embedded with the old model but the queries). The new
side is estimated from the sample by ``metrics.forecast``. The report has the figures of the
upgrade's report, each with a 95% interval (``<metric>_ci_low`` / ``_ci_high``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedmig.embedders import LoadedEmbedder
from embedmig.gates import DEFAULT_THRESHOLDS, OVERLAP_KS, threshold_metric
from embedmig.metrics import forecast as fc
from embedmig.metrics import kernels
from embedmig.metrics import report as rpt
from embedmig.migrate import evaluate as ev
from embedmig.sources import Document
from embedmig.store import files

# Figures a sample cannot forecast per query with any confidence are left out of the report.
_PER_QUERY_QUANTILES = (("p5", 0.05), ("p50", 0.5), ("p95", 0.95))


@dataclass(frozen=True)
class LiveSide:
    """The old model and the live index it built, with the live ids of the sampled documents."""

    embedder: LoadedEmbedder
    index: Any
    live_ids: Mapping[str, int]


@dataclass(frozen=True)
class SampleDocs:
    """What the dry run embedded with the new model: a uniform sample of the corpus plus the
    judged documents of the queries (embedded with certainty), out of ``population``."""

    uniform: Sequence[Document]
    judged: Sequence[Document]
    population: int


def run(
    *,
    alias: str,
    revision: str,
    new: LoadedEmbedder,
    old: LiveSide | None,
    sample: SampleDocs,
    columns: Mapping[str, int],
    queries: ev.QuerySet,
    settings: rpt.Settings,
    resamples: int,
    pair_docs: int,
    batch_size: int,
    notes: Sequence[str],
) -> rpt.Report:
    """``columns`` maps each embedded document's key to its position (uniform ones first);
    ``queries.judged`` and ``queries.self_ids`` use those positions."""
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def timed(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[f"{name}_s"] = timings.get(f"{name}_s", 0.0) + now - since
        return now

    docs = [*sample.uniform, *sample.judged]
    certain = np.zeros(len(docs), bool)
    certain[len(sample.uniform) :] = True
    t = time.perf_counter()
    doc_vectors = new.encode_documents([d.text for d in docs], batch_size)
    texts = [q.text for q in queries.docs]
    new_queries = new.encode_queries(texts, batch_size)
    old_queries = old.embedder.encode_queries(texts, batch_size) if old else None
    t = timed("encode", t)
    scores = (new_queries @ doc_vectors.T).astype(np.float32)
    if queries.self_ids is not None:
        scores[np.arange(len(texts)), queries.self_ids] = -np.inf
    population = max(sample.population - len(sample.judged), len(sample.uniform))
    rate = len(sample.uniform) / population if population else 1.0
    sampled = fc.SampledScores(scores, certain, min(rate, 1.0), population)
    k = settings.k
    exact = _exact_old(old, old_queries, queries, columns, k) if old else None
    t = timed("search", t)
    forecaster = fc.Forecaster(
        fc.ForecastInput(
            sampled,
            k=k,
            rbo_p=settings.rbo_p,
            judged=queries.judged,
            old_top=exact.top_columns if exact else None,
        )
    )
    thresholds = sorted({*DEFAULT_THRESHOLDS, *settings.thresholds})
    estimate, figures = fc.with_intervals(
        forecaster,
        lambda est, weights: _figures(est, weights, exact, k, thresholds),
        resamples,
        settings.seed,
    )
    figures = {name: _within_range(name, interval) for name, interval in figures.items()}
    metrics: dict[str, float | None] = {}
    for name, interval in figures.items():
        metrics[name] = _num(interval.value)
        metrics[f"{name}_ci_low"], metrics[f"{name}_ci_high"] = (
            _num(interval.low),
            _num(interval.high),
        )
    old_top = exact.scores if exact else None
    distributions = _distributions(estimate, exact, old_top, figures, thresholds, len(texts))
    pair_new = doc_vectors[: min(pair_docs, len(sample.uniform))]
    pair_old = _reconstruct(old, sample.uniform[: len(pair_new)]) if old else None
    _pair_metrics(pair_old, pair_new, metrics, distributions)
    timed("metrics", t)
    timings["total_s"] = time.perf_counter() - started
    return rpt.Report(
        alias=alias,
        revision=revision,
        old_model=old.embedder.spec.describe() if old else None,
        new_model=new.spec.describe(),
        dry_run=True,
        corpus_size=sample.population,
        query_source=queries.source,
        n_queries=len(texts),
        k=k,
        metrics=metrics,
        distributions=distributions,
        notes=list(notes),
        timings=timings,
        forecast=True,
        sample_size=len(docs),
    )


@dataclass(frozen=True)
class _Exact:
    """The old model's exact full-corpus figures."""

    top_columns: np.ndarray  # old top-depth ids as sample columns, -1 where not sampled
    scores: np.ndarray  # old top-k scores
    per_query: dict[str, np.ndarray]  # old judged metrics per query


def _exact_old(
    old: LiveSide,
    old_queries: np.ndarray | None,
    queries: ev.QuerySet,
    columns: Mapping[str, int],
    k: int,
) -> _Exact:
    assert old_queries is not None
    exclude = 1 if queries.self_ids is not None else 0
    depth = max(max(OVERLAP_KS), k)
    scores, ids = files.search(old.index, old_queries, min(depth + exclude, int(old.index.ntotal)))
    column_of_live = {old.live_ids[key]: col for key, col in columns.items() if key in old.live_ids}
    lookup = np.vectorize(lambda i: column_of_live.get(int(i), -1), otypes=[np.int64])
    cols = lookup(ids) if ids.size else ids.astype(np.int64)
    if queries.self_ids is not None:
        # Drop each query's own document, as the upgrade's evaluation does.
        dropped = ev.drop_self(rpt.Results(ids=cols, scores=scores), queries.self_ids)
        cols, scores = dropped.ids, dropped.scores
    cols, scores = cols[:, :depth], scores[:, :depth]
    per_query: dict[str, np.ndarray] = {}
    if queries.judged is not None:
        rel = kernels.relevance_matrix(cols, queries.judged)
        n_relevant, ideal = kernels.ideal_grades(queries.judged, len(cols), 10)
        per_query = {
            "recall_at_10": kernels.recall_at_k(rel, n_relevant, 10),
            "recall_at_100": kernels.recall_at_k(rel, n_relevant, 100),
            "mrr_at_10": kernels.mrr_at_k(rel, 10),
            "ndcg_at_10": kernels.ndcg_at_k(rel, ideal, 10),
        }
    return _Exact(cols, scores[:, :k], per_query)


def _figures(
    est: fc.Estimate,
    weights: np.ndarray,
    exact: _Exact | None,
    k: int,
    thresholds: Sequence[float],
) -> dict[str, float]:
    """The report's metrics from one estimate, each query counted ``weights`` times."""
    total = weights.sum()

    def mean(values: np.ndarray) -> float:
        return float(values @ weights / total) if total else math.nan

    out: dict[str, float] = {}
    per_query = est.per_query
    for name in rpt.QRELS_METRICS:
        if name not in per_query:
            continue
        out[f"{name}_new"] = mean(per_query[name])
        if exact is not None and name in exact.per_query:
            out[f"{name}_old"] = mean(exact.per_query[name])
            if name != "recall_at_100":
                out[f"{name}_delta"] = out[f"{name}_new"] - out[f"{name}_old"]
    if out.get("recall_at_10_old"):
        out["recall_ratio"] = out["recall_at_10_new"] / out["recall_at_10_old"]
    for at in OVERLAP_KS:
        overlap = per_query.get(f"overlap_at_{at}")
        if overlap is None:
            continue
        out[f"overlap_at_{at}"] = mean(overlap)
        out[f"jaccard_at_{at}"] = mean(per_query[f"jaccard_at_{at}"])
        repeated = np.clip(np.repeat(overlap, weights.astype(np.int64)), 0.0, 1.0)
        for label, q in _PER_QUERY_QUANTILES:
            out[f"overlap_at_{at}_{label}"] = float(np.quantile(repeated, q))
        out[f"overlap_at_{at}_below_half"] = float(np.mean(repeated < 0.5))
    if "rbo" in per_query:
        out["rbo"] = mean(per_query["rbo"])
    new_top = kernels.Sample.of(_new_top(est, weights))
    out["score_new_mean"] = _mean(new_top)
    if exact is not None:
        old_top = kernels.Sample.of(np.repeat(exact.scores, weights.astype(np.int64), axis=0))
        out["score_old_mean"] = _mean(old_top)
        out["score_delta_mean"] = out["score_new_mean"] - out["score_old_mean"]
        out["score_shift"] = abs(out["score_delta_mean"])
        ks, w1 = kernels.distribution_shift(old_top, new_top)
        out["score_ks"] = math.nan if ks is None else ks
        out["score_wasserstein"] = math.nan if w1 is None else w1
        _, mapped = kernels.threshold_map(old_top, new_top, np.array(thresholds))
        for threshold, value in zip(thresholds, mapped, strict=True):
            out[threshold_metric(threshold)] = float(value)
    return out


def _new_top(est: fc.Estimate, weights: np.ndarray) -> np.ndarray:
    top: np.ndarray = np.repeat(est.top_scores, weights.astype(np.int64), axis=0)
    return top


def _distributions(
    est: fc.Estimate,
    exact: _Exact | None,
    old_top: np.ndarray | None,
    figures: Mapping[str, fc.Interval],
    thresholds: Sequence[float],
    n_queries: int,
) -> dict[str, Any]:
    new_top = kernels.Sample.of(_new_top(est, np.ones(n_queries)))
    old_sample = kernels.Sample.of(old_top) if old_top is not None else None
    dist: dict[str, Any] = {
        "scores": {
            "old": old_sample.summary() if old_sample is not None else None,
            "new": new_top.summary(),
            "histogram": kernels.histogram_pair(
                old_sample or kernels.Sample.of(np.empty(0)), new_top
            ),
        },
        "intervals": {
            name: [_num(i.low), _num(i.high)] for name, i in figures.items() if math.isfinite(i.low)
        },
    }
    if exact is not None:
        dist["overlap"] = {
            str(at): {
                **kernels.summary(est.per_query[f"overlap_at_{at}"]),
                "histogram": kernels.histogram(est.per_query[f"overlap_at_{at}"]),
            }
            for at in OVERLAP_KS
            if f"overlap_at_{at}" in est.per_query
        }
        dist["threshold_map"] = [
            {
                "old": t,
                "share": None,
                "new": _num(figures[threshold_metric(t)].value),
            }
            for t in thresholds
            if threshold_metric(t) in figures
        ]
        if old_sample is not None and old_sample.size:
            for row in dist["threshold_map"]:
                row["share"] = float(
                    np.searchsorted(old_sample.values, row["old"], side="right") / old_sample.size
                )
    if "recall_at_10" in est.per_query:
        table: dict[str, dict[str, Any]] = {}
        for name in rpt.QRELS_METRICS:
            new = figures.get(f"{name}_new")
            old = figures.get(f"{name}_old")
            delta = figures.get(f"{name}_delta")
            table[name] = {
                "old": _num(old.value) if old else None,
                "new": _num(new.value) if new else None,
                "delta": _num(delta.value) if delta else None,
                "ci": [_num(delta.low), _num(delta.high)] if delta else None,
                "new_ci": [_num(new.low), _num(new.high)] if new else None,
            }
        dist["qrels"] = table
    return dist


def _pair_metrics(
    old: np.ndarray | None,
    new: np.ndarray,
    metrics: dict[str, float | None],
    dist: dict[str, Any],
) -> None:
    """Random document pairs need no extrapolation: the sample is a uniform one."""
    if len(new) < 2:
        return
    new_pairs = kernels.Sample.of(kernels.pair_cosines(new))
    old_pairs = kernels.Sample.of(kernels.pair_cosines(old)) if old is not None else None
    dist["pair_scores"] = {
        "old": old_pairs.summary() if old_pairs is not None else None,
        "new": new_pairs.summary(),
        "histogram": kernels.histogram_pair(old_pairs or kernels.Sample.of(np.empty(0)), new_pairs),
    }
    if old_pairs is not None:
        old_mean, new_mean = dist["pair_scores"]["old"]["mean"], dist["pair_scores"]["new"]["mean"]
        if old_mean is not None and new_mean is not None:
            metrics["pair_score_delta_mean"] = new_mean - old_mean
        metrics["pair_score_ks"], metrics["pair_score_wasserstein"] = kernels.distribution_shift(
            old_pairs, new_pairs
        )


def _reconstruct(old: LiveSide, docs: Sequence[Document]) -> np.ndarray | None:
    """The live index's stored vectors of ``docs`` (None when its factory cannot give them
    back exactly: then the old side of the random-pair background is not reported)."""
    ids = [old.live_ids[d.key] for d in docs if d.key in old.live_ids]
    if len(ids) < 2:
        return None
    try:
        vectors: np.ndarray = old.index.reconstruct_batch(np.array(ids, dtype=np.int64))
    except RuntimeError:
        return None
    return vectors


_SHARES = ("overlap_", "jaccard_", "rbo", "recall_at_", "mrr_", "ndcg_", "score_ks")


def _within_range(name: str, interval: fc.Interval) -> fc.Interval:
    """An interval cut to the values its metric can take (shares lie in [0, 1], their deltas in
    [-1, 1]); a normal interval knows no bounds."""
    if name.endswith("_delta"):
        low, high = -1.0, 1.0
    elif name.startswith(_SHARES) and not name.startswith("score_shift"):
        low, high = 0.0, 1.0
    else:
        return interval
    return fc.Interval(interval.value, max(interval.low, low), min(interval.high, high))


def _mean(sample: kernels.Sample) -> float:
    return float(sample.values.mean(dtype=np.float64)) if sample.size else math.nan


def _num(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)
