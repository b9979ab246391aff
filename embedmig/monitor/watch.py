"""The decay watch (``embedmig watch``): the live index on the traffic since its swap, against the
baseline kept at the swap, with the golden queries, the probes and the readers.

One shot, for cron or a scheduler: each watch is a history row with its report, the report draws
the trend over the watches of the same live index, and ``watch_*`` gates fail it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from embedmig.config import Config
from embedmig.embedders import Embedder, LoadedEmbedder, probes
from embedmig.embedders.adapted import AdaptedEmbedder
from embedmig.environment import Environment
from embedmig.errors import EmbedderDrift, GateFailed, ScriptError, StateError
from embedmig.gates import Check, Gates, Verdict
from embedmig.metrics import watch as figures
from embedmig.metrics.names import WATCH, threshold_metric
from embedmig.metrics.report import Kind, Report
from embedmig.monitor import status
from embedmig.monitor import verify as verifying
from embedmig.serve.searcher import Searcher
from embedmig.serve.view import IndexView
from embedmig.store import catalog, clock, events, traffic

# The figures each point of the trend keeps (the full report of each watch is in history).
TREND = (
    "watch_queries",
    "watch_top1_ks",
    "watch_top1_mean_delta",
    "watch_topk_ks",
    "watch_below_threshold_delta",
    "watch_contract_failures",
    "watch_probe_min_cosine",
    "watch_reader_skew",
)


@dataclass(frozen=True)
class WatchSettings:
    """``watch.*``: how many logged queries a watch (and the baseline at a swap) searches, and how
    many it needs to measure a shift; the sample's seed is ``eval.seed``."""

    sample: int
    min_queries: int
    seed: int

    @classmethod
    def of(cls, config: Config) -> WatchSettings:
        return cls(
            config.get_int("watch.sample"),
            config.get_int("watch.min_queries"),
            config.get_int("eval.seed"),
        )


def baseline(
    env: Environment,
    alias: str,
    embedder: LoadedEmbedder,
    search: Any,
    k: int,
    thresholds: Mapping[str, float],
) -> dict[str, Any] | None:
    """The traffic baseline of a new live index, kept at its swap: the logged queries (a seeded
    sample of ``watch.sample``) searched by ``search(vectors, k)`` -> (scores, ids). None when
    the log holds fewer than ``watch.min_queries``: the first watch then sets the baseline."""
    settings = WatchSettings.of(env.config)
    with env.engine.connect() as conn:
        texts, _ = traffic.sample_served(
            conn, alias, since=None, limit=settings.sample, seed=settings.seed
        )
    if len(texts) < settings.min_queries:
        return None
    scores = _scores(embedder, search, texts, k)
    return {
        "source": "query log at the swap",
        "at": clock.now().isoformat(),
        "thresholds": dict(thresholds),
        **figures.summary(scores, thresholds),
    }


def remapped(gates: Gates, metrics: Mapping[str, Any], first_index: bool) -> dict[str, float]:
    """The revision's old-model thresholds as the new model's scores (the report's threshold
    map); an alias's first index takes them as they are."""
    out: dict[str, float] = {}
    for t in gates.thresholds:
        name = threshold_metric(t)
        value = t if first_index else metrics.get(name)
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[name] = float(value)
    return out


