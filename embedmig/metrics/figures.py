"""The report's figures, built in one place for a measurement and for a forecast.

An upgrade measures per-query values on the full corpus; a dry run forecasts them from a sample
and resamples the queries for its intervals. Both hand the same per-query values to the same
builders, with ``weights``: how many times each query counts (a bootstrap replicate's draw). A
measurement is a forecast with weight 1 on every query. So a metric is added once, and a dry run
reports exactly the names an upgrade does (``tests/test_docs.py``).

Per-query values are keyed as the metrics they average to: ``overlap_at_<k>``,
``jaccard_at_<k>``, ``rbo``, and the judged ``recall_at_10``, ``recall_at_100``, ``mrr_at_10``,
``ndcg_at_10``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from embedmig.metrics import kernels, relevance
from embedmig.metrics.kernels import Sample
from embedmig.metrics.names import OVERLAP_KS, threshold_metric
from embedmig.metrics.relevance import Judgements

Figures = dict[str, float | None]

QRELS_METRICS = ("recall_at_10", "recall_at_100", "mrr_at_10", "ndcg_at_10")
# recall@100 is reported per side only: its delta is not a headline figure.
COMPARED_QRELS = tuple(name for name in QRELS_METRICS if name != "recall_at_100")
_PER_QUERY_QUANTILES = (("p5", 0.05), ("p50", 0.5), ("p95", 0.95))


class Weights:
    """How many times each query counts; None: once each."""

    def __init__(self, weights: np.ndarray | None = None) -> None:
        self.counts = None if weights is None else weights.astype(np.int64)

    def mean(self, values: np.ndarray) -> float | None:
        if self.counts is None:
            return float(np.mean(values)) if np.size(values) else None
        total = self.counts.sum()
        return float(values @ self.counts / total) if total else None

    def repeat(self, values: np.ndarray) -> np.ndarray:
        """Each query's values as many times as it counts (rows for a 2-d array)."""
        if self.counts is None:
            return values
        repeated: np.ndarray = np.repeat(values, self.counts, axis=0)
        return repeated


ONCE = Weights()


def judged_per_query(ids: np.ndarray, judged: Judgements) -> dict[str, np.ndarray]:
    """Each query's judged metrics from its ranked ids (-1 where nothing was found)."""
    rel = relevance.relevance_matrix(ids, judged)
    n_relevant, ideal = relevance.ideal_grades(judged, len(ids), 10)
    return {
        "recall_at_10": relevance.recall_at_k(rel, n_relevant, 10),
        "recall_at_100": relevance.recall_at_k(rel, n_relevant, 100),
        "mrr_at_10": relevance.mrr_at_k(rel, 10),
        "ndcg_at_10": relevance.ndcg_at_k(rel, ideal, 10),
    }


def agreement(per_query: Mapping[str, np.ndarray], weights: Weights = ONCE) -> Figures:
    """How much of the old top lists the new ones keep: overlap@k (mean, p5/p50/p95, share of
    queries below one half), Jaccard@k and rank-biased overlap."""
    out: Figures = {}
    for k in OVERLAP_KS:
        overlap = per_query.get(f"overlap_at_{k}")
        if overlap is None:
            continue
        out[f"overlap_at_{k}"] = weights.mean(overlap)
        # A forecast's per-query overlap can stray out of [0, 1]; a measured one cannot.
        counted = Sample.of(np.clip(weights.repeat(overlap), 0.0, 1.0))
        quantiles = counted.quantiles([q for _, q in _PER_QUERY_QUANTILES])
        for (label, _), value in zip(_PER_QUERY_QUANTILES, quantiles, strict=True):
            out[f"overlap_at_{k}_{label}"] = num(value) if counted.size else None
        out[f"overlap_at_{k}_below_half"] = (
            float(np.mean(counted.values < 0.5)) if counted.size else None
        )
        out[f"jaccard_at_{k}"] = weights.mean(per_query[f"jaccard_at_{k}"])
    if "rbo" in per_query:
        out["rbo"] = weights.mean(per_query["rbo"])
    elif any(name.startswith("overlap_at_") for name in per_query):
        out["rbo"] = None
    return out


