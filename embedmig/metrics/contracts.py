"""Golden queries judged on search results: which contracts a top list breaks, and nDCG@10.

Pure functions on arrays, like the kernels: the caller searches, this judges. The metrics
(``contract_failures``, ``contract_ndcg_at_10``) and the report's ``contracts`` section are the
same for an upgrade, a dry run's forecast input, ``embedmig verify`` and ``embedmig watch``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedmig.contracts import Contract
from embedmig.metrics import figures, ranks, relevance
from embedmig.metrics.relevance import Judgements, ranks_of

NDCG_DEPTH = 10
# Searched at least this deep, so a lost document's report says where it went.
REPORT_DEPTH = 100
# The id of a key the alias does not hold: never retrieved (searches pad with -1, not this).
_UNKNOWN = -2


@dataclass(frozen=True)
class Compiled:
    """Contracts with their documents as ids (negative: a key the alias does not hold)."""

    contracts: Sequence[Contract]
    k: np.ndarray  # per contract
    must_rows: np.ndarray  # flat (contract row, document id) pairs of must_contain
    must_docs: np.ndarray
    judged: Judgements  # the ratings
    rated: np.ndarray  # per contract: has ratings

    @property
    def depth(self) -> int:
        """How deep a search must go to judge every contract."""
        return max(int(self.k.max(initial=0)), REPORT_DEPTH)


def compile_(contracts: Sequence[Contract], ids_of: Mapping[str, int]) -> Compiled:
    pairs = [
        (row, ids_of.get(key, _UNKNOWN))
        for row, c in enumerate(contracts)
        for key in c.must_contain
    ]
    rated = [
        (row, ids_of.get(key, _UNKNOWN), grade)
        for row, c in enumerate(contracts)
        for key, grade in c.ratings.items()
    ]
    rows = np.array([row for row, _ in pairs], np.int64)
    docs = np.array([doc for _, doc in pairs], np.int64)
    judged = (
        Judgements(*(np.array(col, np.int64) for col in zip(*rated, strict=True)))
        if rated
        else Judgements.empty()
    )
    return Compiled(
        contracts=contracts,
        k=np.array([c.k for c in contracts], np.int64),
        must_rows=rows,
        must_docs=docs,
        judged=judged,
        rated=np.array([bool(c.ratings) for c in contracts], bool),
    )


@dataclass(frozen=True)
class Judged:
    broken: np.ndarray  # per contract
    ranks: np.ndarray  # 0-based rank of each must_contain pair; ``depth`` when absent
    ndcg: np.ndarray  # per contract, NaN without ratings
    depth: int  # how deep the search went

    @property
    def failures(self) -> int:
        return int(self.broken.sum())

    @property
    def ndcg_mean(self) -> float | None:
        rated = self.ndcg[~np.isnan(self.ndcg)]
        return float(rated.mean()) if rated.size else None


def judge(ids: np.ndarray, compiled: Compiled) -> Judged:
    """``ids``: each contract's ranked top list (one row per contract, -1 padded)."""
    n = len(compiled.contracts)
    ranks = ranks_of(ids, compiled.must_rows, compiled.must_docs)
    lost = (ranks >= compiled.k[compiled.must_rows]) | (compiled.must_docs < 0)
    broken = np.bincount(compiled.must_rows[lost], minlength=n) > 0
    ndcg = np.full(n, np.nan)
    if compiled.rated.any():
        per_query = figures.judged_per_query(ids[:, :NDCG_DEPTH], compiled.judged)["ndcg_at_10"]
        ndcg[compiled.rated] = per_query[compiled.rated]
    return Judged(broken, ranks, ndcg, ids.shape[1])


def metrics(new: Judged, old: Judged | None = None) -> dict[str, float | None]:
    out: dict[str, float | None] = {
        "contract_failures": float(new.failures),
        "contract_ndcg_at_10": new.ndcg_mean,
    }
    if old is not None:
        out["contract_failures_old"] = float(old.failures)
        out["contract_ndcg_at_10_old"] = old.ndcg_mean
    return out


def section(compiled: Compiled, new: Judged, old: Judged | None) -> dict[str, Any]:
    """The report's ``contracts`` section: every contract the new side breaks, with each document
    it lost and where that document ranks now (None: beyond the search or not in the alias)."""
    return {
        "queries": len(compiled.contracts),
        "broken": [_broken(compiled, new, int(row)) for row in np.flatnonzero(new.broken)],
        "broken_old": (
            [compiled.contracts[int(row)].id for row in np.flatnonzero(old.broken)]
            if old is not None
            else None
        ),
    }


def _broken(compiled: Compiled, judged: Judged, row: int) -> dict[str, Any]:
    contract = compiled.contracts[row]
    pairs = np.flatnonzero(compiled.must_rows == row)
    missing = []
    for place, pair in enumerate(pairs):
        rank = int(judged.ranks[pair])
        if rank >= contract.k or compiled.must_docs[pair] < 0:
            found = rank < judged.depth and compiled.must_docs[pair] >= 0
            missing.append(
                {"document": contract.must_contain[place], "rank": rank + 1 if found else None}
            )
    return {"id": contract.id, "query": contract.query, "k": contract.k, "missing": missing}


# ---- a dry run's forecast --------------------------------------------------------------------

_DRAWS = 400  # rank draws per forecast: the interval's 2.5% tails rest on 10 draws each


