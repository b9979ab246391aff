"""The decay watch's figures: live traffic's score distributions now against the baseline kept at
the swap. Pure functions on arrays, like the kernels.

A baseline is the traffic's top-1 and top-k scores summarized by their quantiles (1,001 of them:
a report stays small, and a KS statistic read off them is within 0.001 of the exact one).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from embedmig.metrics import kernels
from embedmig.metrics.kernels import Sample

_QUANTILES = np.linspace(0.0, 1.0, 1001)
# What ``compare`` measures: a watch that sets the baseline has nothing to compare them with.
SHIFT = (
    *(
        f"watch_{part}_{what}"
        for part in ("top1", "topk")
        for what in ("ks", "wasserstein", "mean_delta")
    ),
    "watch_below_threshold_delta",
)


def summary(scores: np.ndarray, thresholds: Mapping[str, float]) -> dict[str, Any]:
    """``scores``: each query's top-k scores, best first (-inf pads a short row).
    ``thresholds``: name -> score cut-off; the share of queries whose best score is below each."""
    top1, topk = Sample.of(scores[:, :1]), Sample.of(scores)
    return {
        "queries": len(scores),
        "k": int(scores.shape[1]),
        "top1": _quantiles(top1),
        "topk": _quantiles(topk),
        "below": {name: _share_below(scores, t) for name, t in thresholds.items()},
    }


def compare(now: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, float | None]:
    """The watch's shift metrics between two summaries (``summary``'s form)."""
    out: dict[str, float | None] = {}
    for part in ("top1", "topk"):
        then, current = _sample(baseline[part]), _sample(now[part])
        ks, w1 = kernels.distribution_shift(then, current)
        out[f"watch_{part}_ks"], out[f"watch_{part}_wasserstein"] = ks, w1
        out[f"watch_{part}_mean_delta"] = (
            float(current.values.mean() - then.values.mean())
            if then.size and current.size
            else None
        )
    deltas = [
        now["below"][name] - share
        for name, share in baseline.get("below", {}).items()
        if now["below"].get(name) is not None and share is not None
    ]
    out["watch_below_threshold_delta"] = max(deltas, key=abs) if deltas else None
    return out


def _quantiles(sample: Sample) -> list[float] | None:
    if not sample.size:
        return None
    return [round(float(v), 6) for v in sample.quantiles(_QUANTILES)]


def _sample(quantiles: list[float] | None) -> Sample:
    return Sample.of(np.array(quantiles or [], dtype=np.float32))


def _share_below(scores: np.ndarray, threshold: float) -> float | None:
    best = scores[:, 0][np.isfinite(scores[:, 0])]
    return float(np.mean(best < threshold)) if best.size else None
