"""Segments: the report's main figures per group of queries, and the groups that regress alone.

A change that averages out can still hit one group of users hard. Each segment with at least
``min_queries`` queries gets its overlap@10 (and, with judgements, recall@10 old and new); its
drop beyond the whole is relative: ``(whole - segment) / whole`` for overlap, and the segment's
relative recall loss minus the whole's for recall. A one-sided Welch test of the segment against
the other queries gives a p-value per segment, Benjamini-Hochberg-adjusted across segments
(Giskard's slice detector does the same); a segment is flagged when its adjusted p-value is at
most ``alpha`` and its drop exceeds ``drop``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special

ALPHA = 0.05


@dataclass(frozen=True)
class SegmentSettings:
    by: str  # the field, or cluster:K
    min_queries: int
    drop: float  # a relative drop beyond the whole that flags a significant segment
    alpha: float = ALPHA


def segments(
    labels: Sequence[str],
    settings: SegmentSettings,
    overlap: np.ndarray | None,
    recall_old: np.ndarray | None = None,
    recall_new: np.ndarray | None = None,
) -> tuple[dict[str, float | None], dict[str, Any]]:
    """The segment metrics and the report's ``segments`` table, from per-query values aligned
    with ``labels``."""
    kept, skipped = groups(labels, settings.min_queries)
    rows: list[dict[str, Any]] = [
        {"label": name, "queries": int(mask.sum())} for name, mask in kept
    ]
    masks = [mask for _, mask in kept]
    significant: dict[str, list[bool]] = {}
    if overlap is not None and len(overlap):
        whole = float(overlap.mean())
        p_values = [_lower_p(overlap[m], overlap[~m]) for m in masks]
        adjusted = benjamini_hochberg(np.array(p_values))
        for row, m, q in zip(rows, masks, adjusted, strict=True):
            mean = float(overlap[m].mean())
            row["overlap_at_10"] = mean
            row["overlap_drop"] = (whole - mean) / whole if whole > 0 else 0.0
            row["overlap_p"] = float(q)
        significant["overlap"] = [bool(q <= settings.alpha) for q in adjusted]
    if recall_old is not None and recall_new is not None and len(recall_old):
        whole = _relative_loss(recall_old, recall_new)
        delta = recall_new - recall_old
        p_values = [_lower_p(delta[m], delta[~m]) for m in masks]
        adjusted = benjamini_hochberg(np.array(p_values))
        for row, m, q in zip(rows, masks, adjusted, strict=True):
            row["recall_at_10_old"] = float(recall_old[m].mean())
            row["recall_at_10_new"] = float(recall_new[m].mean())
            row["recall_drop"] = _relative_loss(recall_old[m], recall_new[m]) - whole
            row["recall_p"] = float(q)
        significant["recall"] = [bool(q <= settings.alpha) for q in adjusted]
    for i, row in enumerate(rows):
        row["flagged"] = any(
            significant[kind][i] and row[f"{kind}_drop"] > settings.drop for kind in significant
        )
    metrics: dict[str, float | None] = {
        "segments": float(len(rows)),
        "segments_flagged": float(sum(row["flagged"] for row in rows)),
    }
    for kind in ("overlap", "recall"):
        if kind not in significant or not rows:
            metrics[f"segment_{kind}_drop"] = None
            continue
        drops = [row[f"{kind}_drop"] for row, s in zip(rows, significant[kind], strict=True) if s]
        metrics[f"segment_{kind}_drop"] = max([0.0, *drops])
    table = {"by": settings.by, "min_queries": settings.min_queries, "segments": rows}
    return metrics, {**table, "skipped": skipped}


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Adjusted p-values (q-values) controlling the false discovery rate across ``p``."""
    n = len(p)
    if n == 0:
        return p
    order = np.argsort(p)
    ranked = p[order] * n / np.arange(1, n + 1)
    # Monotone from the largest p down: q_i = min over j >= i of p_j n / j.
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(q, 1.0)
    return out


def _lower_p(segment: np.ndarray, rest: np.ndarray) -> float:
    """One-sided Welch t-test p-value that the segment's mean is below the rest's."""
    n1, n2 = len(segment), len(rest)
    if n1 < 2 or n2 < 2:
        return 1.0
    m1, m2 = float(segment.mean()), float(rest.mean())
    v1, v2 = float(segment.var(ddof=1)) / n1, float(rest.var(ddof=1)) / n2
    se = v1 + v2
    if se == 0:
        return 0.0 if m1 < m2 else 1.0
    t = (m1 - m2) / np.sqrt(se)
    df = se**2 / ((v1**2 / (n1 - 1) if v1 else 0.0) + (v2**2 / (n2 - 1) if v2 else 0.0))
    return float(special.stdtr(df, t))


