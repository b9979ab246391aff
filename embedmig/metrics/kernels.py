"""Pure, vectorized metric kernels on arrays. No I/O, no per-query Python loops.

Id arrays are ``(n_queries, k)`` int64 top-k lists as FAISS returns them: ``-1`` pads rows that
have fewer than k hits, and is never counted as a hit. A repeated id within one row counts once.
Row-wise kernels work in bounded chunks of rows so memory stays flat for any number of queries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    overlap: np.ndarray = _rowwise(old, new, k, lambda a, b: _common(a, b) / k)[0]
    return overlap


def jaccard_at_k(old: np.ndarray, new: np.ndarray, k: int) -> np.ndarray:
    """|A ∩ B| / |A ∪ B| of the top-k id sets per query; 1.0 when both are empty."""
    jaccard: np.ndarray = _rowwise(old, new, k, lambda a, b: _jaccard(*_common_and_union(a, b)))[0]
    return jaccard


def _jaccard(common: np.ndarray, union: np.ndarray) -> np.ndarray:
    jaccard: np.ndarray = np.divide(
        common, union, out=np.ones(len(common), dtype=np.float64), where=union > 0
    )
    return jaccard


def rbo(old: np.ndarray, new: np.ndarray, p: float = 0.9) -> np.ndarray:
    """Rank-biased overlap (Webber et al. 2010, extrapolated RBO_ext) of two top-K lists per row.

    RBO_ext = X_K/K · p^K + (1-p)/p · Σ_{d=1..K} X_d/d · p^d, with X_d the number of ids in both
    depth-d prefixes. 1.0 for identical lists, 0.0 for disjoint ones; padding never matches.
    """
    result = agreement(old, new, (), p).rbo
    assert result is not None
    return result


@dataclass(frozen=True)
class Agreement:
    """How far two rankings agree, per query: overlap@k and Jaccard@k at each k asked for, and
    RBO over the full depth (when a ``p`` was given)."""

    overlap: dict[int, np.ndarray]
    jaccard: dict[int, np.ndarray]
    rbo: np.ndarray | None


def agreement(
    old: np.ndarray, new: np.ndarray, ks: Sequence[int], p: float | None = None
) -> Agreement:
    """``overlap_at_k`` and ``jaccard_at_k`` for every k in ``ks`` and ``rbo`` (depth: the columns
    of ``old``), from one sort of each chunk.

    The sort keeps each id's position: an id common to both lists counts in every prefix from
    depth m = max(first position in old, first position in new) on, so a per-row histogram of m,
    summed cumulatively, gives the common count at every depth at once.
    """
    if p is not None and not 0 < p < 1:
        raise ValueError("p must be between 0 and 1")
    ks = tuple(ks)
    if any(k < 1 for k in ks):
        raise ValueError("k must be at least 1")
    depth = old.shape[1]
    d = np.arange(1, depth + 1)
    # An id common to both lists from depth m+1 on adds Σ_{d>m} p^d/d to RBO: a suffix sum.
    suffix = np.cumsum((p**d / d)[::-1])[::-1] if p is not None else None

    def chunk(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        n, width = a.shape[0], 2 * depth
        keys, low = _sorted_tags(a, b, with_positions=True)
        flat, mask = keys.ravel(), (1 << low) - 1
        tags = keys >> low
        step = tags[:, 1:] - tags[:, :-1]
        pairs = np.flatnonzero(step == 1)
        rows = pairs // (width - 1)
        at = pairs + rows  # flat index of the old-side key of each common id
        # Without repeated ids or padding, every id is its own run: the cheap path.
        simple = bool(step.all()) and (n == 0 or int(tags[:, 0].min()) >= 0)
        if simple:
            first_old = flat[at] & mask
        else:
            # An id counts from its first position, which sorts first in the run of its tags.
            heads = np.concatenate([np.ones((n, 1), bool), step != 0], axis=1)
            starts = np.where(heads, np.arange(width), 0)
            np.maximum.accumulate(starts, axis=1, out=starts)
            first_old = flat[starts.ravel()[at] + rows * width] & mask
        reach = np.maximum(first_old, flat[at + 1] & mask)
        # Per row, how many common ids enter both lists at each depth.
        entering = _counts(rows * depth + reach, n, depth)
        out = []
        if ks:
            common = np.cumsum(entering, axis=1)
            if simple:
                # Every id of a list is distinct: its top k holds k of them.
                distinct_old = distinct_new = np.broadcast_to(np.arange(1, depth + 1), (n, depth))
            else:
                head_rows, head_cols = np.nonzero(heads & (tags >= 0))
                head_keys = keys[head_rows, head_cols]
                side = (head_keys >> low) & 1
                heads_at = _counts(
                    (head_rows * 2 + side) * depth + (head_keys & mask), 2 * n, depth
                )
                distinct = np.cumsum(heads_at, axis=1).reshape(n, 2, depth)
                distinct_old, distinct_new = distinct[:, 0], distinct[:, 1]
            for k in ks:
                column = min(k, depth) - 1
                found = common[:, column]
                out.append(found / k)
                union = distinct_old[:, column] + distinct_new[:, column] - found
                out.append(_jaccard(found, union))
        if suffix is not None and p is not None:
            total = entering @ suffix
            common_ids = entering.sum(axis=1)
            out.append((1 - p) / p * total + common_ids / depth * p**depth)
        return np.stack(out) if out else np.empty((0, n))

    outputs = 2 * len(ks) + (p is not None)
    result = _rowwise(old, new, depth, chunk, outputs=outputs)
    return Agreement(
        overlap={k: result[2 * i] for i, k in enumerate(ks)},
        jaccard={k: result[2 * i + 1] for i, k in enumerate(ks)},
        rbo=result[-1] if p is not None else None,
    )


def _counts(cells: np.ndarray, rows: int, depth: int) -> np.ndarray:
    """How many of ``cells`` (flat ``row * depth + position``) fall on each position of each row:
    shape (rows, depth)."""
    counts: np.ndarray = np.bincount(cells, minlength=rows * depth).reshape(rows, depth)
    return counts


def _rowwise(
    old: np.ndarray,
    new: np.ndarray,
    k: int,
    kernel: Callable[[np.ndarray, np.ndarray], np.ndarray],
    outputs: int = 1,
) -> np.ndarray:
    """``kernel`` over chunks of rows, each giving (outputs, rows) or (rows,): shape (outputs, n)."""
    if old.shape[0] != new.shape[0]:
        raise ValueError("old and new must have the same number of queries")
    if k < 1:
        raise ValueError("k must be at least 1")
    out = np.empty((outputs, old.shape[0]), dtype=np.float64)
    for start in range(0, old.shape[0], _CHUNK_ROWS):
        stop = start + _CHUNK_ROWS
        out[:, start:stop] = kernel(old[start:stop, :k], new[start:stop, :k])
    return out


@dataclass(frozen=True)
class Sample:
    """The finite values of one distribution, flattened and sorted once: its summary, histogram,
    quantiles and shift against another sample all read the sorted values.

    float32 (FAISS scores) stays float32: its sort is the cheaper one, and the shift kernel's
    exact integer merge needs it. Statistics accumulate in float64 either way.
    """

    values: np.ndarray

    @classmethod
    def of(cls, values: np.ndarray | Sample) -> Sample:
        if isinstance(values, Sample):
            return values
        return cls(np.sort(_finite(values)))

    @property
    def size(self) -> int:
        return int(self.values.size)

    def quantiles(self, q: np.ndarray | Sequence[float]) -> np.ndarray:
        """Linear interpolation between order statistics: numpy's default quantile method, read
        off the sorted values (``np.quantile`` would partition them again)."""
        v = self.values
        position = np.asarray(q, dtype=np.float64) * (v.size - 1)
        below = np.floor(position).astype(np.int64)
        above = np.minimum(below + 1, v.size - 1)
        low, high = v[below].astype(np.float64), v[above].astype(np.float64)
        quantiles: np.ndarray = low + (high - low) * (position - below)
        return quantiles

    def summary(self) -> dict[str, float | None]:
        """Mean, standard deviation, min/max and quantiles; None where the sample is empty."""
        keys = ["mean", "std", "min", "max", *(f"p{round(q * 100)}" for q in QUANTILES)]
        v = self.values
        if v.size == 0:
            return dict.fromkeys(keys, None)
        stats = [
            v.mean(dtype=np.float64),
            v.std(dtype=np.float64),
            v[0],
            v[-1],
            *self.quantiles(QUANTILES),
        ]
        return {key: float(value) for key, value in zip(keys, stats, strict=True)}

    def counts(self, edges: np.ndarray) -> np.ndarray:
        """How many values fall in each bin, as ``np.histogram(values, edges)`` counts them (the
        last bin includes its right edge)."""
        cumulative = np.concatenate(
            [
                np.searchsorted(self.values, edges[:-1], "left"),
                np.searchsorted(self.values, edges[-1:], "right"),
            ]
        )
        counts: np.ndarray = np.diff(cumulative)
        return counts


def summary(values: np.ndarray | Sample) -> dict[str, float | None]:
    """Mean, standard deviation, min/max and quantiles of the finite values; None where empty."""
    return Sample.of(values).summary()


def histogram(values: np.ndarray, bins: int = 10, lo: float = 0.0, hi: float = 1.0) -> list[int]:
    counts, _ = np.histogram(np.clip(values, lo, hi), bins=bins, range=(lo, hi))
    return [int(c) for c in counts]


def _merged_counts(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pooled sample sorted, with how many x and how many y are at or before each position.
    ``x`` and ``y`` are sorted.

    Scores from FAISS are float32: then each value is mapped to an order-preserving integer with
    its sample's label in the lowest bit, so one integer sort merges and labels at once. Other
    values take a sort and a merge by binary search. Exact either way.
    """
    if x.dtype == np.float32 and y.dtype == np.float32:
        # Adding 0.0 turns -0.0 into 0.0: equal values, equal keys.
        bits = (np.concatenate([x, y]) + np.float32(0.0)).view(np.int32)
        _flip_negatives(bits)
        ordered = bits.astype(np.int64)
        ordered <<= 1
        ordered[x.size :] |= 1
        # Two sorted runs: the stable sort (timsort) merges them in one pass.
        ordered.sort(kind="stable")
        from_y = np.cumsum(ordered & 1)
        from_x = np.arange(1, ordered.size + 1) - from_y
        ordered >>= 1
        bits = ordered.astype(np.int32)
        _flip_negatives(bits)
        return bits.view(np.float32).astype(np.float64), from_x, from_y
    values = np.sort(np.concatenate([x, y]))
    return values, np.searchsorted(x, values, "right"), np.searchsorted(y, values, "right")


