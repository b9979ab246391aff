"""Every metric a report can hold and a gate can bound, with what it means: the one list that
measurements, forecasts, renderers and gates read their names from."""

from __future__ import annotations

import re

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
# What an adapter revision's evaluation adds (embedmig.migrate.adapter), each with its interval.
ADAPTER = ("adapter_recall_ratio", "adapter_overlap_at_10", "reembed_recall_at_10")
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