def watch(env: Environment, alias: str, k: int) -> Report:
    """Watch ``alias`` once: record the watch and return its report; GateFailed (recorded too)
    when a ``watch_*`` gate fails."""
    settings = WatchSettings.of(env.config)
    started = clock.now()
    phases = clock.Phases()
    with phases.phase("read"):
        seen = _Seen.read(env, alias, settings)
    gates, notes = _gates(env, seen.revision)
    recorded = (seen.swap.metrics or {}) if seen.swap is not None else {}
    kept = _baseline(recorded, seen.past, settings.min_queries, notes)
    thresholds = (
        kept["thresholds"]
        if kept is not None
        else remapped(gates, recorded.get("metrics") or {}, recorded.get("old_model") is None)
    )
    metrics: dict[str, float | None] = {name: None for name in WATCH}
    metrics["watch_queries"] = float(seen.total)
    metrics["watch_reader_skew"] = float(len(seen.readers.flagged))
    with phases.phase("open"):
        view, lowest, served_by = _serving(env, alias, seen.live)
    metrics["watch_probe_min_cosine"] = lowest
    distributions: dict[str, Any] = {}
    now: dict[str, Any] | None = None
    if view is None:
        notes.append("the model the alias is queried with drifted: nothing was searched")
    else:
        if seen.texts:
            with phases.phase("search"):
                scores = _scores(view.embedder, view.search, seen.texts, k)
            now = {"thresholds": dict(thresholds), **figures.summary(scores, thresholds)}
        _shift(now, kept, len(seen.texts), settings.min_queries, metrics, notes)
        contracts = env.contracts(alias)
        if contracts:
            with phases.phase("contracts"):
                verified = verifying.verify(env, alias, contracts, view)
            metrics.update(_golden_metrics(verified, recorded))
            distributions["contracts"] = verified.section
    distributions["watch"] = {
        "since": seen.since.isoformat() if seen.since else None,
        "baseline": None if kept is None else {**kept, "top1": None, "topk": None},
        "now": now if kept is None else _light(now),
    }
    distributions["watch_trend"] = [
        {"at": h.finished_at.isoformat(), **_trend_point(h.metrics or {})} for h in seen.past
    ] + [{"at": clock.now().isoformat(), **{n: metrics.get(n) for n in TREND}}]
    report = Report(
        alias=alias,
        revision=seen.revision,
        old_model=None,
        new_model=served_by,
        kind=Kind.WATCH,
        corpus_size=int(seen.live.ntotal),
        query_source="query log since the swap",
        n_queries=len(seen.texts),
        k=k,
        metrics=metrics,
        distributions=distributions,
        verdict=_verdict(gates, metrics, kept is not None, lowest, env.settings.probe_min_cosine),
        notes=notes,
        timings=phases.total(),
    )
    _record(env, report, seen.live, started)
    if not report.verdict or report.verdict.passed:
        return report
    failures = "; ".join(c.describe() for c in report.verdict.failures())
    raise GateFailed(f"watch of {alias} failed: {failures}", report)


@dataclass(frozen=True)
class _Seen:
    """What a watch reads from the history database in one go: the live index, since when it
    serves (its swap, rollback or adapter), the swap's record, the watches of it since, a
    seeded sample of the traffic logged since (and how much there was), and its readers."""

    live: catalog.IndexRecord
    since: datetime | None
    revision: str
    swap: events.HistoryRecord | None
    past: list[events.HistoryRecord]
    texts: list[str]
    total: int
    readers: status.AliasReaders

    @classmethod
    def read(cls, env: Environment, alias: str, settings: WatchSettings) -> _Seen:
        with env.engine.connect() as conn:
            live = catalog.live_index(conn, alias)
            if live is None:
                raise StateError(f"alias {alias!r} has no live index to watch")
            since = events.went_live(conn, alias, live.id)
            revision = catalog.versions(conn).get(alias, live.revision)
            past = [
                h
                for h in reversed(events.history(conn, alias, revision))
                if h.action == "watch"
                and h.to_index == live.id
                and h.metrics
                and (since is None or clock.utc(h.finished_at) >= since)
            ]
            texts, total = traffic.sample_served(
                conn, alias, since=since, limit=settings.sample, seed=settings.seed
            )
            return cls(
                live,
                since,
                revision,
                events.swap_of(conn, alias, live.id, revision),
                past,
                texts,
                total,
                status.survey(conn, alias, status.ReaderSettings.of(env.config)),
            )


def _shift(
    now: dict[str, Any] | None,
    kept: dict[str, Any] | None,
    searched: int,
    min_queries: int,
    metrics: dict[str, float | None],
    notes: list[str],
) -> None:
    """The traffic's shift from the baseline, when both are there and enough was searched;
    else a note saying why not."""
    if now is not None and kept is not None and searched >= min_queries:
        metrics.update(figures.compare(now, kept))
    elif kept is None and searched >= min_queries:
        notes.append("no baseline yet: this watch is the baseline of the next ones")
    elif kept is None:
        notes.append(
            f"no baseline yet: {searched} logged queries since the swap, fewer than "
            f"watch.min_queries ({min_queries}); the first watch with as many sets it"
        )
    else:
        notes.append(
            f"{searched} logged queries since the swap: fewer than watch.min_queries "
            f"({min_queries}), the traffic shift is not measured"
        )