def _flip_negatives(bits: np.ndarray) -> None:
    """float32 bit patterns (as int32) to integers in the floats' order, in place; its own
    inverse. Negative floats order backwards as integers: flipping all but the sign bit fixes it."""
    bits ^= (bits >> 31) & 0x7FFFFFFF


def ks_statistic(x: np.ndarray | Sample, y: np.ndarray | Sample) -> float | None:
    """Two-sample Kolmogorov-Smirnov statistic sup |F_x - F_y| (as ``scipy.stats.ks_2samp``)."""
    return distribution_shift(x, y)[0]


def wasserstein_1(x: np.ndarray | Sample, y: np.ndarray | Sample) -> float | None:
    """Earth mover's distance between two 1-d samples: the integral of |F_x - F_y|."""
    return distribution_shift(x, y)[1]


def distribution_shift(
    x: np.ndarray | Sample, y: np.ndarray | Sample
) -> tuple[float | None, float | None]:
    """(KS statistic, Wasserstein-1) of two samples, from one merge of the two."""
    xs, ys = Sample.of(x), Sample.of(y)
    if xs.size == 0 or ys.size == 0:
        return None, None
    values, from_x, from_y = _merged_counts(xs.values, ys.values)
    gap = np.abs(from_x / xs.size - from_y / ys.size)
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


