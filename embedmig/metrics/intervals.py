"""Intervals around a forecast (``metrics.forecast``): a bootstrap that resamples the queries and
the uniformly sampled documents together, refitting the priors each time, so the intervals cover
query sampling and document sampling; widened by what the data cannot pin down (the priors'
disagreement, the Horvitz-Thompson crosscheck, and the spread between draws)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from embedmig.metrics.forecast import DRAWS, Estimate, Forecaster


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float


Summary = Callable[[Estimate, np.ndarray], dict[str, float]]


def with_intervals(
    forecaster: Forecaster,
    summarize: Summary,
    resamples: int,
    seed: int,
    level: float = 0.95,
) -> tuple[Estimate, dict[str, Interval]]:
    """Each figure ``summarize`` makes of an estimate (given per-query weights: how often each
    query is drawn), with an interval: ± z bootstrap standard deviations over queries and
    sampled documents, widened by how far the forecast moves when its priors are fitted less
    far (what the data cannot pin down, chiefly the first ranks), by how far a mean lies from
    its Horvitz-Thompson crosscheck, and, for figures read off the per-query draws, by how much
    they vary from one draw (imputation) to the next (Rubin's rule). Returns the forecast's own
    estimate too."""
    n_queries = forecaster.n_queries
    rng = np.random.default_rng(seed)
    estimate = forecaster.estimate(rng=rng)
    point = summarize(estimate, np.ones(n_queries))
    crosscheck = estimate.crosscheck
    between = _between_draws(estimate, summarize, point)
    smooth = summarize(forecaster.estimate(smooth=True, rng=rng), np.ones(n_queries))
    n_docs = len(forecaster.data.sampled.uncertain)
    draws: dict[str, list[float]] = {name: [] for name in point}
    for _ in range(resamples):
        queries = np.bincount(rng.integers(0, n_queries, n_queries), minlength=n_queries)
        docs = np.bincount(rng.integers(0, n_docs, n_docs), minlength=n_docs) if n_docs else None
        figures = summarize(forecaster.estimate(docs, rng=rng), queries.astype(np.float64))
        for name, value in figures.items():
            draws[name].append(value)
    z = NormalDist().inv_cdf(0.5 + level / 2)
    out: dict[str, Interval] = {}
    for name, value in point.items():
        sample = np.array([v for v in draws[name] if v is not None and math.isfinite(v)])
        if math.isfinite(value) and len(sample) > 1:
            # Normal, centred on the forecast: a replicate's duplicated documents make the
            # estimator's bootstrap distribution lean (its median is not the forecast), and a
            # spread is stable from far fewer replicates than a 2.5% quantile.
            moved = smooth.get(name, value) - value
            moved = moved if math.isfinite(moved) else 0.0
            apart = crosscheck.get(name, value) - value
            imputed = (1 + 1 / DRAWS) * between.get(name, 0.0)
            spread = z * math.sqrt(float(sample.var(ddof=1)) + moved**2 + apart**2 + imputed)
            out[name] = Interval(value, value - spread, value + spread)
        else:
            out[name] = Interval(value, math.nan, math.nan)
    return estimate, out


def _between_draws(
    estimate: Estimate, summarize: Summary, point: dict[str, float]
) -> dict[str, float]:
    """Each figure's variance across the draws taken one at a time: the between-imputation
    variance (none for a figure the draws do not move)."""
    if not estimate.drawn:
        return {}
    n = len(next(iter(estimate.drawn.values())))
    values: dict[str, list[float]] = {}
    for draw in range(DRAWS):
        one = Estimate(
            per_query=estimate.per_query,
            top_scores=estimate.top_scores,
            drawn={name: d[:, draw : draw + 1] for name, d in estimate.drawn.items()},
        )
        for name, value in summarize(one, np.ones(n)).items():
            values.setdefault(name, []).append(value)
    return {
        name: float(np.var(finite, ddof=1))
        for name, v in values.items()
        if name in point and len(finite := np.array(v)[np.isfinite(v)]) > 1
    }