def judged(
    new: Mapping[str, np.ndarray],
    old: Mapping[str, np.ndarray] | None,
    weights: Weights = ONCE,
) -> Figures:
    """The judged metrics of each side (``<metric>_new``, ``<metric>_old``), their deltas, and
    recall@10 new over old (``recall_ratio``)."""
    out: Figures = {}
    for name in QRELS_METRICS:
        if name not in new:
            continue
        out[f"{name}_new"] = weights.mean(new[name])
        if old is not None and name in old:
            out[f"{name}_old"] = weights.mean(old[name])
    for name in COMPARED_QRELS:
        before, after = out.get(f"{name}_old"), out.get(f"{name}_new")
        if f"{name}_old" in out:
            out[f"{name}_delta"] = (
                after - before if before is not None and after is not None else None
            )
    old_recall, new_recall = out.get("recall_at_10_old"), out.get("recall_at_10_new")
    if old_recall and new_recall is not None:
        out["recall_ratio"] = new_recall / old_recall
    return out


def shift(prefix: str, old: Sample | None, new: Sample) -> Figures:
    """How a score distribution moved: means, their difference, KS and Wasserstein-1.
    ``prefix`` is ``score`` (query -> top-k) or ``pair_score`` (random document pairs)."""
    out: Figures = {}
    new_mean = _sample_mean(new)
    if prefix == "score":
        out["score_new_mean"] = new_mean
    if old is None:
        return out
    old_mean = _sample_mean(old)
    if prefix == "score":
        out["score_old_mean"] = old_mean
    if old_mean is not None and new_mean is not None:
        out[f"{prefix}_delta_mean"] = new_mean - old_mean
        if prefix == "score":
            out["score_shift"] = abs(new_mean - old_mean)
    out[f"{prefix}_ks"], out[f"{prefix}_wasserstein"] = kernels.distribution_shift(old, new)
    return out


def thresholds(old: Sample, new: Sample, old_thresholds: Sequence[float]) -> Figures:
    """For each old-model threshold, the new-model score at the same quantile."""
    _, mapped = kernels.threshold_map(old, new, np.array(old_thresholds))
    return {threshold_metric(t): num(m) for t, m in zip(old_thresholds, mapped, strict=True)}


# ---- distributions (the report's tables and plots) ----------------------------------------------


def described(old: Sample | None, new: Sample) -> dict[str, Any]:
    """Summaries of both distributions and their histograms on shared bins."""
    return {
        "old": old.summary() if old is not None else None,
        "new": new.summary(),
        "histogram": kernels.histogram_pair(old or Sample.of(np.empty(0)), new),
    }


def overlap_table(per_query: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Per-query overlap@k summaries and histograms."""
    return {
        str(k): {**kernels.summary(values), "histogram": kernels.histogram(values)}
        for k in OVERLAP_KS
        if (values := per_query.get(f"overlap_at_{k}")) is not None
    }


def threshold_table(
    old: Sample | None, old_thresholds: Sequence[float], figures: Mapping[str, float | None]
) -> list[dict[str, Any]]:
    """The threshold map: each old threshold, the share of old scores at or below it, and the
    new threshold ``figures`` give for it."""
    rows = []
    for t in old_thresholds:
        share = None
        if old is not None and old.size:
            share = float(np.searchsorted(old.values, t, side="right") / old.size)
        rows.append({"old": t, "share": share, "new": figures.get(threshold_metric(t))})
    return rows


def _sample_mean(sample: Sample) -> float | None:
    return float(sample.values.mean(dtype=np.float64)) if sample.size else None


def num(value: Any) -> float | None:
    """A finite float, or None (NaN and inf have no JSON form and mean 'not measured')."""
    return float(value) if value is not None and math.isfinite(float(value)) else None