def threshold_map(
    old_scores: np.ndarray | Sample, new_scores: np.ndarray | Sample, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each old-model score threshold, the share of old scores at or below it, and the
    new-model score at that same quantile (quantile mapping): the cut-off that keeps the same
    share of results. NaN where either distribution is empty."""
    old, new = Sample.of(old_scores), Sample.of(new_scores)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if old.size == 0 or new.size == 0:
        nan = np.full(thresholds.shape, np.nan)
        return nan, nan.copy()
    share = np.searchsorted(old.values, thresholds, side="right") / old.size
    return share, new.quantiles(share)


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
    # Blocks of about 64k draws bound the memory; of 16k, 64k and 256k, 64k measured fastest.
    block = max(1, 65_536 // n)
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        # intp, as bincount wants it; below 2**32 numpy draws 32 bits each, so the stream does
        # not depend on the block size. The offsets put each resample's picks in its own run of n.
        picks = rng.integers(0, n, (stop - start, n), dtype=np.intp)
        picks += (np.arange(stop - start, dtype=np.intp) * n)[:, None]
        # How often each query is drawn, per resample: the resample means are then one product.
        counts = np.bincount(picks.ravel(), minlength=(stop - start) * n)
        means[:, start:stop] = rows @ counts.reshape(stop - start, n).T.astype(np.float64) / n
    means = means.reshape(*values.shape[:-1], resamples)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail], axis=-1)
    return low, high


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
    old: np.ndarray | Sample, new: np.ndarray | Sample, bins: int = 40
) -> dict[str, list[float] | list[int]]:
    """Histograms of two samples on shared bin edges (for plotting them over each other)."""
    x, y = Sample.of(old), Sample.of(new)
    ends = [v for sample in (x, y) if sample.size for v in (sample.values[0], sample.values[-1])]
    if not ends:
        return {"edges": [], "old": [], "new": []}
    lo, hi = float(min(ends)), float(max(ends))
    if hi <= lo:
        hi = lo + 1e-6
    edges = np.linspace(lo, hi, bins + 1)
    return {
        "edges": [float(e) for e in edges],
        "old": [int(c) for c in x.counts(edges)],
        "new": [int(c) for c in y.counts(edges)],
    }