def forecast(
    scores: np.ndarray,
    certain: np.ndarray,
    rate: float,
    population: int,
    compiled: Compiled,
    seed: int,
) -> tuple[dict[str, float | None], Judged]:
    """What the upgrade will measure on the golden queries, from a dry run's sample.

    ``scores``: each contract's query against every sampled document (columns: ``compiled``'s
    ids), ``certain`` marks the columns embedded with certainty (the documents the contracts and
    judgements name), the others a uniform sample at ``rate`` of ``population`` documents. A
    named document's full-corpus rank is the certain documents above it plus a draw of the
    uniform-population documents above it, from the rank posterior of ``metrics.forecast``.
    The metrics carry 95% intervals over the draws; ``contract_failures`` counts the contracts
    more likely broken than not. Returns them and the most likely outcome, for the report.
    """
    pairs = _pairs(compiled)
    rows, docs = pairs[:, 0], pairs[:, 1]
    known = docs >= 0
    safe = np.where(known, docs, 0)
    target = scores[rows, safe]
    above = scores[rows] > target[:, None]
    certain_above = (above & certain[None, :]).sum(axis=1)
    seen = (above & ~certain[None, :]).sum(axis=1)
    grid = ranks.rank_grid(population)
    posterior, _ = ranks.rank_posterior(seen, min(rate, 1.0), grid)
    rng = np.random.default_rng(seed)
    # Inverse-CDF draws of B per pair, (pairs, draws): one searchsorted over every row at once,
    # each row's CDF (0 to 1) lifted by twice its row number so the rows do not interleave.
    lift = 2.0 * np.arange(len(pairs))[:, None]
    cumulative = np.cumsum(posterior, axis=1) + lift
    u = rng.random((len(pairs), _DRAWS)) + lift
    index = np.searchsorted(cumulative.ravel(), u.ravel()).reshape(u.shape)
    index -= (np.arange(len(pairs)) * len(grid))[:, None]
    rank0 = certain_above[:, None] + grid[np.minimum(index, len(grid) - 1)]
    rank0 = np.where(known[:, None], rank0, np.iinfo(np.int64).max // 2)
    n_must = len(compiled.must_rows)
    broken_draws = _broken_draws(compiled, rank0[:n_must])
    ndcg_draws = _ndcg_draws(compiled, rank0[n_must:])
    p_broken = broken_draws.mean(axis=1)
    failures = broken_draws.sum(axis=0)
    out: dict[str, float | None] = {
        "contract_failures": float((p_broken > 0.5).sum()),
        "contract_failures_ci_low": float(np.quantile(failures, 0.025)),
        "contract_failures_ci_high": float(np.quantile(failures, 0.975)),
        "contract_ndcg_at_10": None,
    }
    if ndcg_draws is not None:
        means = np.nanmean(ndcg_draws, axis=0)
        out["contract_ndcg_at_10"] = float(np.mean(means))
        out["contract_ndcg_at_10_ci_low"] = float(np.quantile(means, 0.025))
        out["contract_ndcg_at_10_ci_high"] = float(np.quantile(means, 0.975))
    likely = np.median(rank0[:n_must], axis=1).astype(np.int64)
    outcome = Judged(p_broken > 0.5, likely, np.full(len(compiled.contracts), np.nan), 2**62)
    return out, outcome


def _pairs(compiled: Compiled) -> np.ndarray:
    """The must_contain pairs, then the rated ones: (row, column)."""
    rated = compiled.judged
    rows = np.concatenate([compiled.must_rows, rated.rows])
    docs = np.concatenate([compiled.must_docs, rated.docs])
    return np.stack([rows, docs], axis=1) if len(rows) else np.empty((0, 2), np.int64)


def _broken_draws(compiled: Compiled, rank0: np.ndarray) -> np.ndarray:
    """Per contract and draw, whether a must_contain document fell out of its top k."""
    n = len(compiled.contracts)
    lost = rank0 >= compiled.k[compiled.must_rows][:, None]
    out = np.zeros((n, rank0.shape[1]), bool)
    np.logical_or.at(out, compiled.must_rows, lost)
    return out


def _ndcg_draws(compiled: Compiled, rank0: np.ndarray) -> np.ndarray | None:
    """Per rated contract and draw, nDCG@10 with linear gains (as ``relevance.ndcg_at_k``)."""
    judged = compiled.judged
    if not compiled.rated.any():
        return None
    n = len(compiled.contracts)
    discount = np.where(rank0 < NDCG_DEPTH, 1.0 / np.log2(np.minimum(rank0, NDCG_DEPTH) + 2), 0.0)
    dcg = np.zeros((n, rank0.shape[1]))
    np.add.at(dcg, judged.rows, judged.grades[:, None] * discount)
    _, ideal_grades = relevance.ideal_grades(judged, n, NDCG_DEPTH)
    discounts = 1.0 / np.log2(np.arange(2, NDCG_DEPTH + 2))
    ideal = (ideal_grades[:, :NDCG_DEPTH] * discounts[: ideal_grades.shape[1]]).sum(axis=1)
    ndcg = np.divide(dcg, ideal[:, None], out=np.zeros_like(dcg), where=ideal[:, None] > 0)
    ndcg[~compiled.rated] = np.nan
    out: np.ndarray = ndcg
    return out
