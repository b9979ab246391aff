"""Quality gates: bounds on report metrics that a swap must respect."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from embedmig.errors import ScriptError

OVERLAP_KS = (1, 10, 100)

# Every metric a gate can name, with what it means; report.py fills exactly these keys.
METRICS: dict[str, str] = {
    **{
        f"overlap_at_{k}": f"mean share of the old top-{k} kept in the new top-{k}"
        for k in OVERLAP_KS
    },
    **{f"overlap_at_{k}_p5": f"5th percentile of overlap@{k} over queries" for k in OVERLAP_KS},
    **{f"overlap_at_{k}_p50": f"median overlap@{k}" for k in OVERLAP_KS},
    **{
        f"overlap_at_{k}_below_half": f"share of queries with overlap@{k} < 0.5" for k in OVERLAP_KS
    },
    **{f"jaccard_at_{k}": f"mean Jaccard index of the top-{k} sets" for k in OVERLAP_KS},
    "score_shift": "|new - old| mean query->top-k cosine score",
    "score_delta_mean": "new - old mean query->top-k cosine score",
    "score_ks": "Kolmogorov-Smirnov statistic between the score distributions",
    "score_wasserstein": "Wasserstein-1 distance between the score distributions",
    "recall_at_10_old": "recall@10 of the old model (needs queries + qrels)",
    "recall_at_10_new": "recall@10 of the new model (needs queries + qrels)",
    "recall_ratio": "recall@10 new / old (needs queries + qrels)",
    "ndcg_at_10_old": "nDCG@10 of the old model (needs queries + qrels)",
    "ndcg_at_10_new": "nDCG@10 of the new model (needs queries + qrels)",
    "ndcg_delta": "nDCG@10 new - old (needs queries + qrels)",
    "mrr_at_10_old": "MRR@10 of the old model (needs queries + qrels)",
    "mrr_at_10_new": "MRR@10 of the new model (needs queries + qrels)",
}


@dataclass(frozen=True)
class Check:
    metric: str
    bound: str  # "min" or "max"
    limit: float
    value: float | None

    @property
    def passed(self) -> bool:
        if self.value is None or math.isnan(self.value):
            return False  # a gate on a metric that was not measured fails closed
        return self.value >= self.limit if self.bound == "min" else self.value <= self.limit

    def describe(self) -> str:
        shown = "not measured" if self.value is None else f"{self.value:.4f}"
        op = ">=" if self.bound == "min" else "<="
        mark = "ok" if self.passed else "FAILED"
        return f"{self.metric} = {shown} (needs {op} {self.limit:g}): {mark}"


@dataclass(frozen=True)
class Verdict:
    checks: tuple[Check, ...]
    forced: bool = False

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def label(self) -> str:
        if self.passed:
            return "pass"
        return "forced" if self.forced else "fail"

    def failures(self) -> list[Check]:
        return [check for check in self.checks if not check.passed]


class Gates:
    """Bounds on metrics: ``Gates(min_overlap_at_10=0.5, max_score_shift=0.15)``.

    Each keyword is ``min_`` or ``max_`` followed by a metric name from ``embedmig.gates.METRICS``.
    """

    def __init__(self, **bounds: float) -> None:
        parsed: dict[str, tuple[str, float]] = {}
        for name, limit in bounds.items():
            bound, _, metric = name.partition("_")
            if bound not in ("min", "max") or metric not in METRICS:
                raise ScriptError(
                    f"unknown gate {name!r}: use min_<metric> or max_<metric> with a metric of "
                    f"{', '.join(sorted(METRICS))}"
                )
            if (
                isinstance(limit, bool)
                or not isinstance(limit, (int, float))
                or not math.isfinite(limit)
            ):
                raise ScriptError(f"gate {name} needs a finite number, got {limit!r}")
            parsed[metric + ":" + bound] = (metric, float(limit))
        self._bounds = parsed

    def check(self, metrics: Mapping[str, float | None], *, forced: bool = False) -> Verdict:
        checks = tuple(
            Check(metric, key.rpartition(":")[2], limit, metrics.get(metric))
            for key, (metric, limit) in self._bounds.items()
        )
        return Verdict(checks, forced=forced)

    def __bool__(self) -> bool:
        return bool(self._bounds)

    def __repr__(self) -> str:
        args = ", ".join(
            f"{key.rpartition(':')[2]}_{metric}={limit:g}"
            for key, (metric, limit) in self._bounds.items()
        )
        return f"Gates({args})"
