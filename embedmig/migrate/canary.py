"""Canaries: the live comparisons searchers record, measured with the report's kernels and gated.

A canary is opened by a revision's ``ctx.canary()`` (see ``MigrationContext.canary``); searchers
mirror to it (``embedmig.serve.mirror``); this module reads what they recorded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from embedmig.embedders import Embedder
from embedmig.environment import Environment
from embedmig.errors import CanaryOpen, ScriptError, StateError
from embedmig.gates import Check, Gates, Verdict
from embedmig.metrics import report as rpt
from embedmig.metrics.names import CANARY_COMPARED, CANARY_PREFIX
from embedmig.migrate.settings import CanarySettings, EvalSettings
from embedmig.store import catalog, docids, events, traffic

log = logging.getLogger("embedmig")

_NO_TEXT = "(text not kept: searcher.log_text = false)"


@dataclass(frozen=True)
class Measured:
    """A canary's comparison so far: the report (plain metric names) and its gateable metrics."""

    report: rpt.Report
    metrics: dict[str, float | None]  # canary_<metric>, canary_queries, canary_dropped
    source: str  # "live traffic, N queries since <time>"


def measure(
    env: Environment, canary: traffic.Canary, gates: Gates, settings: EvalSettings
) -> Measured:
    """Everything searchers mirrored to ``canary``, compared as an evaluation compares."""
    with env.engine.connect() as conn:
        found = traffic.comparisons(conn, canary)
        shadow = catalog.get_index(conn, canary.index_id)
        live = catalog.get_index(conn, canary.live_id) if canary.live_id is not None else None
    figures = settings.metrics(gates.thresholds, k=canary.k)
    metrics: dict[str, float | None] = {}
    report = rpt.Report(
        alias=canary.alias,
        revision=canary.revision,
        old_model=Embedder.from_json(live.model).describe() if live else None,
        new_model=Embedder.from_json(shadow.model).describe(),
        kind=rpt.Kind.CANARY,
        corpus_size=shadow.ntotal,
        query_source="",
        n_queries=len(found),
        k=canary.k,
        metrics=metrics,
        distributions={},
    )
    if len(found):
        old = rpt.Results(found.old_ids, found.old_scores)
        new = rpt.Results(found.new_ids, found.new_scores)
        computed = rpt.compute(old, new, candidates=shadow.ntotal, settings=figures)
        metrics.update(computed.metrics)
        report.distributions = computed.distributions
        if computed.overlap_at_k is not None:

            def keys_of(ids: set[int]) -> dict[int, str]:
                with env.engine.connect() as conn:
                    described = docids.describe_ids(conn, canary.alias, ids)
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
    named: dict[str, float | None] = {
        CANARY_PREFIX + name: metrics.get(name) for name in CANARY_COMPARED
    }
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
    events.record(
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


def attach(
    env: Environment,
    alias: str,
    revision: str,
    fingerprint: str,
    live_id: int | None,
    started_at: datetime,
) -> tuple[traffic.Canary, catalog.IndexRecord] | None:
    """The open canary of this revision, model and live index, with its shadow (kept current by
    the writers since it opened); an open canary that no longer fits is abandoned. None: the
    upgrade builds its shadow."""
    with env.begin() as conn:
        canary = traffic.open_canary(conn, alias)
        if canary is None:
            return None
        record = catalog.get_index(conn, canary.index_id)
        if (
            canary.revision == revision
            and record.state == catalog.State.READY
            and record.fingerprint == fingerprint
            and canary.live_id == live_id
            and canary.report is not None
        ):
            log.info("continuing the canary of %s on shadow index #%d", alias, record.id)
            return canary, record
        end(conn, canary, traffic.ABANDONED, started_at=started_at)
    log.warning(
        "abandoned the canary of %s @ %s: it no longer matches this upgrade", alias, canary.revision
    )
    return None


def open_on(
    env: Environment,
    report: rpt.Report,
    shadow: catalog.IndexRecord,
    live: catalog.IndexRecord,
    settings: CanarySettings,
    k: int,
    started_at: datetime,
) -> CanaryOpen:
    """Open a canary of ``shadow`` against ``live``, recorded in history with the offline
    ``report``; returns what the upgrade raises to say so."""
    # Both top-k lists must be full: k is at most what either index holds.
    k = max(1, min(k, shadow.ntotal, live.ntotal))
    with env.begin() as conn:
        if traffic.open_canary(conn, report.alias) is not None:
            raise StateError(f"a canary is already open on {report.alias}")
        traffic.start(
            conn,
            alias=report.alias,
            revision=report.revision,
            index_id=shadow.id,
            live_id=live.id,
            fraction=settings.fraction,
            k=k,
            min_queries=settings.min_queries,
            report=report.to_dict(),
        )
        events.record(
            conn,
            alias=report.alias,
            revision=report.revision,
            action="canary",
            status="open",
            started_at=started_at,
            from_index=live.id,
            to_index=shadow.id,
            verdict=report.verdict.label if report.verdict and report.verdict.checks else None,
            metrics=report.to_dict(),
        )
    return CanaryOpen(
        f"canary opened for {report.alias} @ {report.revision}: searchers now mirror "
        f"{settings.fraction:.0%} of their queries to shadow index #{shadow.id}; run "
        f"`embedmig upgrade` again once {settings.min_queries:,} have been compared "
        f"(`embedmig canary {report.alias}` shows the comparison)",
        alias=report.alias,
        compared=0,
        needed=settings.min_queries,
        report=report,
    )


def hold(
    env: Environment,
    canary: traffic.Canary,
    report: rpt.Report,
    gates: Gates,
    settings: EvalSettings,
    *,
    forced: bool,
) -> None:
    """Add the canary's comparison so far to ``report`` and judge it; raises ``CanaryOpen``
    while the swap must wait (too few queries compared, or a canary gate failing, unforced)."""
    measured = measure(env, canary, gates, settings)
    report.metrics.update(measured.metrics)
    report.notes.append(f"canary on {measured.source}")
    report.verdict = judge(gates, report.metrics, canary.min_queries, forced=forced)
    if report.verdict.passed or forced:
        return
    compared = int(measured.metrics["canary_queries"] or 0)
    failures = "; ".join(check.describe() for check in report.verdict.failures())
    raise CanaryOpen(
        f"canary open for {canary.alias} @ {canary.revision}: {compared:,} of "
        f"{canary.min_queries:,} mirrored queries; {failures} "
        f"(`embedmig canary {canary.alias}` shows the comparison)",
        alias=canary.alias,
        compared=compared,
        needed=canary.min_queries,
        report=report,
    )


def show(
    env: Environment,
    alias: str,
    settings: EvalSettings,
    *,
    fraction: float | None = None,
    close: bool = False,
    wait: float = 0.0,
) -> rpt.Report:
    """``embedmig canary``: the open canary's comparison so far, judged by its revision's gates;
    with ``fraction``, searchers mirror that share from now on; with ``close``, it ends without
    a swap (under the alias's lock, recorded in history)."""
    with env.engine.connect() as conn:
        opened = traffic.open_canary(conn, alias)
    if opened is None:
        raise StateError(
            f"no canary is open on alias {alias!r}; a revision opens one with ctx.canary()"
        )
    found = env.scripts.resolve(opened.revision)
    if len(found) != 1:
        raise ScriptError(f"the canary's revision {opened.revision} has no script")
    gates = found[0].gates
    if fraction is not None:
        with env.begin() as conn:
            traffic.set_fraction(conn, opened.id, fraction)
        opened = replace(opened, fraction=fraction)
    measured = measure(env, opened, gates, settings)
    if close:
        with env.lock([alias], "canary", wait), env.begin() as conn:
            end(conn, opened, traffic.CLOSED, started_at=opened.opened_at, report=measured.report)
    return measured.report