def _verdict(
    gates: Gates,
    metrics: dict[str, float | None],
    has_baseline: bool,
    lowest: float | None,
    min_cosine: float,
) -> Verdict:
    checks = [
        check
        for check in gates.check(metrics, watch=True).checks
        # The watch that sets the baseline has no shift to judge; any later one does.
        if has_baseline or check.metric not in figures.SHIFT
    ]
    if not gates.bounds("watch_probe_min_cosine") and lowest is not None:
        checks.append(Check("watch_probe_min_cosine", "min", min_cosine, lowest))
    return Verdict(tuple(checks))


def _baseline(
    recorded: Mapping[str, Any],
    past: list[events.HistoryRecord],
    min_queries: int,
    notes: list[str],
) -> dict[str, Any] | None:
    """The traffic baseline: kept by the swap's report, else set by the first watch after it
    that searched at least ``min_queries`` logged queries (an empty or thin watch sets none)."""
    kept: dict[str, Any] | None = (recorded.get("distributions") or {}).get("watch_baseline")
    if kept is not None:
        return kept
    for event in past:
        report = event.metrics or {}
        now = (report.get("distributions") or {}).get("watch", {}).get("now")
        if now is not None and (report.get("n_queries") or 0) >= min_queries:
            notes.append("baseline: the first watch after the swap with watch.min_queries queries")
            return dict(now)
    return None


def _golden_metrics(
    verified: verifying.Verified, recorded: Mapping[str, Any]
) -> dict[str, float | None]:
    """The golden queries now, and how far their nDCG@10 fell since the swap's report."""
    then = (recorded.get("metrics") or {}).get("contract_ndcg_at_10")
    ndcg = verified.metrics["contract_ndcg_at_10"]
    return {
        "watch_contract_failures": verified.metrics["contract_failures"],
        "watch_contract_ndcg_at_10_drop": (
            then - ndcg if then is not None and ndcg is not None else None
        ),
    }


def _serving(
    env: Environment, alias: str, live: catalog.IndexRecord
) -> tuple[IndexView | None, float | None, str]:
    """The alias as searchers see it (None when the model it is queried with drifted), that
    model's lowest probe cosine, and its description. The view's own drift check measured the
    probes: reading them again here costs nothing (``probes.of`` keeps them per embedder)."""
    try:
        view = Searcher(env, alias).view  # no search: no heartbeat, no worker to close
    except EmbedderDrift as drift:
        return None, drift.lowest, Embedder.from_json(live.model).describe()
    embedder = view.embedder
    if view.adapter is not None and isinstance(embedder, AdaptedEmbedder):
        lowest = probes.against(view.adapter.probe, view.adapter.dim, embedder.inner)
    else:
        lowest = probes.against(view.record.probe, view.record.dim, embedder)
    return view, lowest, embedder.describe()


def _gates(env: Environment, revision: str) -> tuple[Gates, list[str]]:
    """The gates of the alias's current revision; none if its script is gone."""
    try:
        return env.scripts.get(revision).gates, []
    except ScriptError:
        return Gates(), [f"revision {revision} has no script here: no watch_* gates read"]


def _scores(embedder: LoadedEmbedder, search: Any, texts: list[str], k: int) -> np.ndarray:
    """Each text's top-k scores; a text repeated in the log is embedded once."""
    unique, inverse = np.unique(np.array(texts, dtype=object), return_inverse=True)
    vectors = embedder.encode_queries([str(t) for t in unique])
    scores, _ = search(vectors, k)
    out: np.ndarray = np.asarray(scores)[inverse]
    return out


def _light(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """A summary without its quantiles: only a baseline needs them."""
    return None if summary is None else {**summary, "top1": None, "topk": None}


def _trend_point(report: Mapping[str, Any]) -> dict[str, Any]:
    recorded = report.get("metrics") or {}
    return {name: recorded.get(name) for name in TREND}


def _record(env: Environment, report: Report, live: catalog.IndexRecord, started: Any) -> None:
    assert report.verdict is not None
    with env.engine.begin() as conn:
        events.record(
            conn,
            alias=report.alias,
            revision=report.revision,
            action="watch",
            status="ok" if report.verdict.passed else "gate-failed",
            started_at=started,
            to_index=live.id,
            verdict=report.verdict.label if report.verdict.checks else None,
            metrics=report.to_dict(),
        )
