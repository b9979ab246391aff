"""Canaries: the live comparisons searchers record, measured with the report's kernels and gated.

A canary is opened by a revision's ``ctx.canary()`` (see ``MigrationContext.canary``); searchers
mirror to it (``embedmig.serve.mirror``); this module reads what they recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from embedmig.embedders import Embedder
from embedmig.environment import Environment
from embedmig.gates import CANARY_PREFIX, LIVE, Check, Gates, Verdict
from embedmig.metrics import report as rpt
from embedmig.store import catalog, traffic

_NO_TEXT = "(text not kept: searcher.log_text = false)"


@dataclass(frozen=True)
class Measured:
    """A canary's comparison so far: the report (plain metric names) and its gateable metrics."""

    report: rpt.Report
    metrics: dict[str, float | None]  # canary_<metric>, canary_queries, canary_dropped
    source: str  # "live traffic, N queries since <time>"


def measure(env: Environment, canary: traffic.Canary, gates: Gates) -> Measured:
    """Everything searchers mirrored to ``canary``, compared as an evaluation compares."""
    with env.engine.connect() as conn:
        found = traffic.comparisons(conn, canary)
        shadow = catalog.get_index(conn, canary.index_id)
        live = catalog.get_index(conn, canary.live_id) if canary.live_id is not None else None
    config = env.config
    settings = rpt.Settings(
        k=canary.k,
        rbo_p=config.get_float("eval.rbo_p"),
        thresholds=gates.thresholds,
        seed=config.get_int("eval.seed"),
        resamples=config.get_int("eval.resamples"),
    )
    metrics: dict[str, float | None] = {}
    report = rpt.Report(
        alias=canary.alias,
        revision=canary.revision,
        old_model=Embedder.from_json(live.model).describe() if live else None,
        new_model=Embedder.from_json(shadow.model).describe(),
        dry_run=False,
        corpus_size=shadow.ntotal,
        query_source="",
        n_queries=len(found),
        k=canary.k,
        metrics=metrics,
        distributions={},
        live=True,
    )
    if len(found):
        old = rpt.Results(found.old_ids, found.old_scores)
        new = rpt.Results(found.new_ids, found.new_scores)
        computed = rpt.compute(old, new, candidates=shadow.ntotal, settings=settings)
        metrics.update(computed.metrics)
        report.distributions = computed.distributions
        if computed.overlap_at_k is not None:

            def keys_of(ids: set[int]) -> dict[int, str]:
                with env.engine.connect() as conn:
                    described = catalog.describe_ids(conn, canary.alias, ids)
                return {i: doc.key for i, doc in described.items()}

            texts = [text if text is not None else _NO_TEXT for text in found.texts]
            report.worst = rpt.worst_queries(old, new, computed.overlap_at_k, texts, keys_of, None)
    named = gateable(metrics, len(found), canary.dropped)
    metrics.update(named)
    since = f"{canary.opened_at:%Y-%m-%d %H:%M:%S}"
    source = f"live traffic, {len(found):,} queries since {since}"
    report.query_source = source
    report.notes = [
        f"searchers mirror {canary.fraction:.0%} of their queries to shadow index "
        f"#{canary.index_id}; the live answer each user got is compared with the shadow's",
    ]
    if canary.dropped:
        report.notes.append(
            f"{canary.dropped:,} mirrored queries were dropped by busy searchers (queue full)"
        )
    report.verdict = judge(gates, metrics, canary.min_queries, canary=True)
    return Measured(report, named, source)


def gateable(
    metrics: dict[str, float | None], compared: int, dropped: int
) -> dict[str, float | None]:
    """The canary's metrics as gates name them: ``canary_<metric>`` for those live traffic can
    measure, and the counts of queries compared and dropped."""
    named: dict[str, float | None] = {CANARY_PREFIX + name: metrics.get(name) for name in LIVE}
    named["canary_queries"] = float(compared)
    named["canary_dropped"] = float(dropped)
    return named


def judge(
    gates: Gates,
    metrics: dict[str, float | None],
    min_queries: int,
    *,
    forced: bool = False,
    canary: bool | None = None,
) -> Verdict:
    """The gates' verdict (``canary`` as in ``Gates.check``), with the canary's need for
    ``min_queries`` compared queries unless a gate bounds ``canary_queries`` itself."""
    verdict = gates.check(metrics, forced=forced, canary=canary)
    if gates.bounds("canary_queries"):
        return verdict
    needed = Check("canary_queries", "min", float(min_queries), metrics.get("canary_queries"))
    return Verdict((*verdict.checks, needed), forced=forced)


def end(
    conn: Any,
    canary: traffic.Canary,
    status: str,
    *,
    started_at: datetime,
    report: rpt.Report | None = None,
) -> None:
    """Close ``canary`` as ``status`` (closed, abandoned) with its history row, in ``conn``'s
    transaction. A swap closes its canary itself, in the swap's row."""
    traffic.close(conn, canary.id, status)
    catalog.record(
        conn,
        alias=canary.alias,
        revision=canary.revision,
        action="canary",
        status=status,
        started_at=started_at,
        from_index=canary.live_id,
        to_index=canary.index_id,
        verdict=report.verdict.label if report is not None and report.verdict else None,
        metrics=report.to_dict() if report is not None else None,
    )
