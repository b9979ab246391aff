"""Pure, vectorized metric kernels on arrays. No I/O, no per-query Python loops.

Id arrays are ``(n_queries, k)`` int64 top-k lists as FAISS returns them: ``-1`` pads rows that
have fewer than k hits, and is never counted as a hit. A repeated id within one row counts once.
Row-wise kernels work in bounded chunks of rows so memory stays flat for any number of queries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

# Small blocks keep the sort and its neighbours in cache: 2048 rows measured fastest here.
_CHUNK_ROWS = 2048
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def _sorted_tags(old: np.ndarray, new: np.ndarray, with_positions: bool) -> tuple[np.ndarray, int]:
    """Both rows' ids as tagged keys, each row sorted; the number of position bits at the bottom.

    A key is ``4*id + side`` (side 0: old, 1: new), optionally followed by the id's position in
    its list in the low bits. After sorting, an id present on both sides shows up as neighbouring
    tags ``4*id``, ``4*id + 1`` -- the only neighbours whose tags differ by exactly 1 (ids are 4
    apart) -- so one row-wise sort replaces the set operations. Padding (-1) gets the same tag on
    both sides, so it never forms such a pair. Keys are int32 whenever the ids allow it.
    """
    n, k = old.shape
    low = max(1, int(k - 1).bit_length()) if with_positions else 0
    top = int(max(old.max(initial=0), new.max(initial=0)))
    dtype = np.int32 if (top + 1) << (low + 3) < np.iinfo(np.int32).max else np.int64
    keys = np.empty((n, 2 * k), dtype=dtype)
    keys[:, :k] = old
    keys[:, k:] = new
    keys <<= 2
    keys[:, k:] |= 1
    padded = keys[:, k:]
    if padded.min(initial=0) < 0:
        padded[padded < 0] = -4  # new-side padding: the old side's tag for it
    if with_positions:
        keys <<= low
        positions = np.arange(k, dtype=dtype)
        keys[:, :k] |= positions
        keys[:, k:] |= positions
    keys.sort(axis=1)
    return keys, low


def _pairs(tags: np.ndarray) -> np.ndarray:
    """Mask over neighbour pairs ``(j, j+1)`` of sorted tags that hold one id from each side."""
    pairs: np.ndarray = (tags[:, 1:] - tags[:, :-1]) == 1
    return pairs


def _common(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    tags, _ = _sorted_tags(old, new, with_positions=False)
    return np.asarray(np.count_nonzero(_pairs(tags), axis=1))


def _common_and_union(old: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row |A ∩ B| and |A ∪ B| of the valid ids (repeats counted once)."""
    tags, _ = _sorted_tags(old, new, with_positions=False)
    common = np.count_nonzero(_pairs(tags), axis=1)
    ids = tags >> 2
    distinct = np.count_nonzero(ids[:, 1:] != ids[:, :-1], axis=1) + 1
    # The run of padding (id -1) counts as one distinct value when present.
    distinct -= np.count_nonzero(tags[:, :1] < 0, axis=1)
    return common, distinct


def overlap_at_k(old: np.ndarray, new: np.ndarray, k: int) -> np.ndarray:
    """|top_k(old) ∩ top_k(new)| / k per query (float64, shape ``(n,)``)."""
    return _rowwise(old, new, k, lambda a, b: _common(a, b) / k)


def jaccard_at_k(old: np.ndarray, new: np.ndarray, k: int) -> np.ndarray:
    """|A ∩ B| / |A ∪ B| of the top-k id sets per query; 1.0 when both are empty."""
    return overlap_and_jaccard_at_k(old, new, k)[1]


