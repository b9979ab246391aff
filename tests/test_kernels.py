"""The metric kernels agree with plain reference implementations, adversarial inputs included."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from embedmig.metrics import kernels


def ref_overlap(a: list[int], b: list[int], k: int) -> float:
    return len({x for x in a[:k] if x >= 0} & {x for x in b[:k] if x >= 0}) / k


def ref_jaccard(a: list[int], b: list[int], k: int) -> float:
    sa, sb = {x for x in a[:k] if x >= 0}, {x for x in b[:k] if x >= 0}
    return 1.0 if not sa | sb else len(sa & sb) / len(sa | sb)


def id_matrices(seed: int, n: int, k: int, universe: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, universe, size=(n, k))
    b = rng.integers(0, universe, size=(n, k))
    # Adversarial rows: padding, repeats within a row, identical and disjoint rows.
    a[0, k // 2 :] = -1
    b[1, :] = -1
    a[2, :] = 7
    b[3, :] = a[3, :]
    b[4, :] = universe + np.arange(k)
    return a.astype(np.int64), b.astype(np.int64)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [1, 3, 10])
def test_overlap_and_jaccard_match_set_arithmetic(seed: int, k: int) -> None:
    a, b = id_matrices(seed, 60, 12, universe=15)
    got_o, got_j = kernels.overlap_at_k(a, b, k), kernels.jaccard_at_k(a, b, k)
    for i in range(len(a)):
        assert got_o[i] == pytest.approx(ref_overlap(list(a[i]), list(b[i]), k), abs=1e-12)
        assert got_j[i] == pytest.approx(ref_jaccard(list(a[i]), list(b[i]), k), abs=1e-12)


def test_overlap_with_k_beyond_the_columns_counts_missing_hits_as_misses() -> None:
    a = np.array([[1, 2, 3]])
    assert kernels.overlap_at_k(a, a, 5)[0] == pytest.approx(3 / 5)


def test_overlap_of_empty_query_set_is_empty() -> None:
    empty = np.empty((0, 10), dtype=np.int64)
    assert kernels.overlap_at_k(empty, empty, 10).shape == (0,)


@pytest.mark.parametrize("seed", range(6))
def test_ks_and_wasserstein_match_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(0.5, 0.1, size=rng.integers(1, 400))
    y = rng.normal(0.45, 0.2, size=rng.integers(1, 400))
    if seed % 2:  # ties
        x, y = np.round(x, 1), np.round(y, 1)
    assert kernels.ks_statistic(x, y) == pytest.approx(stats.ks_2samp(x, y).statistic, abs=1e-9)
    assert kernels.wasserstein_1(x, y) == pytest.approx(stats.wasserstein_distance(x, y), abs=1e-9)


def test_distribution_kernels_ignore_padding_and_empty_input() -> None:
    x = np.array([0.1, 0.2, -np.inf])
    assert kernels.ks_statistic(x, np.array([-np.inf])) is None
    assert kernels.wasserstein_1(x, x) == 0.0
    assert kernels.summary(np.array([]))["mean"] is None


def ref_ndcg(ranked: list[int], judged: dict[int, int], k: int) -> float:
    dcg = sum(judged.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted(judged.values(), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


@pytest.mark.parametrize("seed", range(4))
def test_qrels_metrics_match_textbook_definitions(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, k = 40, 10
    ids = np.stack([rng.choice(30, 12, replace=False) for _ in range(n)]).astype(np.int64)
    ids[0, 5:] = -1  # a short result list
    qrels = {
        i: {
            int(d): int(rng.integers(1, 3))
            for d in rng.choice(30, rng.integers(0, 4), replace=False)
        }
        for i in range(n)
    }
    rel = kernels.relevance_matrix(ids, qrels)
    n_rel = np.array([len(qrels[i]) for i in range(n)], dtype=float)
    ideal = np.zeros((n, k))
    for i in range(n):
        grades = sorted(qrels[i].values(), reverse=True)[:k]
        ideal[i, : len(grades)] = grades
    ndcg = kernels.ndcg_at_k(rel, ideal, k)
    recall = kernels.recall_at_k(rel, n_rel, k)
    mrr = kernels.mrr_at_k(rel, k)
    for i in range(n):
        ranked, judged = [int(d) for d in ids[i]], qrels[i]
        found = [d for d in ranked[:k] if d in judged]
        first = next((j for j, d in enumerate(ranked[:k]) if d in judged), None)
        assert ndcg[i] == pytest.approx(ref_ndcg(ranked, judged, k), abs=1e-9)
        assert recall[i] == pytest.approx(len(found) / len(judged) if judged else 0.0, abs=1e-9)
        assert mrr[i] == pytest.approx(0.0 if first is None else 1 / (first + 1), abs=1e-9)
