"""Quality gates: bounds on report metrics that a swap must respect."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from embedmig.errors import ScriptError

OVERLAP_KS = (1, 10, 100)
DEFAULT_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
_QRELS = "(needs queries + qrels)"

# Every metric a gate can name, with what it means. An evaluation fills the comparison metrics
# (a dry run each with a 95% interval), the backfill the coverage_* ones and a canary the canary_*
# ones below; tests/test_docs.py holds each of them to exactly its share of this table.
METRICS: dict[str, str] = {
    **{
        f"overlap_at_{k}": f"mean share of the old top-{k} kept in the new top-{k}"
        for k in OVERLAP_KS
    },
    **{f"overlap_at_{k}_p5": f"5th percentile of overlap@{k} over queries" for k in OVERLAP_KS},
    **{f"overlap_at_{k}_p50": f"median overlap@{k}" for k in OVERLAP_KS},
    **{f"overlap_at_{k}_p95": f"95th percentile of overlap@{k}" for k in OVERLAP_KS},
    **{
        f"overlap_at_{k}_below_half": f"share of queries with overlap@{k} < 0.5" for k in OVERLAP_KS
    },
    **{f"jaccard_at_{k}": f"mean Jaccard index of the top-{k} sets" for k in OVERLAP_KS},
    "rbo": "mean rank-biased overlap of the top-k lists (extrapolated, p = eval.rbo_p)",
    "score_old_mean": "mean query->top-k cosine score, old model",
    "score_new_mean": "mean query->top-k cosine score, new model",
    "score_delta_mean": "new - old mean query->top-k cosine score",
    "score_shift": "|new - old| mean query->top-k cosine score",
    "score_ks": "Kolmogorov-Smirnov statistic between the query->top-k score distributions",
    "score_wasserstein": "Wasserstein-1 distance between the query->top-k score distributions",
    "pair_score_delta_mean": "new - old mean cosine of random document pairs (background)",
    "pair_score_ks": "Kolmogorov-Smirnov statistic between the random-pair distributions",
    "pair_score_wasserstein": "Wasserstein-1 distance between the random-pair distributions",
    **{
        f"{name}_{side}": f"{label}, {side} model {_QRELS}"
        for name, label in (
            ("recall_at_10", "recall@10"),
            ("recall_at_100", "recall@100"),
            ("mrr_at_10", "MRR@10"),
            ("ndcg_at_10", "nDCG@10"),
        )
        for side in ("old", "new")
    },
    **{
        f"{name}_delta{suffix}": f"{label} new - old{what} {_QRELS}"
        for name, label in (
            ("recall_at_10", "recall@10"),
            ("mrr_at_10", "MRR@10"),
            ("ndcg_at_10", "nDCG@10"),
        )
        for suffix, what in (
            ("", ""),
            ("_ci_low", ", lower end of its bootstrap 95% interval"),
            ("_ci_high", ", upper end of its bootstrap 95% interval"),
        )
    },
    "recall_ratio": f"recall@10 new / old {_QRELS}",
    "adapter_recall_ratio": (
        f"an adapter's recall@10 over a full re-embed's, forecast, with its interval {_QRELS}"
    ),
    "adapter_overlap_at_10": (
        "share of a full re-embed's top-10 (forecast) that an adapter's search finds"
    ),
    "reembed_recall_at_10": f"recall@10 a full re-embed would reach, forecast for an adapter {_QRELS}",
    "coverage_missing": "documents the alias serves that the new index lacks",
    "coverage_resurrected": "documents the new index holds that the alias had deleted",
    "coverage_stale": "documents the new index holds with another text than the alias serves",
    "contract_failures": "golden queries (contracts) whose must_contain documents left their top k",
    "contract_failures_old": "golden queries the old index already breaks",
    "contract_ndcg_at_10": "mean nDCG@10 of the golden queries by their ratings, new model",
    "contract_ndcg_at_10_old": "mean nDCG@10 of the golden queries by their ratings, old model",
}
# The metrics a canary measures again on live queries, as canary_<metric>: those that compare the
# two top-k lists (live traffic has no judgements, and the random-pair background is offline).
CANARY_COMPARED = tuple(
    name for name in METRICS if name.startswith(("overlap_", "jaccard_", "rbo", "score_"))
)
CANARY_PREFIX = "canary_"
METRICS.update(
    {
        "canary_queries": "live queries mirrored to the shadow and compared during the canary",
        "canary_dropped": "mirrored queries searchers dropped (queue full) instead of comparing",
        **{
            CANARY_PREFIX + name: METRICS[name] + ", on live queries mirrored during the canary"
            for name in CANARY_COMPARED
        },
    }
)
COVERAGE = ("coverage_missing", "coverage_resurrected", "coverage_stale")
# What the golden queries (contracts = FILE) add to a report (embedmig.metrics.contracts).
CONTRACT = (
    "contract_failures",
    "contract_failures_old",
    "contract_ndcg_at_10",
    "contract_ndcg_at_10_old",
)
# What eval.segment_by adds (embedmig.metrics.segments).
SEGMENT: dict[str, str] = {
    "segments": "query segments with at least eval.segment_min queries",
    "segments_flagged": (
        "segments whose overlap@10 or recall@10 fell more than eval.segment_drop beyond the "
        "whole, significant after Benjamini-Hochberg"
    ),
    "segment_overlap_drop": (
        "largest relative overlap@10 drop of a significant segment beyond the whole (0: none)"
    ),
    "segment_recall_drop": (
        f"largest relative recall@10 loss of a significant segment beyond the whole's {_QRELS}"
    ),
}
METRICS.update(SEGMENT)
# What `embedmig watch` measures on the live index against the baseline kept at its swap; gated
# only by a watch (an upgrade does not measure them).
WATCH_PREFIX = "watch_"
WATCH: dict[str, str] = {
    "watch_queries": "queries searchers logged since the swap",
    "watch_top1_ks": "KS statistic of the top-1 scores of traffic now against the baseline",
    "watch_top1_wasserstein": "Wasserstein-1 distance of the top-1 scores now against the baseline",
    "watch_top1_mean_delta": "now - baseline mean top-1 score of traffic",
    "watch_topk_ks": "KS statistic of the top-k scores of traffic now against the baseline",
    "watch_topk_wasserstein": "Wasserstein-1 distance of the top-k scores now against the baseline",
    "watch_topk_mean_delta": "now - baseline mean top-k score of traffic",
    "watch_below_threshold_delta": (
        "now - baseline share of queries whose top-1 score is under a remapped threshold "
        "(the largest change over the revision's thresholds)"
    ),
    "watch_contract_failures": "golden queries broken on the live index now",
    "watch_contract_ndcg_at_10_drop": "baseline - now mean nDCG@10 of the golden queries",
    "watch_probe_min_cosine": "lowest probe cosine of the live index's embedder now",
    "watch_reader_skew": "readers flagged: on another index past readers.skew_seconds, silent, refusing",
}
METRICS.update(WATCH)
# Gated at 0 unless a revision bounds them itself: a swap must not silently drop documents, nor
# a document a golden query must keep.
ZERO_BY_DEFAULT = (*COVERAGE, "contract_failures")
WATCH_ZERO_BY_DEFAULT = ("watch_contract_failures",)
# What an adapter revision's evaluation adds (embedmig.migrate.adapter), each with its interval.
ADAPTER = ("adapter_recall_ratio", "adapter_overlap_at_10", "reembed_recall_at_10")
# An adapter revision's map must reach this share of a full re-embed's recall@10 unless the
# revision bounds an adapter_* metric itself; unmeasured (no qrels), the gate fails closed.
ADAPTER_MIN_RECALL_RATIO = 0.95
# The threshold map adds one metric per old-model threshold t: new_threshold_for_<t>, e.g.
# new_threshold_for_0_62, the new-model score at the quantile where the old one had t
# (new_threshold_for_1, new_threshold_for_minus_0_2).
_THRESHOLD_METRIC = re.compile(r"^new_threshold_for_(minus_)?\d+(_\d+)?$")


def threshold_metric(threshold: float) -> str:
    """The metric name of an old-model threshold: digits, ``_`` for the point, ``minus_``."""
    # Positional notation (never 1e-05), at most 6 decimals, no trailing zeros.
    digits = f"{abs(threshold):.6f}".rstrip("0").rstrip(".")
    sign = "minus_" if threshold < 0 and digits != "0" else ""
    return "new_threshold_for_" + sign + digits.replace(".", "_")


def is_metric(name: str) -> bool:
    return name in METRICS or bool(_THRESHOLD_METRIC.match(name))


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

    Each keyword is ``min_`` or ``max_`` followed by a metric name from ``embedmig.gates.METRICS``
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
                    f"embedmig.gates.METRICS, e.g. min_overlap_at_10"
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
