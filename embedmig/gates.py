"""Quality gates: bounds on report metrics that a swap must respect."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from embedmig.errors import ScriptError
from embedmig.metrics.names import (
    CANARY_PREFIX,
    COVERAGE,
    WATCH_PREFIX,
    is_metric,
)

# Gated at 0 unless a revision bounds them itself: a swap must not silently drop documents, nor
# a document a golden query must keep.
ZERO_BY_DEFAULT = (*COVERAGE, "contract_failures")
WATCH_ZERO_BY_DEFAULT = ("watch_contract_failures",)
# An adapter revision's map must reach this share of a full re-embed's recall@10 unless the
# revision bounds an adapter_* metric itself; unmeasured (no qrels), the gate fails closed.
ADAPTER_MIN_RECALL_RATIO = 0.95


@dataclass(frozen=True)
class Check:
    metric: str
    bound: str  # "min" or "max"
    limit: float
    value: float | None
    # Judged on the pessimistic end of the metric's 95% interval (``Gates(conservative=True)``).
    pessimistic: bool = False

    @property
    def passed(self) -> bool:
        if self.value is None or math.isnan(self.value):
            return False  # a gate on a metric that was not measured fails closed
        return self.value >= self.limit if self.bound == "min" else self.value <= self.limit

    def describe(self) -> str:
        shown = "not measured" if self.value is None else f"{self.value:.4f}"
        op = ">=" if self.bound == "min" else "<="
        mark = "ok" if self.passed else "FAILED"
        end = (" low" if self.bound == "min" else " high") + " end of its interval"
        what = self.metric + (end if self.pessimistic else "")
        return f"{what} = {shown} (needs {op} {self.limit:g}): {mark}"


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

    Each keyword is ``min_`` or ``max_`` followed by a metric name from ``embedmig.metrics.names.METRICS``
    (or ``new_threshold_for_<t>``). ``thresholds=[0.62]`` adds old-model score cut-offs your
    application uses to the report's threshold map.

    The coverage metrics and ``contract_failures`` are bounded at 0 unless named
    (``max_coverage_missing=20`` accepts up to 20 documents the new index cannot carry over); a
    measured value above it fails.

    A dry run forecasts each metric with a 95% interval. By default a gate judges the forecast
    itself; ``conservative=True`` judges the pessimistic end of the interval instead (the low end
    for a ``min_`` bound, the high end for a ``max_`` one) wherever the report has an interval.
    """

    def __init__(
        self, *, thresholds: Iterable[float] = (), conservative: bool = False, **bounds: float
    ) -> None:
        parsed: dict[str, tuple[str, float]] = {}
        for name, limit in bounds.items():
            bound, _, metric = name.partition("_")
            if bound not in ("min", "max") or not is_metric(metric):
                raise ScriptError(
                    f"unknown gate {name!r}: use min_<metric> or max_<metric> with a metric of "
                    f"embedmig.metrics.names.METRICS, e.g. min_overlap_at_10"
                )
            if (
                isinstance(limit, bool)
                or not isinstance(limit, (int, float))
                or not math.isfinite(limit)
            ):
                raise ScriptError(f"gate {name} needs a finite number, got {limit!r}")
            parsed[metric + ":" + bound] = (metric, float(limit))
        self._bounds = parsed
        self.conservative = bool(conservative)
        try:
            self.thresholds = tuple(sorted({float(t) for t in thresholds}))
        except (TypeError, ValueError):
            raise ScriptError(f"Gates thresholds must be numbers, got {thresholds!r}") from None

    def check(
        self,
        metrics: Mapping[str, float | None],
        *,
        forced: bool = False,
        canary: bool | None = None,
        adapter: bool = False,
        watch: bool = False,
    ) -> Verdict:
        """The verdict of every gate; with ``canary=False`` only of those on offline metrics, with
        ``canary=True`` only of those on ``canary_*`` metrics (measured on live traffic). An
        ``adapter`` revision also gets the default adapter gate. ``watch``: only the gates on
        ``watch_*`` metrics (a watch's), which every other check leaves out."""
        checks = []
        for key, (metric, limit) in self._bounds.items():
            if canary is not None and metric.startswith(CANARY_PREFIX) != canary:
                continue
            if metric.startswith(WATCH_PREFIX) != watch:
                continue
            bound = key.rpartition(":")[2]
            end = f"{metric}_ci_{'low' if bound == 'min' else 'high'}"
            pessimistic = self.conservative and metrics.get(end) is not None
            value = metrics.get(end if pessimistic else metric)
            checks.append(Check(metric, bound, limit, value, pessimistic))
        bounded = {check.metric for check in checks}
        defaults = WATCH_ZERO_BY_DEFAULT if watch else () if canary else ZERO_BY_DEFAULT
        for metric in defaults:
            value = metrics.get(metric)
            if metric not in bounded and value is not None:
                checks.append(Check(metric, "max", 0.0, value))
        if (
            adapter
            and not canary
            and not watch
            and not any(m.startswith("adapter_") for m in bounded)
        ):
            metric, end = "adapter_recall_ratio", "adapter_recall_ratio_ci_low"
            pessimistic = self.conservative and metrics.get(end) is not None
            value = metrics.get(end if pessimistic else metric)
            checks.append(Check(metric, "min", ADAPTER_MIN_RECALL_RATIO, value, pessimistic))
        return Verdict(tuple(checks), forced=forced)

    def __bool__(self) -> bool:
        return bool(self._bounds)

    @property
    def on_canary(self) -> bool:
        """Whether a gate names a ``canary_*`` metric (the upgrade then needs ``ctx.canary()``)."""
        return any(metric.startswith(CANARY_PREFIX) for metric, _ in self._bounds.values())

    def bounds(self, metric: str) -> bool:
        return any(name == metric for name, _ in self._bounds.values())

    def bounding(self, metrics: Iterable[str]) -> list[str]:
        """The gates (``min_<metric>``, ``max_<metric>``) that bound one of ``metrics``."""
        wanted = set(metrics)
        return [
            f"{key.rpartition(':')[2]}_{metric}"
            for key, (metric, _) in self._bounds.items()
            if metric in wanted
        ]

    def __repr__(self) -> str:
        args = [
            f"{key.rpartition(':')[2]}_{metric}={limit:g}"
            for key, (metric, limit) in self._bounds.items()
        ]
        if self.thresholds:
            args.append(f"thresholds={list(self.thresholds)}")
        if self.conservative:
            args.append("conservative=True")
        return f"Gates({', '.join(args)})"
