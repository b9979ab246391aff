"""Pure, vectorized metric kernels on arrays. No I/O, no per-query Python loops.

Id arrays are ``(n_queries, k)`` int64 top-k lists as FAISS returns them: ``-1`` pads rows that
have fewer than k hits, and is never counted as a hit. A repeated id within one row counts once.
Row-wise kernels work in bounded chunks of rows so memory stays flat for any number of queries.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

_CHUNK_ROWS = 8192
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def _dedupe_sorted(ids: np.ndarray, side: int) -> np.ndarray:
    """Each row sorted, with padding and repeats replaced by negative sentinels unique per cell.

    Sentinels differ between the two sides (``side`` 0 or 1), so they never match each other.
    """
    rows = np.sort(ids, axis=1)
    k = rows.shape[1]
    sentinels = -2 - (np.arange(k, dtype=np.int64) + side * k)
    repeat = np.zeros(rows.shape, dtype=bool)
    repeat[:, 1:] = rows[:, 1:] == rows[:, :-1]
    invalid = repeat | (rows < 0)
    return np.where(invalid, sentinels, rows)


def _intersections(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: |A ∩ B|, |A|, |B| of the id sets of two equally long row blocks."""
    da, db = _dedupe_sorted(a, 0), _dedupe_sorted(b, 1)
    both = np.sort(np.concatenate([da, db], axis=1), axis=1)
    # Each side is free of repeats, so an equal neighbour pair is an id present on both sides.
    common = ((both[:, 1:] == both[:, :-1]) & (both[:, 1:] >= 0)).sum(axis=1)
    return common, (da >= 0).sum(axis=1), (db >= 0).sum(axis=1)


def overlap_at_k(old: np.ndarray, new: np.ndarray, k: int) -> np.ndarray:
    """|top_k(old) ∩ top_k(new)| / k per query (float64, shape ``(n,)``)."""
    return _setwise(old, new, k, jaccard=False)


def jaccard_at_k(old: np.ndarray, new: np.ndarray, k: int) -> np.ndarray:
    """|A ∩ B| / |A ∪ B| of the top-k id sets per query; 1.0 when both are empty."""
    return _setwise(old, new, k, jaccard=True)


def _setwise(old: np.ndarray, new: np.ndarray, k: int, *, jaccard: bool) -> np.ndarray:
    if old.shape[0] != new.shape[0]:
        raise ValueError("old and new must have the same number of queries")
    if k < 1:
        raise ValueError("k must be at least 1")
    out = np.empty(old.shape[0], dtype=np.float64)
    for start in range(0, old.shape[0], _CHUNK_ROWS):
        stop = start + _CHUNK_ROWS
        common, size_a, size_b = _intersections(old[start:stop, :k], new[start:stop, :k])
        if jaccard:
            union = size_a + size_b - common
            out[start:stop] = np.divide(
                common, union, out=np.ones(len(common), dtype=np.float64), where=union > 0
            )
        else:
            out[start:stop] = common / k
    return out


def summary(values: np.ndarray) -> dict[str, float | None]:
    """Mean, standard deviation, min/max and quantiles; None where ``values`` is empty."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    keys = ["mean", "std", "min", "max", *(f"p{round(q * 100)}" for q in QUANTILES)]
    if values.size == 0:
        return dict.fromkeys(keys, None)
    stats = [values.mean(), values.std(), values.min(), values.max()]
    stats.extend(np.quantile(values, QUANTILES))
    return {key: float(v) for key, v in zip(keys, stats, strict=True)}


def histogram(values: np.ndarray, bins: int = 10, lo: float = 0.0, hi: float = 1.0) -> list[int]:
    counts, _ = np.histogram(np.clip(values, lo, hi), bins=bins, range=(lo, hi))
    return [int(c) for c in counts]


def _ecdfs(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs, ys = np.sort(x), np.sort(y)
    grid = np.sort(np.concatenate([xs, ys]))
    fx = np.searchsorted(xs, grid, side="right") / xs.size
    fy = np.searchsorted(ys, grid, side="right") / ys.size
    return grid, fx, fy


def ks_statistic(x: np.ndarray, y: np.ndarray) -> float | None:
    """Two-sample Kolmogorov-Smirnov statistic sup |F_x - F_y| (as ``scipy.stats.ks_2samp``)."""
    x, y = _finite(x), _finite(y)
    if x.size == 0 or y.size == 0:
        return None
    _, fx, fy = _ecdfs(x, y)
    return float(np.abs(fx - fy).max())


def wasserstein_1(x: np.ndarray, y: np.ndarray) -> float | None:
    """Earth mover's distance between two 1-d samples: the integral of |F_x - F_y|."""
    x, y = _finite(x), _finite(y)
    if x.size == 0 or y.size == 0:
        return None
    grid, fx, fy = _ecdfs(x, y)
    return float(np.sum(np.abs(fx - fy)[:-1] * np.diff(grid)))


def _finite(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    return values[np.isfinite(values)]


def relevance_matrix(ids: np.ndarray, qrels: Mapping[int, Mapping[int, int]]) -> np.ndarray:
    """Graded relevance of each retrieved id, shape of ``ids``; 0 where not judged relevant.

    ``qrels`` maps a query's row number to {doc id: grade}. Built with one flat lookup instead of
    per-row dictionary probes: pairs (row, id) are encoded to one int64 key and matched sorted.
    """
    n, k = ids.shape
    pairs = [(row, doc, grade) for row, judged in qrels.items() for doc, grade in judged.items()]
    rel = np.zeros((n, k), dtype=np.float64)
    if not pairs or k == 0:
        return rel
    judged_arr = np.array(pairs, dtype=np.int64)
    width = int(max(judged_arr[:, 1].max(), ids.max(initial=0))) + 2
    judged_keys = judged_arr[:, 0] * width + judged_arr[:, 1]
    order = np.argsort(judged_keys)
    judged_keys, grades = judged_keys[order], judged_arr[order, 2]
    keys = np.arange(n, dtype=np.int64)[:, None] * width + np.where(ids >= 0, ids, width - 1)
    pos = np.clip(np.searchsorted(judged_keys, keys), 0, len(judged_keys) - 1)
    hit = (judged_keys[pos] == keys) & (ids >= 0)
    rel[hit] = grades[pos[hit]]
    return rel


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
