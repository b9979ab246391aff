"""Forecasts of full-corpus retrieval metrics from a sample of documents (pure numpy), read off
each pair's rank posterior (``metrics.ranks``):

- Judged figures (recall, nDCG, MRR) are expectations over each judged document's rank, and are
  drawn too: DRAWS realizations per query, so a query's MRR in a draw is a reciprocal rank.
- Per-query agreement figures (overlap and Jaccard at each depth) are drawn, not averaged: each
  query gets DRAWS realizations of its overlap count, from its documents' rank posteriors and,
  for the old top-k documents the sample lacks, a keep rate drawn from an empirical-Bayes prior
  over queries (``Forecaster._kept_draws``). Quantiles, shares and Jaccard read the draws;
  expectations would squeeze them toward the mean.
- Sums over documents the sample holds only some of (the old top-k kept in the new top-k) weight
  each sampled document by 1 / its inclusion probability (Horvitz-Thompson): unbiased for the
  sum over the whole corpus (RBO; a crosscheck of the drawn means).
- A query's new top-k scores are read off its sampled scores by rank interpolation
  (``TopScores``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from embedmig.metrics.ranks import (
    Posterior,
    Ranks,
    SampledScores,
    categorical,
    em,
    top_columns,
)
from embedmig.metrics.relevance import Judgements, ideal_grades

_NDCG_DISCOUNTS = 1.0 / np.log2(np.arange(2, 12))


@dataclass(frozen=True)
class ForecastInput:
    """Everything a forecast reads.

    ``judged`` are the relevant judgements with ``docs`` as columns of ``sampled.scores``.
    ``old_top`` is the old model's exact full-corpus top list per query as columns of
    ``sampled.scores`` (-1 where that document was not sampled), self hits already dropped.
    """

    sampled: SampledScores
    k: int
    rbo_p: float
    judged: Judgements | None = None
    old_top: np.ndarray | None = None


@dataclass
class Estimate:
    """Per-query forecasts (means over queries give the metrics) and each query's new top-k
    scores, (queries, k).

    ``drawn`` holds, for the per-query figures whose distribution is reported (overlap and
    Jaccard at each depth), DRAWS realizations per query, (queries, DRAWS): what the upgrade may
    measure for that query, drawn from its posterior. Quantiles, shares and nonlinear figures
    are read off the draws, never off expectations, which are squeezed toward the mean; and all
    figures of one draw come from one realized count, so jaccard@1 equals overlap@1 draw by
    draw. ``per_query`` holds their means over the draws."""

    per_query: dict[str, np.ndarray] = field(default_factory=dict)
    top_scores: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))
    drawn: dict[str, np.ndarray] = field(default_factory=dict)
    # The same means by another estimator (Horvitz-Thompson, with no prior over queries): how
    # far apart the two are widens the intervals of these means (``with_intervals``).
    crosscheck: dict[str, float] = field(default_factory=dict)


class TopScores:
    """Each query's new top-k scores, read off its sampled scores by rank interpolation.

    Sorted by score, a certain document occupies one rank and a uniformly sampled one the
    1 / rate ranks it stands for; each sits at the middle of its stretch. The score at ranks
    1..k is interpolated linearly between those positions, and above the first one extrapolated
    with the slope of the first two (the best sampled document is, on average, not the best of
    the corpus: a sample at 10% first meets the corpus's top list around rank 10).
    """

    def __init__(self, sampled: SampledScores, k: int) -> None:
        self.sampled, self.k = sampled, k
        # Enough of each kind to reach rank k even after a bootstrap drops a third of them.
        self.uncertain = top_columns(sampled.scores, sampled.uncertain, 2 * k + 4)
        self.certain = top_columns(sampled.scores, np.flatnonzero(sampled.certain), k + 1)

    def estimate(self, multiplicity: np.ndarray | None) -> np.ndarray:
        sampled = self.sampled
        scores = sampled.scores
        rows = np.arange(scores.shape[0])[:, None]
        weight_u = np.full(self.uncertain.shape, 1.0 / sampled.rate)
        if multiplicity is not None:
            position = np.searchsorted(sampled.uncertain, self.uncertain)
            weight_u = weight_u * multiplicity[position]
        values = np.concatenate([scores[rows, self.uncertain], scores[rows, self.certain]], axis=1)
        weight = np.concatenate([weight_u, np.ones(self.certain.shape)], axis=1)
        weight = np.where(np.isfinite(values), weight, 0.0)
        values = np.where(weight > 0, values, -np.inf)
        order = np.argsort(-values, axis=1, kind="stable")
        values = np.take_along_axis(values, order, axis=1)
        weight = np.take_along_axis(weight, order, axis=1)
        cumulative = np.cumsum(weight, axis=1)
        middle = cumulative - (weight - 1) / 2  # ranks 1..w: their middle is (w + 1) / 2
        return _interpolate_ranks(values, middle, weight > 0, self.k)


def _interpolate_ranks(
    values: np.ndarray, position: np.ndarray, valid: np.ndarray, k: int
) -> np.ndarray:
    """Per row, the value at ranks 1..k from (position, value) points sorted by position (the
    valid ones first); linear between points, the first slope above the first point, flat
    below the last."""
    n, width = values.shape
    if width == 0:
        return np.full((n, k), np.nan)
    ranks = np.arange(1, k + 1, dtype=np.float64)
    x = np.where(valid, position, np.inf)
    y = np.where(valid, values, np.nan).astype(np.float64)
    count = valid.sum(axis=1)
    # Index of the first point at or past each rank: interpolate between it and the one before.
    after = (x[:, :, None] < ranks[None, None, :]).sum(axis=1)  # (n, k)
    last = np.maximum(count - 1, 0)[:, None]
    hi = np.minimum(np.maximum(after, 1), last)
    lo = np.maximum(hi - 1, 0)
    x0, x1 = np.take_along_axis(x, lo, 1), np.take_along_axis(x, hi, 1)
    y0, y1 = np.take_along_axis(y, lo, 1), np.take_along_axis(y, hi, 1)
    with np.errstate(invalid="ignore"):  # rows without points: replaced below
        span = np.where(x1 > x0, x1 - x0, 1.0)
        out: np.ndarray = y0 + (y1 - y0) * (ranks[None, :] - x0) / span
    # Below the last point the value stays the last one's; one point alone is flat.
    past = (after >= count[:, None]) | (count[:, None] == 1)
    out = np.where(past, np.take_along_axis(y, last, 1), out)
    out[count == 0] = np.nan
    return out


class Forecaster:
    """Builds the rank models once; ``estimate`` runs them on the data or a bootstrap replicate."""

    def __init__(self, data: ForecastInput) -> None:
        self.data = data
        sampled = data.sampled
        n_queries = sampled.scores.shape[0]
        self.n_queries = n_queries
        self.depth = 0
        if data.old_top is not None:
            self.depth = data.old_top.shape[1]
        deepest = max(100, data.k, self.depth)
        # Enough sampled documents per query to see ranks well past the deepest one reported.
        cap = math.ceil(2 * deepest * sampled.rate + 10 * math.sqrt(deepest * sampled.rate))
        cap += 16
        self.judged = None
        if data.judged is not None and len(data.judged.rows):
            relevant = data.judged.relevant()
            # By query, so sums per query are one reduceat (``_sum_rows``).
            order = np.argsort(relevant.rows, kind="stable")
            relevant = Judgements(
                relevant.rows[order], relevant.docs[order], relevant.grades[order]
            )
            self.relevant = relevant
            strata = self._strata(relevant.rows, relevant.docs)
            self.judged = Ranks(sampled, relevant.rows, relevant.docs, cap, deepest, strata)
            self.n_relevant, ideal = ideal_grades(relevant, n_queries, 10)
            self.idcg = (ideal[:, :10] * _NDCG_DISCOUNTS).sum(axis=1)
            scores = sampled.scores[relevant.rows, relevant.docs]
            self.first_relevant = _argmax_per_row(relevant.rows, scores)
        self.kept = None
        # Per (depth, group of queries), the point forecast's prior over theta.
        self.theta_prior: dict[tuple[int, int], np.ndarray] = {}
        if data.old_top is not None:
            rows, at = np.nonzero(data.old_top >= 0)
            cols = data.old_top[rows, at]
            self.kept = Ranks(sampled, rows, cols, cap, deepest, _bands(at, self.depth))
            self.kept_at = at
        self.top = TopScores(sampled, data.k)

    def _strata(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray | None:
        """Pairs grouped by where the old model ranks the document (the old model is the best
        guess of where the new one will): each group gets its own prior."""
        old_top = self.data.old_top
        if old_top is None:
            return None
        hits = old_top[rows] == cols[:, None]
        position = np.where(hits.any(axis=1), hits.argmax(axis=1), self.depth)
        return _bands(position, self.depth)

    def estimate(
        self,
        multiplicity: np.ndarray | None = None,
        smooth: bool = False,
        rng: np.random.Generator | None = None,
    ) -> Estimate:
        """The forecast (``multiplicity``: a bootstrap replicate's document counts; ``smooth``:
        priors fitted by SMOOTH_STEPS from a flat start instead of until they settle; ``rng``:
        what the per-query draws come from, seeded by default)."""
        data, out = self.data, Estimate()
        rng = rng if rng is not None else np.random.default_rng(0)
        weights = data.sampled.weights
        if multiplicity is not None:
            weights = weights.copy()
            weights[data.sampled.uncertain] *= multiplicity
        if self.judged is not None:
            judged = self.judged.posterior(multiplicity, smooth)
            out.per_query.update(self._judged(judged))
            out.drawn.update(self._judged_draws(judged, rng))
        if self.kept is not None:
            cdf = self._kept_cdf(self.kept.posterior(multiplicity, smooth))
            common, noise = self._common(cdf, weights)
            out.per_query["rbo"] = _rbo(common, data.rbo_p)
            drawn = self._kept_draws(cdf, multiplicity, rng, multiplicity is None and not smooth)
            out.drawn.update(drawn)
            out.per_query.update({name: d.mean(axis=1) for name, d in drawn.items()})
            out.crosscheck = _horvitz_thompson(common, noise, out.per_query)
        out.top_scores = self.top.estimate(multiplicity)
        return out

    def _judged(self, post: Posterior) -> dict[str, np.ndarray]:
        n, rel = self.n_queries, self.relevant
        out: dict[str, np.ndarray] = {}
        for depth in (10, 100):
            found = np.bincount(rel.rows, post.expect(np.ones(depth)), minlength=n)
            out[f"recall_at_{depth}"] = _ratio(found, self.n_relevant)
        dcg = np.bincount(rel.rows, rel.grades * post.expect(_NDCG_DISCOUNTS), minlength=n)
        out["ndcg_at_10"] = _ratio(dcg, self.idcg)
        # The first relevant hit is the relevant document with the highest new score: all
        # judged documents are embedded, so which one that is, is known.
        best = self.first_relevant
        mrr = np.zeros(n)
        mrr[rel.rows[best]] = post.expect(1.0 / np.arange(1, 11), best)
        out["mrr_at_10"] = mrr
        return out

    def _judged_draws(self, post: Posterior, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """DRAWS realizations per query of the judged figures, (queries, DRAWS): each judged
        document's rank drawn from its posterior (mass past the deepest rank read: not found).
        A query's MRR, say, is 1, 1/2 or 0 in a draw, never the 0.6 its expectation is; how
        much the figures move from draw to draw is what the ranks leave open (Rubin's rule)."""
        n, rel = self.n_queries, self.relevant
        beyond = np.clip(1.0 - post.probability.sum(axis=1, keepdims=True), 0.0, None)
        index = categorical(np.hstack([post.probability, beyond]), DRAWS, rng)
        grid = np.append(post.grid, np.iinfo(np.int32).max // 2)
        rank0 = post.above[:, None] + grid[index]  # (pairs, DRAWS), 0-based
        out: dict[str, np.ndarray] = {}
        for depth in (10, 100):
            found = _sum_rows(rel.rows, (rank0 < depth).astype(np.float64), n)
            out[f"recall_at_{depth}"] = _ratio(found, self.n_relevant[:, None])
        gain = np.where(
            rank0 < 10, _NDCG_DISCOUNTS[np.minimum(rank0, 9)] * rel.grades[:, None], 0.0
        )
        out["ndcg_at_10"] = _ratio(_sum_rows(rel.rows, gain, n), self.idcg[:, None])
        best = self.first_relevant
        mrr = np.zeros((n, DRAWS))
        first = rank0[best]
        mrr[rel.rows[best]] = np.where(first < 10, 1.0 / (first + 1.0), 0.0)
        out["mrr_at_10"] = mrr
        return out

    def _kept_cdf(self, post: Posterior) -> np.ndarray:
        """P(new rank <= d) of each old top document, d = 1..depth, 0 at depths above its old
        position (a document at old position j counts at depths d >= j)."""
        cdf = post.cdf(self.depth)
        cdf[np.arange(self.depth)[None, :] < self.kept_at[:, None]] = 0.0
        return cdf

    def _common(self, cdf: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Expected |old top-d ∩ new top-d| per query and depth d = 1..depth, Horvitz-Thompson
        over the sampled documents of the old top lists (unbiased: what RBO's mean reads), and
        the sampling variance of each."""
        assert self.kept is not None
        w = weights[self.kept.cols][:, None]
        common = _sum_rows(self.kept.rows, cdf * w, self.n_queries)
        # Horvitz-Thompson variance: (1 - pi) / pi^2 per sampled term, i.e. w (w - 1).
        noise = _sum_rows(self.kept.rows, cdf**2 * w * (w - 1), self.n_queries)
        return common, noise

    def _kept_draws(
        self,
        cdf: np.ndarray,
        multiplicity: np.ndarray | None,
        rng: np.random.Generator,
        keep_fit: bool,
    ) -> dict[str, np.ndarray]:
        """DRAWS realized overlap counts per query at each depth K, c = x + u, each draw a
        multiple imputation of what the upgrade will see:

        - x: the embedded documents of the old top K, each in the new top K or not, drawn from
          its rank posterior;
        - u: the documents of the old top K the sample lacks, Binomial(their number, theta):
          theta is the query's rate of keeping its old top K, drawn from its posterior given
          that draw's x of its uniformly sampled documents (exchangeable with the ones it
          lacks; judged ones are not) and a prior G over theta fitted to every query's draw
          (nonparametric, by EM). G is what spreads the queries apart, the tail included; a
          shallow list (K = 1, 10) holds about one sampled document a query, so G is fitted
          within groups of queries that keep alike much of their deepest list.
        """
        assert self.kept is not None
        kept, sampled = self.kept, self.data.sampled
        n, depth = self.n_queries, self.depth
        uniform = ~sampled.certain[kept.cols]
        counts = np.ones(len(kept.cols))
        if multiplicity is not None:  # a replicate: documents drawn 0 times are not embedded
            where = np.searchsorted(sampled.uncertain, kept.cols[uniform])
            counts[uniform] = multiplicity[where]
        present = counts > 0
        log_theta = np.log(np.clip(THETA, 1e-12, None))
        log_rest = np.log(np.clip(1 - THETA, 1e-12, None))
        out: dict[str, np.ndarray] = {}
        groups = np.zeros(n, np.int64)
        for at in sorted({1, 10, 100, self.data.k} & set(range(1, depth + 1)), reverse=True):
            inside = present & (self.kept_at < at)
            rows = kept.rows[inside]
            hits = rng.random((len(rows), DRAWS)) < np.clip(cdf[inside, at - 1], 0, 1)[:, None]
            seen = _sum_rows(rows, hits.astype(np.float64), n)  # (n, DRAWS)
            lacking = np.maximum(at - np.bincount(rows, minlength=n), 0)
            evidence = uniform[inside]
            weight = counts[inside][evidence]
            tried = np.bincount(rows[evidence], weight, minlength=n)
            held = _sum_rows(rows[evidence], hits[evidence] * weight[:, None], n)
            # (queries, DRAWS, THETA): each draw's likelihood of each keep rate.
            log_lik = held[:, :, None] * log_theta + (tried[:, None] - held)[:, :, None] * log_rest
            prior = np.empty((n, len(THETA)))
            for group in np.unique(groups):
                members = groups == group
                # G from the first draw serves the others: a population's prior moves little
                # from one draw to the next.
                key = (at, int(group))
                start = self.theta_prior.get(key) if multiplicity is not None else None
                fitted = _fit_mixture(log_lik[members, 0], start)
                if keep_fit:  # the point forecast's: replicates start from it
                    self.theta_prior[key] = fitted
                prior[members] = fitted
            posterior = prior[:, None, :] * np.exp(log_lik - log_lik.max(axis=2, keepdims=True))
            posterior /= posterior.sum(axis=2, keepdims=True)
            picked = categorical(posterior.reshape(n * DRAWS, len(THETA)), 1, rng)[:, 0]
            theta = THETA[picked].reshape(n, DRAWS)
            mean_theta = (posterior @ THETA).mean(axis=1)
            if groups.max() == 0:
                # Which queries keep much and which little is read from the deepest list, where
                # each has several sampled documents; the shallower ones share priors by it.
                groups = _quantile_groups(mean_theta, int((tried > 0).sum()) // GROUP_QUERIES)
            common = np.minimum(seen + rng.binomial(lacking[:, None], theta), at)
            out[f"overlap_at_{at}"] = common / at
            out[f"jaccard_at_{at}"] = common / (2 * at - common)
        return out


# Per-query realizations of the drawn figures, and the grid of a query's keep rate theta.
DRAWS = 16


THETA = np.linspace(0.0, 1.0, 41)


GROUP_QUERIES = 60  # queries per group whose shallow lists share a prior (at most 5 groups)


def _quantile_groups(values: np.ndarray, count: int) -> np.ndarray:
    """Each value's group among ``count`` (at most 5, at least 1) of equal size by rank."""
    count = max(1, min(5, count))
    order = np.argsort(values, kind="stable")
    groups = np.empty(len(values), np.int64)
    groups[order] = np.arange(len(values)) * count // max(len(values), 1)
    return groups


def _fit_mixture(log_lik: np.ndarray, start: np.ndarray | None) -> np.ndarray:
    """The mixing distribution over THETA that maximizes the likelihood of every query."""
    lik = np.exp(log_lik - log_lik.max(axis=1, keepdims=True))
    return em(lik, np.full(len(lik), 1.0 / max(len(lik), 1)), start)


MIN_STRATUM = 30  # pairs: fewer give a prior that is mostly noise


def _bands(position: np.ndarray, depth: int) -> np.ndarray:
    """Doubling bands of 0-based old positions (1, 2, 3-4, 5-8, ...; ``depth`` = not in the old
    list), bands with fewer than MIN_STRATUM pairs merged into the next one."""
    band = np.where(position < depth, np.floor(np.log2(position + 1)), 64).astype(np.int64)
    values, counts = np.unique(band, return_counts=True)
    merged, run, label = {}, 0, 0
    for value, count in zip(values, counts, strict=True):
        merged[int(value)] = label
        run += int(count)
        if run >= MIN_STRATUM:
            label, run = label + 1, 0
    if run and label:  # a small last group joins the one before it
        for value in values[::-1]:
            if merged[int(value)] != label:
                break
            merged[int(value)] = label - 1
    return np.array([merged[int(b)] for b in band], np.int64) if len(band) else band


def _horvitz_thompson(
    common: np.ndarray, noise: np.ndarray, drawn: dict[str, np.ndarray]
) -> dict[str, float]:
    """The figures the draws give, by estimators that need no prior over queries: each mean
    overlap from the expected common counts alone (unbiased whatever the queries' spread; a
    Jaccard, which has no such estimator, moved in proportion, so that jaccard@1, equal to
    overlap@1 query by query, keeps the same interval); and the spread of the deepest list's
    overlap from those counts shrunk by their sampling noise (method of moments). That needs
    several sampled documents a query: at depth 10 a 10% sample holds about one, and the
    shrunk counts collapse to their mean, so the shallow lists have no such crosscheck."""
    out: dict[str, float] = {}
    for name in [n for n in drawn if n.startswith("overlap_at_")]:
        at = int(name.removeprefix("overlap_at_"))
        out[name] = float(common[:, at - 1].mean()) / at
        mean = float(drawn[name].mean())
        jaccard = float(drawn[f"jaccard_at_{at}"].mean())
        out[f"jaccard_at_{at}"] = jaccard * out[name] / mean if mean > 0 else jaccard
    deep = 100
    if common.shape[1] >= deep and len(common) > 1:
        values, spread = common[:, deep - 1], float(common[:, deep - 1].var())
        shrink = math.sqrt(max(0.0, spread - noise[:, deep - 1].mean()) / spread) if spread else 1
        found = np.clip(values.mean() + shrink * (values - values.mean()), 0, deep) / deep
        name = f"overlap_at_{deep}"
        for label, q in (("p5", 0.05), ("p50", 0.5), ("p95", 0.95)):
            out[f"{name}_{label}"] = float(np.quantile(found, q))
        out[f"{name}_below_half"] = float(np.mean(found < 0.5))
    return out


def _rbo(common: np.ndarray, p: float) -> np.ndarray:
    """Extrapolated rank-biased overlap per query from expected common counts per depth (the
    definition of ``kernels.agreement``); its mean is linear in them, so unbiased."""
    depth = common.shape[1]
    d = np.arange(1, depth + 1)
    out: np.ndarray = (1 - p) / p * (common @ (p**d / d)) + common[:, -1] / depth * p**depth
    return out


def _argmax_per_row(rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index into ``rows`` of the largest value of each row present."""
    if len(rows) == 0:
        return np.empty(0, np.int64)
    order = np.lexsort((-values, rows))
    first = np.concatenate([[True], rows[order][1:] != rows[order][:-1]])
    best: np.ndarray = order[first]
    return best


def _sum_rows(rows: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Per row r < n, the sum of ``values`` where ``rows == r``; ``rows`` sorted."""
    out = np.zeros((n, values.shape[1]))
    if len(rows):
        starts = np.flatnonzero(np.concatenate([[True], rows[1:] != rows[:-1]]))
        out[rows[starts]] = np.add.reduceat(values, starts, axis=0)
    return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.divide(num, den, out=np.zeros(np.shape(num)), where=den > 0)
    return out