def overlap_and_jaccard_at_k(
    old: np.ndarray, new: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """``overlap_at_k`` and ``jaccard_at_k`` together, from one sort of each chunk."""

    def both(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        common, union = _common_and_union(a, b)
        jaccard = np.divide(
            common, union, out=np.ones(len(common), dtype=np.float64), where=union > 0
        )
        return np.stack([common / k, jaccard])

    out = _rowwise(old, new, k, both, outputs=2)
    return out[0], out[1]


def rbo(old: np.ndarray, new: np.ndarray, p: float = 0.9) -> np.ndarray:
    """Rank-biased overlap (Webber et al. 2010, extrapolated RBO_ext) of two top-K lists per row.

    RBO_ext = X_K/K · p^K + (1-p)/p · Σ_{d=1..K} X_d/d · p^d, with X_d the number of ids in both
    depth-d prefixes. 1.0 for identical lists, 0.0 for disjoint ones; padding never matches.
    """
    if not 0 < p < 1:
        raise ValueError("p must be between 0 and 1")
    depth = old.shape[1]
    d = np.arange(1, depth + 1)
    # An id common to both lists from depth m+1 on adds Σ_{d>m} p^d/d: a suffix sum, precomputed.
    suffix = np.cumsum((p**d / d)[::-1])[::-1]

    def chunk(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        n = a.shape[0]
        keys, low = _sorted_tags(a, b, with_positions=True)
        tags = keys >> low
        step = tags[:, 1:] - tags[:, :-1]
        width = keys.shape[1]
        pairs = np.flatnonzero(step == 1)
        rows = pairs // (width - 1)
        at = pairs + rows  # flat index of the old-side key of each common id
        flat, mask = keys.ravel(), (1 << low) - 1
        pos_new = flat[at + 1] & mask
        if np.count_nonzero(step == 0):
            # Repeated ids (or padding): an id counts from its first position, which sorts first
            # in the run of its equal tags.
            starts = np.where(
                np.concatenate([np.ones((n, 1), bool), step != 0], axis=1), np.arange(width), 0
            )
            np.maximum.accumulate(starts, axis=1, out=starts)
            pos_old = flat[starts.ravel()[at] + rows * width] & mask
        else:
            pos_old = flat[at] & mask
        reach = suffix[np.maximum(pos_old, pos_new)]
        total = np.bincount(rows, weights=reach, minlength=n)
        common = np.bincount(rows, minlength=n)
        result: np.ndarray = (1 - p) / p * total + common / depth * p**depth
        return result

    return _rowwise(old, new, depth, chunk)


def _rowwise(
    old: np.ndarray,
    new: np.ndarray,
    k: int,
    kernel: Callable[[np.ndarray, np.ndarray], np.ndarray],
    outputs: int = 1,
) -> np.ndarray:
    """``kernel`` over chunks of rows: shape (n,), or (outputs, n) for a kernel of several."""
    if old.shape[0] != new.shape[0]:
        raise ValueError("old and new must have the same number of queries")
    if k < 1:
        raise ValueError("k must be at least 1")
    out = np.empty((outputs, old.shape[0]), dtype=np.float64)
    for start in range(0, old.shape[0], _CHUNK_ROWS):
        stop = start + _CHUNK_ROWS
        out[:, start:stop] = kernel(old[start:stop, :k], new[start:stop, :k])
    return out[0] if outputs == 1 else out


def summary(values: np.ndarray) -> dict[str, float | None]:
    """Mean, standard deviation, min/max and quantiles; None where ``values`` is empty."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    keys = ["mean", "std", "min", "max", *(f"p{round(q * 100)}" for q in QUANTILES)]
    if values.size == 0:
        return dict.fromkeys(keys, None)
    ordered = np.sort(values)
    # Linear interpolation between order statistics: numpy's default quantile method, from one
    # sort that also gives min and max (np.quantile would partition once per call).
    position = np.asarray(QUANTILES) * (ordered.size - 1)
    below = np.floor(position).astype(np.int64)
    above = np.minimum(below + 1, ordered.size - 1)
    quantiles = ordered[below] + (ordered[above] - ordered[below]) * (position - below)
    stats = [ordered.mean(), ordered.std(), ordered[0], ordered[-1], *quantiles]
    return {key: float(v) for key, v in zip(keys, stats, strict=True)}


def histogram(values: np.ndarray, bins: int = 10, lo: float = 0.0, hi: float = 1.0) -> list[int]:
    counts, _ = np.histogram(np.clip(values, lo, hi), bins=bins, range=(lo, hi))
    return [int(c) for c in counts]


def _merged_counts(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pooled sample sorted, with how many x and how many y are at or before each position.

    Scores from FAISS are float32: then each value is mapped to an order-preserving integer with
    its sample's label in the lowest bit, so one integer sort merges and labels at once. Other
    values take two sorts and a merge by binary search. Exact either way.
    """
    if x.dtype == np.float32 and y.dtype == np.float32:
        bits = np.concatenate([x, y]) + np.float32(
            0.0
        )  # -0.0 becomes 0.0: equal values, equal keys
        ordered = bits.view(np.int32).astype(np.int64)
        np.copyto(ordered, ordered ^ 0x7FFFFFFF, where=ordered < 0)
        ordered <<= 1
        ordered[x.size :] |= 1
        ordered.sort()
        from_y = np.cumsum(ordered & 1)
        from_x = np.arange(1, ordered.size + 1) - from_y
        ordered >>= 1
        np.copyto(ordered, ordered ^ 0x7FFFFFFF, where=ordered < 0)
        values = ordered.astype(np.int32).view(np.float32).astype(np.float64)
        return values, from_x, from_y
    xs, ys = np.sort(x), np.sort(y)
    values = np.sort(np.concatenate([xs, ys]))
    return values, np.searchsorted(xs, values, "right"), np.searchsorted(ys, values, "right")


def ks_statistic(x: np.ndarray, y: np.ndarray) -> float | None:
    """Two-sample Kolmogorov-Smirnov statistic sup |F_x - F_y| (as ``scipy.stats.ks_2samp``)."""
    return distribution_shift(x, y)[0]


def wasserstein_1(x: np.ndarray, y: np.ndarray) -> float | None:
    """Earth mover's distance between two 1-d samples: the integral of |F_x - F_y|."""
    return distribution_shift(x, y)[1]


def distribution_shift(x: np.ndarray, y: np.ndarray) -> tuple[float | None, float | None]:
    """(KS statistic, Wasserstein-1) of two samples, from one merge of the two."""
    x, y = _finite(x), _finite(y)
    if x.size == 0 or y.size == 0:
        return None, None
    values, from_x, from_y = _merged_counts(x, y)
    gap = np.abs(from_x / x.size - from_y / y.size)
    # KS: only the last position of a run of equal values is a point where both ECDFs are defined.
    last = np.append(values[1:] != values[:-1], True)
    return float(gap[last].max()), float(np.sum(gap[:-1] * np.diff(values)))


def _finite(values: np.ndarray) -> np.ndarray:
    """The finite values, flattened; float32 stays float32 (the exact fast path needs it)."""
    values = np.asarray(values)
    if values.dtype != np.float32:
        values = values.astype(np.float64)
    values = values.ravel()
    finite: np.ndarray = values[np.isfinite(values)]
    return finite


@dataclass(frozen=True)
class Judgements:
    """Relevance judgements as parallel arrays: query row, document id, grade (> 0: relevant)."""

    rows: np.ndarray
    docs: np.ndarray
    grades: np.ndarray

    @classmethod
    def empty(cls) -> Judgements:
        return cls(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64))

    def relevant(self) -> Judgements:
        keep = self.grades > 0
        return Judgements(self.rows[keep], self.docs[keep], self.grades[keep])


def relevance_matrix(ids: np.ndarray, judged: Judgements) -> np.ndarray:
    """Graded relevance of each retrieved id, shape of ``ids``; 0 where not judged relevant."""
    n, k = ids.shape
    rel = np.zeros((n, k), dtype=np.float64)
    for block, hits in _judged_hits(ids, judged):
        at, position = np.nonzero(hits)
        rel[judged.rows[block][at], position] = judged.grades[block][at]
    return rel


def _judged_hits(ids: np.ndarray, judged: Judgements) -> Iterator[tuple[slice, np.ndarray]]:
    """Per block of judgements, where each judged document sits in its query's row of ``ids``.

    One comparison of a judged document with its row (k ids) per judgement: queries have few
    judgements, so this beats sorting every retrieved id. Blocks bound the (m, k) mask.
    """
    k = max(ids.shape[1], 1)
    step = max(1, 4_000_000 // k)
    for start in range(0, len(judged.rows), step):
        block = slice(start, start + step)
        yield block, ids[judged.rows[block]] == judged.docs[block, None]


def ideal_grades(judged: Judgements, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query: its relevant count, and its k best grades sorted descending (zero padded)."""
    relevant = judged.relevant()
    counts = np.bincount(relevant.rows, minlength=n).astype(np.float64)
    ideal = np.zeros((n, k))
    if len(relevant.rows):
        order = np.lexsort((-relevant.grades, relevant.rows))
        rows, grades = relevant.rows[order], relevant.grades[order]
        rank = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
        keep = rank < k
        ideal[rows[keep], rank[keep]] = grades[keep]
    return counts, ideal


def recall_at_k(rel: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Share of a query's relevant documents found in its top k (grade > 0 counts as relevant)."""
    found = (rel[:, :k] > 0).sum(axis=1)
    recall: np.ndarray = np.divide(
        found, n_relevant, out=np.zeros(len(found)), where=n_relevant > 0
    )
    return recall


def mrr_at_k(rel: np.ndarray, k: int) -> np.ndarray:
    hits = rel[:, :k] > 0
    first = hits.argmax(axis=1)
    return np.where(hits.any(axis=1), 1.0 / (first + 1), 0.0)


def ndcg_at_k(rel: np.ndarray, ideal_grades: np.ndarray, k: int) -> np.ndarray:
    """nDCG@k with linear gains (the BEIR/pytrec_eval convention).

    ``ideal_grades`` holds each query's judged grades sorted descending, zero padded, shape (n, >=k).
    """
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (rel[:, :k] * discounts[: rel[:, :k].shape[1]]).sum(axis=1)
    ideal = (ideal_grades[:, :k] * discounts[: ideal_grades[:, :k].shape[1]]).sum(axis=1)
    ndcg: np.ndarray = np.divide(dcg, ideal, out=np.zeros(len(dcg)), where=ideal > 0)
    return ndcg


def threshold_map(
    old_scores: np.ndarray, new_scores: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each old-model score threshold, the share of old scores at or below it, and the
    new-model score at that same quantile (quantile mapping): the cut-off that keeps the same
    share of results. NaN where either distribution is empty."""
    old, new = np.sort(_finite(old_scores)), _finite(new_scores)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if old.size == 0 or new.size == 0:
        nan = np.full(thresholds.shape, np.nan)
        return nan, nan.copy()
    share = np.searchsorted(old, thresholds, side="right") / old.size
    return share, np.quantile(new, share)


def bootstrap_mean_ci(
    values: np.ndarray, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray] | None:
    """Percentile bootstrap confidence interval of the mean of each row of ``values``.

    ``values`` is (n,) or (metrics, n): the rows share the same seeded resamples of the n
    queries, drawn in bounded blocks. Returns (low, high), each of shape ``values.shape[:-1]``.
    """
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[-1]
    if n == 0:
        return None
    rng = np.random.default_rng(seed)
    rows = values.reshape(-1, n)
    means = np.empty((rows.shape[0], resamples))
    block = max(1, 4_000_000 // n)
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        # int32 draws (a block holds < 2**31 picks) halve the time of drawing and counting.
        picks = rng.integers(0, n, (stop - start, n), dtype=np.int32)
        # How often each query is drawn, per resample: the resample means are then one product.
        picks += (np.arange(stop - start, dtype=np.int32) * n)[:, None]
        counts = np.bincount(picks.ravel(), minlength=(stop - start) * n)
        means[:, start:stop] = (rows @ counts.reshape(stop - start, n).T) / n
    means = means.reshape(*values.shape[:-1], resamples)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail], axis=-1)
    return low, high


def ranks_of(ids: np.ndarray, rows: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """0-based rank of ``docs[i]`` in row ``rows[i]`` of ``ids``; ``ids.shape[1]`` when absent."""
    k = ids.shape[1]
    ranks = np.full(len(rows), k, dtype=np.int64)
    if k == 0:
        return ranks
    pairs = Judgements(rows, docs, np.ones(len(rows), np.int64))
    for block, hits in _judged_hits(ids, pairs):
        # argmax finds the first True: a repeated id ranks at its first place.
        found = hits.any(axis=1)
        ranks[block][found] = hits.argmax(axis=1)[found]
    return ranks


def pair_cosines(vectors: np.ndarray) -> np.ndarray:
    """Cosine similarity of every pair of distinct rows (upper triangle of the Gram matrix): a
    background distribution of how alike unrelated documents look to a model."""
    # float32 throughout, as FAISS computes scores; the distribution kernels then take their exact
    # integer path, and the Gram matrix costs a third of a float64 one.
    x = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    cosines: np.ndarray = (x @ x.T)[np.triu_indices(x.shape[0], k=1)]
    return cosines


def histogram_pair(
    old: np.ndarray, new: np.ndarray, bins: int = 40
) -> dict[str, list[float] | list[int]]:
    """Histograms of two samples on shared bin edges (for plotting them over each other)."""
    x, y = _finite(old), _finite(new)
    both = np.concatenate([x, y])
    if both.size == 0:
        return {"edges": [], "old": [], "new": []}
    lo, hi = float(both.min()), float(both.max())
    if hi <= lo:
        hi = lo + 1e-6
    edges = np.linspace(lo, hi, bins + 1)
    return {
        "edges": [float(e) for e in edges],
        "old": [int(c) for c in np.histogram(x, edges)[0]],
        "new": [int(c) for c in np.histogram(y, edges)[0]],
    }
