"""A dry run's evaluation: forecast what ``upgrade`` will measure on the full corpus.

The old side is exact: the live index holds every document's old vector, so the old model's
query vectors search it whole (nothing is embedded with the old model but the queries). The new
side is estimated from the sample by ``metrics.forecast``. The report has the figures of the
upgrade's report, each with a 95% interval (``<metric>_ci_low`` / ``_ci_high``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedmig.embedders import LoadedEmbedder
from embedmig.errors import ConfigError
from embedmig.gates import Gates
from embedmig.metrics import contracts as contract_figures
from embedmig.metrics import figures, kernels, segments
from embedmig.metrics import forecast as fc
from embedmig.metrics import report as rpt
from embedmig.metrics.intervals import Interval, with_intervals
from embedmig.metrics.names import DEFAULT_THRESHOLDS, OVERLAP_KS
from embedmig.metrics.ranks import SampledScores
from embedmig.metrics.segments import SegmentSettings
from embedmig.migrate import cost
from embedmig.migrate import evaluate as ev
from embedmig.sources import Document
from embedmig.store.clock import Phases
from embedmig.store.stores import Searchable

# Figures a dry run reports as "not forecast" rather than with a confident wrong number
# (benchmarks/README.md, "Dry-run forecasts": their intervals held the upgrade's value in 40-80%
# of seeds at a 10% sample, on both sets and in both directions). Which document ranks first is
# decided by one document, which the sample holds one time in ten; the depth-100 tails hang on
# the few queries that keep almost all or almost none of 100 documents, of which the sample holds
# about ten each.
NOT_FORECAST = (
    "overlap_at_1",
    "overlap_at_1_p5",
    "overlap_at_1_p50",
    "overlap_at_1_p95",
    "overlap_at_1_below_half",
    "jaccard_at_1",
    "overlap_at_100_p5",
    "overlap_at_100_p95",
    "overlap_at_100_below_half",
)


def refuse_gates_not_forecast(gates: Gates, revision: str) -> None:
    """A dry run cannot judge a gate on a figure it does not forecast: ConfigError, before
    anything is embedded."""
    named = gates.bounding(NOT_FORECAST)
    if named:
        raise ConfigError(
            f"revision {revision}: a dry run does not forecast what {', '.join(named)} "
            "bound (a sample cannot see them; see docs/forecast.md): run the upgrade, which "
            "measures them, or drop the gate"
        )


@dataclass(frozen=True)
class LiveSide:
    """The old model and the live index it built, with the live ids of the sampled documents."""

    embedder: LoadedEmbedder
    index: Searchable
    live_ids: Mapping[str, int]


@dataclass(frozen=True)
class Contracts:
    """The golden queries with their documents as sample columns, and as the live index
    answers them now (exact; None for an alias's first index)."""

    compiled: contract_figures.Compiled
    on_old: contract_figures.Judged | None


@dataclass(frozen=True)
class SampleDocs:
    """What the dry run embedded with the new model: a uniform sample of the corpus plus the
    judged documents of the queries (embedded with certainty), out of ``population``."""

    uniform: Sequence[Document]
    judged: Sequence[Document]
    population: int


def run(
    *,
    alias: str,
    revision: str,
    new: LoadedEmbedder,
    old: LiveSide | None,
    sample: SampleDocs,
    columns: Mapping[str, int],
    queries: ev.QuerySet,
    settings: rpt.Settings,
    resamples: int,
    pair_docs: int,
    notes: Sequence[str],
    price: float | None = None,
    contracts: Contracts | None = None,
    segment: SegmentSettings | None = None,
    phases: Phases | None = None,
) -> rpt.Report:
    """``columns`` maps each embedded document's key to its position (uniform ones first);
    ``queries.judged`` and ``queries.self_ids`` use those positions. ``phases`` (a dry run's
    timer, else a new one) gets each phase's seconds: the report's ``timings``."""
    phases = phases if phases is not None else Phases()
    embedded = _Embedded.of(new, old, sample, queries, price, phases)
    texts = [q.text for q in queries.docs]
    k = settings.k
    with phases.phase("search"):
        sampled = embedded.sampled(sample, queries.self_ids)
        exact = _exact_old(old, embedded.old_queries, queries, columns, k) if old else None
    forecaster = fc.Forecaster(
        fc.ForecastInput(
            sampled,
            k=k,
            rbo_p=settings.rbo_p,
            judged=queries.judged,
            old_top=exact.top_columns if exact else None,
        )
    )
    thresholds = sorted({*DEFAULT_THRESHOLDS, *settings.thresholds})
    notes = list(notes)
    labels = None
    if segment is not None and texts:
        old_queries = embedded.old_queries
        labels = ev.segment_labels(
            segment,
            queries.docs,
            old_queries if old_queries is not None else embedded.new_queries,
            settings.seed,
            notes,
        )
    kept, skipped = segments.groups(labels, segment.min_queries) if labels and segment else ([], [])

    def summarize(est: fc.Estimate, weights: np.ndarray) -> dict[str, float]:
        found = _figures(est, weights, exact, k, thresholds)
        if kept:
            found.update(
                segments.weighted(
                    kept,
                    weights,
                    est.per_query.get("overlap_at_10"),
                    exact.per_query.get("recall_at_10") if exact else None,
                    est.per_query.get("recall_at_10"),
                )
            )
        return found

    with phases.phase("forecast"):
        estimate, intervals = with_intervals(forecaster, summarize, resamples, settings.seed)
        metrics, per_segment = _reported(intervals)
        _withhold(metrics, notes)
        distributions = _distributions(estimate, exact, metrics, thresholds)
        if segment is not None and labels is not None:
            found, distributions["segments"] = segments.forecast_table(
                segment, kept, skipped, per_segment
            )
            metrics.update(found)
        pair_new = embedded.docs[: min(pair_docs, len(sample.uniform))]
        pair_old = _reconstruct(old, sample.uniform[: len(pair_new)]) if old else None
        _pair_metrics(pair_old, pair_new, metrics, distributions)
    if contracts is not None:
        _forecast_contracts(
            contracts, new, embedded, sampled, settings.seed, phases, metrics, distributions
        )
    return rpt.Report(
        alias=alias,
        revision=revision,
        old_model=old.embedder.describe() if old else None,
        new_model=new.describe(),
        kind=rpt.Kind.DRY_RUN,
        corpus_size=sample.population,
        query_source=queries.source,
        n_queries=len(texts),
        k=k,
        metrics=metrics,
        distributions=distributions,
        notes=list(notes),
        timings=phases.total(),
        sample_size=len(embedded.docs),
        embedding=embedded.cost,
    )


@dataclass(frozen=True)
class _Embedded:
    """What a dry run embeds: the sample then the judged documents with the new model (``docs``,
    in that order; ``certain`` marks the judged ones), the queries with both models, and what
    the sample's embedding forecasts the upgrade's will cost."""

    docs: np.ndarray
    certain: np.ndarray
    new_queries: np.ndarray
    old_queries: np.ndarray | None
    cost: dict[str, Any]

    @classmethod
    def of(
        cls,
        new: LoadedEmbedder,
        old: LiveSide | None,
        sample: SampleDocs,
        queries: ev.QuerySet,
        price: float | None,
        phases: Phases,
    ) -> _Embedded:
        before = new.usage
        with phases.phase("encode_sample"):
            uniform = new.encode_documents([d.text for d in sample.uniform])
        with phases.phase("encode_judged"):
            judged = new.encode_documents([d.text for d in sample.judged])
        texts = [d.text for d in (*sample.uniform, *sample.judged)]
        spent = cost.forecast(new.usage - before, texts, sample.population, price)
        with phases.phase("encode_queries"):
            asked = [q.text for q in queries.docs]
            new_queries = new.encode_queries(asked)
            old_queries = old.embedder.encode_queries(asked) if old else None
        certain = np.zeros(len(uniform) + len(judged), bool)
        certain[len(uniform) :] = True
        docs = np.concatenate([uniform, judged]) if len(judged) else uniform
        return cls(docs, certain, new_queries, old_queries, spent)

    def sampled(self, sample: SampleDocs, self_ids: np.ndarray | None) -> SampledScores:
        """The queries' new scores against the embedded documents, as a sample of the corpus;
        each query's own document (``self_ids``) left out, as the upgrade's evaluation does."""
        scores = (self.new_queries @ self.docs.T).astype(np.float32)
        if self_ids is not None:
            scores[np.arange(len(scores)), self_ids] = -np.inf
        return SampledScores(scores, self.certain, *_rate(sample))


def _rate(sample: SampleDocs) -> tuple[float, int]:
    """The uniform sample's inclusion rate, and the population it was drawn from."""
    population = max(sample.population - len(sample.judged), len(sample.uniform))
    rate = len(sample.uniform) / population if population else 1.0
    return min(rate, 1.0), population


def _withhold(metrics: dict[str, float | None], notes: list[str]) -> None:
    """The figures a sample cannot see (NOT_FORECAST) lose their forecast and interval."""
    withheld = [name for name in NOT_FORECAST if metrics.get(name) is not None]
    for name in withheld:
        metrics[name] = metrics[f"{name}_ci_low"] = metrics[f"{name}_ci_high"] = None
    if withheld:
        notes.append(
            "not forecast (a sample cannot see them; the upgrade measures them): "
            + ", ".join(withheld)
        )


def _forecast_contracts(
    contracts: Contracts,
    new: LoadedEmbedder,
    embedded: _Embedded,
    sampled: SampledScores,
    seed: int,
    phases: Phases,
    metrics: dict[str, float | None],
    distributions: dict[str, Any],
) -> None:
    """The golden queries forecast from the same sample: their figures and section."""
    with phases.phase("encode_queries"):
        asked = new.encode_queries([c.query for c in contracts.compiled.contracts])
    with phases.phase("forecast"):
        found, likely = contract_figures.forecast(
            (asked @ embedded.docs.T).astype(np.float32),
            embedded.certain,
            sampled.rate,
            sampled.population,
            contracts.compiled,
            seed,
        )
        metrics.update(found)
        if contracts.on_old is not None:
            judged_old = contract_figures.metrics(likely, contracts.on_old)
            metrics.update({n: v for n, v in judged_old.items() if "_old" in n})
        distributions["contracts"] = contract_figures.section(
            contracts.compiled, likely, contracts.on_old
        )


_Bounds = tuple[float | None, float | None, float | None]  # a value and its interval


def _reported(
    intervals: Mapping[str, Interval],
) -> tuple[dict[str, float | None], dict[str, _Bounds]]:
    """The report's metrics (each with ``_ci_low``/``_ci_high``), and the segment figures apart:
    they go to the segments table."""
    metrics: dict[str, float | None] = {}
    per_segment: dict[str, _Bounds] = {}
    for name, found in intervals.items():
        interval = _within_range(name, found)
        value, low, high = (
            figures.num(interval.value),
            figures.num(interval.low),
            figures.num(interval.high),
        )
        if name.startswith("segment["):
            per_segment[name] = (value, low, high)
            continue
        metrics[name] = value
        metrics[f"{name}_ci_low"], metrics[f"{name}_ci_high"] = low, high
    return metrics, per_segment


@dataclass(frozen=True)
class _Exact:
    """The old model's exact full-corpus figures."""

    top_columns: np.ndarray  # old top-depth ids as sample columns, -1 where not sampled
    scores: np.ndarray  # old top-k scores
    per_query: dict[str, np.ndarray]  # old judged metrics per query


def _exact_old(
    old: LiveSide,
    old_queries: np.ndarray | None,
    queries: ev.QuerySet,
    columns: Mapping[str, int],
    k: int,
) -> _Exact:
    assert old_queries is not None
    exclude = 1 if queries.self_ids is not None else 0
    depth = max(max(OVERLAP_KS), k)
    scores, ids = old.index.search(old_queries, depth + exclude)
    column_of_live = {old.live_ids[key]: col for key, col in columns.items() if key in old.live_ids}
    lookup = np.vectorize(lambda i: column_of_live.get(int(i), -1), otypes=[np.int64])
    cols = lookup(ids) if ids.size else ids.astype(np.int64)
    if queries.self_ids is not None:
        # Drop each query's own document, as the upgrade's evaluation does.
        dropped = ev.drop_self(rpt.Results(ids=cols, scores=scores), queries.self_ids)
        cols, scores = dropped.ids, dropped.scores
    cols, scores = cols[:, :depth], scores[:, :depth]
    per_query = figures.judged_per_query(cols, queries.judged) if queries.judged is not None else {}
    return _Exact(cols, scores[:, :k], per_query)


def _figures(
    est: fc.Estimate,
    weights: np.ndarray,
    exact: _Exact | None,
    k: int,
    thresholds: Sequence[float],
) -> dict[str, float]:
    """The report's metrics from one estimate, each query counted ``weights`` times: the
    builders a measurement uses (``metrics.figures``), on forecast per-query values."""
    counted = figures.Weights(weights)
    out: figures.Figures = {}
    if "recall_at_10" in est.drawn:
        out.update(_drawn_judged(est, weights, exact))
    if exact is not None:
        out.update(_drawn_agreement(est, weights))
    new_top = kernels.Sample.of(counted.repeat(est.top_scores))
    old_top = kernels.Sample.of(counted.repeat(exact.scores)) if exact is not None else None
    out.update(figures.shift("score", old_top, new_top))
    if old_top is not None:
        out.update(figures.thresholds(old_top, new_top, thresholds))
    # The bootstrap needs a number for every figure of every replicate.
    return {name: math.nan if value is None else value for name, value in out.items()}


def _drawn_judged(est: fc.Estimate, weights: np.ndarray, exact: _Exact | None) -> figures.Figures:
    """The judged figures read off each query's draws, the old side (exact) beside each draw."""
    draws = est.drawn["recall_at_10"].shape[1]
    new = {name: est.drawn[name].reshape(-1) for name in figures.QRELS_METRICS if name in est.drawn}
    old = (
        {name: np.repeat(values, draws) for name, values in exact.per_query.items()}
        if exact is not None
        else None
    )
    return figures.judged(new, old, figures.Weights(np.repeat(weights, draws)))


def _drawn_agreement(est: fc.Estimate, weights: np.ndarray) -> figures.Figures:
    """The agreement figures read off each query's draws (the forecast's realizations of what
    the upgrade may measure), each query counted ``weights`` times as before."""
    draws = next(iter(est.drawn.values())).shape[1] if est.drawn else 1
    per_draw = {
        name: np.repeat(values[:, None], draws, axis=1).reshape(-1)
        for name, values in est.per_query.items()
        if name == "rbo"
    }
    per_draw.update({name: values.reshape(-1) for name, values in est.drawn.items()})
    return figures.agreement(per_draw, figures.Weights(np.repeat(weights, draws)))


def _distributions(
    est: fc.Estimate,
    exact: _Exact | None,
    metrics: Mapping[str, float | None],
    thresholds: Sequence[float],
) -> dict[str, Any]:
    new_top = kernels.Sample.of(est.top_scores)
    old_top = kernels.Sample.of(exact.scores) if exact is not None else None
    dist: dict[str, Any] = {
        "scores": figures.described(old_top, new_top),
        "intervals": {
            name[: -len("_ci_low")]: [low, metrics.get(f"{name[: -len('_ci_low')]}_ci_high")]
            for name, low in metrics.items()
            if name.endswith("_ci_low") and low is not None
        },
    }
    if exact is not None:
        dist["overlap"] = figures.overlap_table(
            {
                name: values.reshape(-1)
                for name, values in est.drawn.items()
                if name not in NOT_FORECAST  # overlap@1: not forecast
            }
        )
        dist["threshold_map"] = figures.threshold_table(old_top, thresholds, metrics)
    if "recall_at_10" in est.per_query:
        dist["qrels"] = rpt.qrels_table(metrics)
    return dist


def _pair_metrics(
    old: np.ndarray | None,
    new: np.ndarray,
    metrics: dict[str, float | None],
    dist: dict[str, Any],
) -> None:
    """Random document pairs need no extrapolation: the sample is a uniform one."""
    if len(new) < 2:
        return
    new_pairs = kernels.Sample.of(kernels.pair_cosines(new))
    old_pairs = kernels.Sample.of(kernels.pair_cosines(old)) if old is not None else None
    dist["pair_scores"] = figures.described(old_pairs, new_pairs)
    if old_pairs is not None:
        metrics.update(figures.shift("pair_score", old_pairs, new_pairs))


def _reconstruct(old: LiveSide, docs: Sequence[Document]) -> np.ndarray | None:
    """The live index's stored vectors of ``docs`` (None when its factory cannot give them
    back exactly: then the old side of the random-pair background is not reported)."""
    ids = [old.live_ids[d.key] for d in docs if d.key in old.live_ids]
    if len(ids) < 2:
        return None
    try:
        vectors: np.ndarray = old.index.reconstruct_batch(np.array(ids, dtype=np.int64))
    except RuntimeError:
        return None
    return vectors


_SHARES = ("overlap_", "jaccard_", "rbo", "recall_at_", "mrr_", "ndcg_", "score_ks")


def _within_range(name: str, interval: Interval) -> Interval:
    """An interval cut to the values its metric can take (shares lie in [0, 1], their deltas in
    [-1, 1]); a normal interval knows no bounds."""
    if name.endswith("_delta"):
        low, high = -1.0, 1.0
    elif name.startswith(_SHARES) and not name.startswith("score_shift"):
        low, high = 0.0, 1.0
    else:
        return interval
    return Interval(interval.value, max(interval.low, low), min(interval.high, high))
