"""The migration report: metrics computed from search results, and its text and JSON forms."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedmig.gates import OVERLAP_KS, Verdict
from embedmig.metrics import kernels

SCHEMA_VERSION = 1
WORST = 5
# What the terminal shows; the JSON report has every metric.
HEADLINE = (
    "overlap_at_10",
    "overlap_at_10_p5",
    "overlap_at_10_below_half",
    "jaccard_at_10",
    "overlap_at_100",
    "score_delta_mean",
    "score_ks",
    "score_wasserstein",
    "recall_at_10_old",
    "recall_at_10_new",
    "recall_ratio",
    "ndcg_at_10_old",
    "ndcg_at_10_new",
    "ndcg_delta",
)


@dataclass(frozen=True)
class Results:
    """Top-K ids and scores of one model for every evaluation query (rows aligned across models)."""

    ids: np.ndarray
    scores: np.ndarray


@dataclass
class Report:
    alias: str
    revision: str
    old_model: str | None
    new_model: str
    dry_run: bool
    corpus_size: int
    query_source: str
    n_queries: int
    k: int
    metrics: dict[str, float | None]
    distributions: dict[str, Any]
    worst: list[dict[str, Any]] = field(default_factory=list)
    verdict: Verdict | None = None
    notes: list[str] = field(default_factory=list)

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
                "dry_run": self.dry_run,
                "corpus_size": self.corpus_size,
                "query_source": self.query_source,
                "n_queries": self.n_queries,
                "k": self.k,
                "verdict": verdict,
                "metrics": self.metrics,
                "distributions": self.distributions,
                "worst_queries": self.worst,
                "notes": self.notes,
            }
        )
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def render_text(self) -> str:
        lines: list[str] = []
        mode = "dry run" if self.dry_run else "upgrade"
        verdict = self.verdict.label.upper() if self.verdict and self.verdict.checks else "NO GATES"
        lines.append(f"{verdict}  {self.alias} @ {self.revision} ({mode})")
        lines.append(f"  old: {self.old_model or '(none: first index of the alias)'}")
        lines.append(f"  new: {self.new_model}")
        lines.append(
            f"  {self.corpus_size} documents, {self.n_queries} queries ({self.query_source}), k={self.k}"
        )
        if self.verdict is not None:
            for check in self.verdict.checks:
                lines.append(f"  gate {check.describe()}")
        shown = [(n, self.metrics[n]) for n in HEADLINE if self.metrics.get(n) is not None]
        if shown:
            lines.append("  metrics:")
            for name, value in shown:
                lines.append(f"    {name:<28} {value:8.4f}")
        if self.worst:
            lines.append(f"  most affected queries (overlap@{self.k}):")
            for row in self.worst:
                lines.append(f"    {row['overlap']:.2f}  {_clip(row['query'], 70)}")
                lines.append(f"          old: {', '.join(row['old_top'])}")
                lines.append(f"          new: {', '.join(row['new_top'])}")
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)


def compute(
    old: Results | None,
    new: Results,
    *,
    k: int,
    candidates: int,
    relevance: Mapping[int, Mapping[int, int]] | None,
) -> tuple[dict[str, float | None], dict[str, Any]]:
    """Gateable metrics and distributions from aligned search results.

    ``candidates`` is how many documents a query can retrieve (its own row excluded): overlap at a
    k beyond it would count missing hits as changes, so it is not reported.
    """
    metrics: dict[str, float | None] = {}
    distributions: dict[str, Any] = {}
    new_scores = new.scores[:, :k]
    distributions["scores_new"] = kernels.summary(new_scores)
    if old is not None:
        old_scores = old.scores[:, :k]
        distributions["scores_old"] = kernels.summary(old_scores)
        for depth in OVERLAP_KS:
            if depth > candidates or depth > old.ids.shape[1]:
                continue
            overlap = kernels.overlap_at_k(old.ids, new.ids, depth)
            stats = kernels.summary(overlap)
            metrics[f"overlap_at_{depth}"] = stats["mean"]
            metrics[f"overlap_at_{depth}_p5"] = stats["p5"]
            metrics[f"overlap_at_{depth}_p50"] = stats["p50"]
            metrics[f"overlap_at_{depth}_below_half"] = _mean(overlap < 0.5)
            metrics[f"jaccard_at_{depth}"] = _mean(kernels.jaccard_at_k(old.ids, new.ids, depth))
            distributions[f"overlap_at_{depth}"] = {
                **stats,
                "histogram": kernels.histogram(overlap),
            }
        old_mean = distributions["scores_old"]["mean"]
        new_mean = distributions["scores_new"]["mean"]
        if old_mean is not None and new_mean is not None:
            metrics["score_delta_mean"] = new_mean - old_mean
            metrics["score_shift"] = abs(new_mean - old_mean)
        metrics["score_ks"] = kernels.ks_statistic(old_scores, new_scores)
        metrics["score_wasserstein"] = kernels.wasserstein_1(old_scores, new_scores)
    if relevance is not None:
        sides = {"new": new} if old is None else {"old": old, "new": new}
        n = new.ids.shape[0]
        n_relevant = np.array(
            [sum(1 for g in relevance.get(i, {}).values() if g > 0) for i in range(n)],
            dtype=np.float64,
        )
        ideal = np.zeros((n, 10))
        for i in range(n):
            grades = sorted((g for g in relevance.get(i, {}).values() if g > 0), reverse=True)[:10]
            ideal[i, : len(grades)] = grades
        for side, results in sides.items():
            rel = kernels.relevance_matrix(results.ids, relevance)
            metrics[f"recall_at_10_{side}"] = _mean(kernels.recall_at_k(rel, n_relevant, 10))
            metrics[f"ndcg_at_10_{side}"] = _mean(kernels.ndcg_at_k(rel, ideal, 10))
            metrics[f"mrr_at_10_{side}"] = _mean(kernels.mrr_at_k(rel, 10))
        if old is not None:
            r_old, r_new = metrics["recall_at_10_old"], metrics["recall_at_10_new"]
            if r_old and r_new is not None:
                metrics["recall_ratio"] = r_new / r_old
            n_old, n_new = metrics["ndcg_at_10_old"], metrics["ndcg_at_10_new"]
            if n_old is not None and n_new is not None:
                metrics["ndcg_delta"] = n_new - n_old
    return metrics, distributions


def worst_queries(
    old: Results,
    new: Results,
    k: int,
    texts: Sequence[str],
    keys_of: Mapping[int, str],
) -> list[dict[str, Any]]:
    """The queries whose top-k changed most, with both top-5 lists by document key."""
    overlap = kernels.overlap_at_k(old.ids, new.ids, k)
    rows = np.argsort(overlap, kind="stable")[:WORST]

    def top(ids: np.ndarray) -> list[str]:
        return [keys_of.get(int(i), f"#{int(i)}") for i in ids[:5] if i >= 0]

    return [
        {
            "query": texts[row],
            "overlap": float(overlap[row]),
            "old_top": top(old.ids[row]),
            "new_top": top(new.ids[row]),
        }
        for row in rows
    ]


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if np.size(values) else None


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


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
