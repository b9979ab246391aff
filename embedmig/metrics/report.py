"""The migration report: metrics computed from search results, and its JSON form.

The JSON form (``Report.to_dict``) is versioned by ``schema_version`` and documented in
``docs/report-schema.md``; ``Report.from_dict`` reads it back, so any recorded report can be
rendered again from history.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from embedmig.gates import Check, Verdict
from embedmig.metrics import figures, kernels, relevance, segments
from embedmig.metrics.figures import QRELS_METRICS
from embedmig.metrics.names import DEFAULT_THRESHOLDS, OVERLAP_KS
from embedmig.metrics.relevance import Judgements
from embedmig.metrics.segments import SegmentSettings

SCHEMA_VERSION = 7
# Reports recorded by earlier versions still read back (version 2 had no forecasts, 3 no coverage,
# 4 no live-traffic reports, 5 no watches; up to 6, booleans said the kind).
_READABLE = (2, 3, 4, 5, 6, 7)


class Kind(StrEnum):
    """What a report is of."""

    UPGRADE = "upgrade"  # an upgrade's measured comparison (an adapter revision's too)
    DRY_RUN = "dry-run"  # a dry run's forecast of it for the full corpus, from a sample
    CANARY = "canary"  # a canary's comparison on live traffic (``embedmig canary``)
    WATCH = "watch"  # a decay watch of the live index on the traffic since its swap


WORST = 5
# What the terminal shows; the JSON report has every metric.
HEADLINE = (
    "overlap_at_10",
    "overlap_at_10_p5",
    "overlap_at_10_below_half",
    "jaccard_at_10",
    "rbo",
    "overlap_at_100",
    "score_delta_mean",
    "score_ks",
    "score_wasserstein",
    "pair_score_delta_mean",
)
# The report's lists of most affected queries (Report.worst keys), with their titles.
WORST_KINDS = (
    ("by_overlap", "lowest overlap"),
    ("by_rank_drop", "largest rank drop of a relevant document"),
)


@dataclass(frozen=True)
class Results:
    """Top-K ids and scores of one model for every evaluation query (rows aligned across models)."""

    ids: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True)
class Settings:
    k: int = 10
    rbo_p: float = 0.9
    thresholds: Sequence[float] = ()
    seed: int = 0
    resamples: int = 1000


@dataclass(frozen=True)
class Computed:
    metrics: dict[str, float | None]
    distributions: dict[str, Any]
    overlap_at_k: np.ndarray | None  # per query at ``Settings.k``: what worst queries rank by


@dataclass
class Report:
    alias: str
    revision: str
    old_model: str | None
    new_model: str
    kind: Kind
    corpus_size: int
    query_source: str
    n_queries: int
    k: int
    metrics: dict[str, float | None]
    distributions: dict[str, Any]
    worst: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    verdict: Verdict | None = None
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    # A dry run forecasts the full corpus (``corpus_size``) from ``sample_size`` documents.
    sample_size: int | None = None
    # What embedding cost (requests, tokens, cache hits, money) and, in a dry run, its forecast.
    embedding: dict[str, Any] = field(default_factory=dict)

    # ---- JSON ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        verdict = None
        if self.verdict is not None:
            verdict = {
                "result": self.verdict.label,
                "forced": self.verdict.forced,
                "checks": [
                    {
                        "metric": c.metric,
                        "bound": c.bound,
                        "limit": c.limit,
                        "value": c.value,
                        "passed": c.passed,
                        "pessimistic": c.pessimistic,
                    }
                    for c in self.verdict.checks
                ],
            }
        data: dict[str, Any] = _json_safe(
            {
                "schema_version": SCHEMA_VERSION,
                "alias": self.alias,
                "revision": self.revision,
                "old_model": self.old_model,
                "new_model": self.new_model,
                "kind": str(self.kind),
                "corpus_size": self.corpus_size,
                "sample_size": self.sample_size,
                "query_source": self.query_source,
                "n_queries": self.n_queries,
                "k": self.k,
                "verdict": verdict,
                "metrics": self.metrics,
                "distributions": self.distributions,
                "worst_queries": self.worst,
                "notes": self.notes,
                "timings": self.timings,
                "embedding": self.embedding,
            }
        )
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Report:
        version = data.get("schema_version")
        if version not in _READABLE:
            raise ValueError(f"report schema_version {version!r} is not one of {_READABLE}")
        verdict = None
        if data.get("verdict") is not None:
            checks = tuple(
                Check(c["metric"], c["bound"], c["limit"], c["value"], c.get("pessimistic", False))
                for c in data["verdict"]["checks"]
            )
            verdict = Verdict(checks, forced=bool(data["verdict"]["forced"]))
        return cls(
            alias=data["alias"],
            revision=data["revision"],
            old_model=data["old_model"],
            new_model=data["new_model"],
            kind=_kind(data),
            corpus_size=data["corpus_size"],
            query_source=data["query_source"],
            n_queries=data["n_queries"],
            k=data["k"],
            metrics=dict(data["metrics"]),
            distributions=dict(data["distributions"]),
            worst=dict(data["worst_queries"]),
            verdict=verdict,
            notes=list(data["notes"]),
            timings=dict(data.get("timings") or {}),
            sample_size=data.get("sample_size"),
            embedding=dict(data.get("embedding") or {}),
        )


def _kind(data: Mapping[str, Any]) -> Kind:
    """The kind of a recorded report; before schema 7, what its booleans said."""
    if "kind" in data:
        return Kind(data["kind"])
    if data.get("watch"):
        return Kind.WATCH
    if data.get("live"):
        return Kind.CANARY
    return Kind.DRY_RUN if data.get("dry_run") else Kind.UPGRADE


def compute(
    old: Results | None,
    new: Results,
    *,
    candidates: int,
    settings: Settings,
    judged: Judgements | None = None,
    pairs_old: np.ndarray | None = None,
    pairs_new: np.ndarray | None = None,
    segmenting: tuple[Sequence[str], SegmentSettings] | None = None,
) -> Computed:
    """Gateable metrics and the distributions behind them, from aligned search results.

    ``candidates`` is how many documents a query can retrieve (its own row excluded): overlap at a
    k beyond it would count missing hits as changes, so it is not reported. ``segmenting``: a
    segment label per query, and the settings of the segment figures.
    """
    k = settings.k
    metrics: dict[str, float | None] = {}
    dist: dict[str, Any] = {}
    # Each distribution is sorted once; summaries, histograms, shifts and the map all read it.
    new_top = kernels.Sample.of(new.scores[:, :k])
    old_top = kernels.Sample.of(old.scores[:, :k]) if old is not None else None
    dist["scores"] = figures.described(old_top, new_top)
    metrics.update(figures.shift("score", old_top, new_top))
    if pairs_new is not None:
        new_pairs = kernels.Sample.of(pairs_new)
        old_pairs = kernels.Sample.of(pairs_old) if pairs_old is not None else None
        dist["pair_scores"] = figures.described(old_pairs, new_pairs)
        if old_pairs is not None:
            metrics.update(figures.shift("pair_score", old_pairs, new_pairs))
    overlap_at_k = None
    per_query: dict[str, np.ndarray] = {}
    if old is not None and old_top is not None:
        per_query, depth = _agreement(old, new, candidates, settings)
        metrics.update(figures.agreement(per_query))
        dist["overlap"] = figures.overlap_table(per_query)
        if depth:
            dist["rbo"] = {"p": settings.rbo_p, "depth": depth}
        overlap_at_k = per_query.get(f"overlap_at_{k}")
        mapped = sorted({*DEFAULT_THRESHOLDS, *settings.thresholds})
        metrics.update(figures.thresholds(old_top, new_top, mapped))
        dist["threshold_map"] = figures.threshold_table(old_top, mapped, metrics)
    judged_new: dict[str, np.ndarray] = {}
    judged_old: dict[str, np.ndarray] | None = None
    if judged is not None:
        judged_new = figures.judged_per_query(new.ids, judged)
        judged_old = figures.judged_per_query(old.ids, judged) if old is not None else None
        found, dist["qrels"] = _qrels_metrics(judged_new, judged_old, settings)
        metrics.update(found)
    if segmenting is not None:
        labels, segment_settings = segmenting
        found, dist["segments"] = segments.segments(
            labels,
            segment_settings,
            per_query.get("overlap_at_10"),
            judged_old.get("recall_at_10") if judged_old is not None else None,
            judged_new.get("recall_at_10"),
        )
        metrics.update(found)
    return Computed(metrics, dist, overlap_at_k)


def _agreement(
    old: Results, new: Results, candidates: int, settings: Settings
) -> tuple[dict[str, np.ndarray], int]:
    """Per-query overlap and Jaccard at every k the results reach, and rank-biased overlap;
    with the depth compared (0: none)."""
    depth = min(old.ids.shape[1], new.ids.shape[1], candidates)
    if depth < 1:
        return {}, 0
    ks = [k for k in OVERLAP_KS if k <= depth]
    wanted = sorted({*ks, settings.k}) if settings.k <= depth else ks
    agree = kernels.agreement(old.ids[:, :depth], new.ids[:, :depth], wanted, settings.rbo_p)
    per_query = {f"overlap_at_{k}": agree.overlap[k] for k in wanted}
    per_query.update({f"jaccard_at_{k}": agree.jaccard[k] for k in wanted})
    if agree.rbo is not None:
        per_query["rbo"] = agree.rbo
    return per_query, depth


def _qrels_metrics(
    new_per_query: dict[str, np.ndarray],
    old_per_query: dict[str, np.ndarray] | None,
    settings: Settings,
) -> tuple[dict[str, float | None], dict[str, dict[str, Any]]]:
    """The metrics against the judgements, with bootstrap intervals of the deltas, and their
    table for the report."""
    metrics = figures.judged(new_per_query, old_per_query)
    if old_per_query is not None:
        compared = figures.COMPARED_QRELS
        deltas = np.stack([new_per_query[name] - old_per_query[name] for name in compared])
        # One set of resamples for all metrics: cheaper, and their intervals are comparable.
        interval = kernels.bootstrap_mean_ci(deltas, settings.resamples, settings.seed)
        for i, name in enumerate(compared):
            low = float(interval[0][i]) if interval else None
            high = float(interval[1][i]) if interval else None
            metrics[f"{name}_delta_ci_low"], metrics[f"{name}_delta_ci_high"] = low, high
    return metrics, qrels_table(metrics)


def qrels_table(metrics: Mapping[str, float | None]) -> dict[str, dict[str, Any]]:
    """The judged metrics as the report's table: old, new, delta and its interval per metric
    (with ``new_ci`` where the new side has an interval, as in a forecast)."""
    table: dict[str, dict[str, Any]] = {}
    for name in QRELS_METRICS:
        low, high = metrics.get(f"{name}_delta_ci_low"), metrics.get(f"{name}_delta_ci_high")
        row: dict[str, Any] = {
            "old": metrics.get(f"{name}_old"),
            "new": metrics.get(f"{name}_new"),
            "delta": metrics.get(f"{name}_delta"),
            "ci": [low, high] if low is not None or high is not None else None,
        }
        if f"{name}_new_ci_low" in metrics:
            row["new_ci"] = [metrics[f"{name}_new_ci_low"], metrics[f"{name}_new_ci_high"]]
        table[name] = row
    return table


def worst_queries(
    old: Results,
    new: Results,
    overlap: np.ndarray,
    texts: Sequence[str],
    keys_of: Callable[[set[int]], Mapping[int, str]],
    judged: Judgements | None,
) -> dict[str, list[dict[str, Any]]]:
    """The queries whose results changed most: lowest ``overlap`` (per query, at k), and (with
    judgements) the largest rank drop of a relevant document; each with both top-5 lists."""
    by_overlap = np.argsort(overlap, kind="stable")[:WORST]
    drops: list[tuple[int, int, int, int]] = []  # (row, doc, old rank, new rank)
    if judged is not None and len(judged.rows):
        relevant = judged.relevant()
        old_rank = relevance.ranks_of(old.ids, relevant.rows, relevant.docs)
        new_rank = relevance.ranks_of(new.ids, relevant.rows, relevant.docs)
        drop = new_rank - old_rank
        # Worst judgement per query, then the queries with the largest drops.
        order = np.lexsort((-drop, relevant.rows))
        first = order[np.r_[True, relevant.rows[order][1:] != relevant.rows[order][:-1]]]
        first = first[drop[first] > 0]
        for j in first[np.argsort(-drop[first], kind="stable")][:WORST]:
            drops.append(
                (int(relevant.rows[j]), int(relevant.docs[j]), int(old_rank[j]), int(new_rank[j]))
            )
    wanted = {
        int(i)
        for r in (old, new)
        for row in [*by_overlap, *(d[0] for d in drops)]
        for i in r.ids[row, :5]
    }
    wanted |= {d[1] for d in drops}
    keys = keys_of({i for i in wanted if i >= 0})

    def top(ids: np.ndarray) -> list[str]:
        return [keys.get(int(i), f"#{int(i)}") for i in ids[:5] if i >= 0]

    def entry(row: int) -> dict[str, Any]:
        return {
            "query": texts[row],
            "overlap": float(overlap[row]),
            "old_top": top(old.ids[row]),
            "new_top": top(new.ids[row]),
        }

    depth = old.ids.shape[1]
    return {
        "by_overlap": [entry(int(row)) for row in by_overlap],
        "by_rank_drop": [
            {
                **entry(row),
                "document": keys.get(doc, f"#{doc}"),
                "old_rank": None if r_old >= depth else r_old + 1,
                "new_rank": None if r_new >= depth else r_new + 1,
            }
            for row, doc, r_old, r_new in drops
        ],
    }


def _json_safe(value: Any) -> Any:
    """NaN and inf have no JSON form: they become null rather than invalid JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value