def _relative_loss(old: np.ndarray, new: np.ndarray) -> float:
    """1 - new / old of the means: the share of recall lost (0 when old is 0)."""
    before = float(old.mean())
    return 1.0 - float(new.mean()) / before if before > 0 else 0.0


# ---- a dry run's forecast --------------------------------------------------------------------


def groups(
    labels: Sequence[str], min_queries: int
) -> tuple[list[tuple[str, np.ndarray]], list[dict[str, Any]]]:
    """The segments to judge (label, row mask) and those with too few queries."""
    labels_ = np.asarray(labels, dtype=object)
    names, counts = np.unique(labels_, return_counts=True)
    kept = [(str(n), labels_ == n) for n, c in zip(names, counts, strict=True) if c >= min_queries]
    skipped = [
        {"label": str(n), "queries": int(c)}
        for n, c in zip(names, counts, strict=True)
        if c < min_queries
    ]
    return kept, skipped


def weighted(
    kept: Sequence[tuple[str, np.ndarray]],
    weights: np.ndarray,
    overlap: np.ndarray | None,
    recall_old: np.ndarray | None,
    recall_new: np.ndarray | None,
) -> dict[str, float]:
    """One bootstrap replicate's per-segment figures (each query counted ``weights`` times),
    named ``segment[LABEL].FIGURE``: a forecast's intervals come from their replicates."""
    out: dict[str, float] = {}

    def mean(values: np.ndarray, mask: np.ndarray | None = None) -> float:
        w = weights if mask is None else weights[mask]
        v = values if mask is None else values[mask]
        total = w.sum()
        return float(v @ w / total) if total else math.nan

    for label, mask in kept:
        key = f"segment[{label}]."
        if overlap is not None:
            whole, part = mean(overlap), mean(overlap, mask)
            out[key + "overlap_at_10"] = part
            out[key + "overlap_drop"] = (whole - part) / whole if whole > 0 else math.nan
        if recall_old is not None and recall_new is not None:
            old, new = mean(recall_old, mask), mean(recall_new, mask)
            out[key + "recall_at_10_old"], out[key + "recall_at_10_new"] = old, new
            whole_loss = 1 - mean(recall_new) / mean(recall_old) if mean(recall_old) else 0.0
            out[key + "recall_drop"] = (1 - new / old if old else 0.0) - whole_loss
    return out


def forecast_table(
    settings: SegmentSettings,
    kept: Sequence[tuple[str, np.ndarray]],
    skipped: list[dict[str, Any]],
    intervals: Mapping[str, tuple[float | None, float | None, float | None]],
) -> tuple[dict[str, float | None], dict[str, Any]]:
    """The forecast's segment metrics and table from each figure's (value, low, high). A
    segment is flagged when its drop's interval lies wholly above ``drop``; the segment_*_drop
    metrics take the largest drop whose interval excludes 0 (the forecast's significance)."""
    rows: list[dict[str, Any]] = []
    worst: dict[str, list[float]] = {"overlap": [], "recall": []}
    for label, mask in kept:
        row: dict[str, Any] = {"label": label, "queries": int(mask.sum()), "flagged": False}
        for name in (
            "overlap_at_10",
            "overlap_drop",
            "recall_at_10_old",
            "recall_at_10_new",
            "recall_drop",
        ):
            found = intervals.get(f"segment[{label}].{name}")
            if found is None:
                continue
            value, low, high = found
            row[name], row[f"{name}_ci"] = value, [low, high]
            if name.endswith("_drop") and value is not None and low is not None:
                kind = name.removesuffix("_drop")
                if low > 0:
                    worst[kind].append(value)
                if low > settings.drop:
                    row["flagged"] = True
        rows.append(row)
    metrics: dict[str, float | None] = {
        "segments": float(len(rows)),
        "segments_flagged": float(sum(row["flagged"] for row in rows)),
    }
    for kind in ("overlap", "recall"):
        measured = any(f"{kind}_drop" in row for row in rows)
        metrics[f"segment_{kind}_drop"] = max([0.0, *worst[kind]]) if measured else None
    table = {"by": settings.by, "min_queries": settings.min_queries, "segments": rows}
    return metrics, {**table, "skipped": skipped, "forecast": True}
