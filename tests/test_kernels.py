"""The metric kernels agree with plain reference implementations, adversarial inputs included."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from embedmig.metrics import kernels, relevance


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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(6))
def test_ks_and_wasserstein_match_scipy(seed: int, dtype: type) -> None:
    rng = np.random.default_rng(seed)
    x: np.ndarray = rng.normal(0.0, 0.3, size=rng.integers(1, 400)).astype(dtype)
    y: np.ndarray = rng.normal(-0.05, 0.4, size=rng.integers(1, 400)).astype(dtype)
    if seed % 2:  # ties, across and within samples, and signed zeros
        x, y = np.round(x, 1), np.round(y, 1)
        x[:2], y[:1] = -0.0, 0.0
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
    flat = [(row, doc, grade) for row, judged in qrels.items() for doc, grade in judged.items()]
    judged = relevance.Judgements(
        *(np.array(col, dtype=np.int64) for col in zip(*flat, strict=True))
    )
    rel = relevance.relevance_matrix(ids, judged)
    n_rel, ideal = relevance.ideal_grades(judged, n, k)
    for i in range(n):
        assert n_rel[i] == len(qrels[i])
        grades = sorted(qrels[i].values(), reverse=True)[:k]
        assert list(ideal[i, : len(grades)]) == grades and not ideal[i, len(grades) :].any()
    ndcg = relevance.ndcg_at_k(rel, ideal, k)
    recall = relevance.recall_at_k(rel, n_rel, k)
    mrr = relevance.mrr_at_k(rel, k)
    for i in range(n):
        ranked, graded = [int(d) for d in ids[i]], qrels[i]
        found = [d for d in ranked[:k] if d in graded]
        first = next((j for j, d in enumerate(ranked[:k]) if d in graded), None)
        assert ndcg[i] == pytest.approx(ref_ndcg(ranked, graded, k), abs=1e-9)
        assert recall[i] == pytest.approx(len(found) / len(graded) if graded else 0.0, abs=1e-9)
        assert mrr[i] == pytest.approx(0.0 if first is None else 1 / (first + 1), abs=1e-9)


def ref_rbo(a: list[int], b: list[int], p: float) -> float:
    k = len(a)
    total, common = 0.0, 0
    for d in range(1, k + 1):
        common = len({x for x in a[:d] if x >= 0} & {y for y in b[:d] if y >= 0})
        total += common / d * p**d
    return common / k * p**k + (1 - p) / p * total


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("p", [0.5, 0.9, 0.98])
def test_rbo_matches_its_definition(seed: int, p: float) -> None:
    a, b = id_matrices(seed, 50, 12, universe=15)
    got = kernels.rbo(a, b, p)
    for i in range(len(a)):
        assert got[i] == pytest.approx(ref_rbo(list(a[i]), list(b[i]), p), abs=1e-9)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("depth", [1, 4, 12])
def test_agreement_gives_every_overlap_jaccard_and_rbo_from_one_sort(seed: int, depth: int) -> None:
    ks = (1, 2, 3, 5, 12, 20)  # 20 is beyond the columns: missing hits count as misses
    a, b = id_matrices(seed, 50, 12, universe=15)
    rng = np.random.default_rng(seed)
    # Rows without repeats or padding take the kernel's other path: mix both kinds.
    distinct = np.stack([rng.permutation(40)[:24] for _ in range(50)])
    a = np.concatenate([a, distinct[:, :12]])[:, :depth]
    b = np.concatenate([b, distinct[:, 12:]])[:, :depth]
    got = kernels.agreement(a, b, ks, 0.8)
    assert got.rbo is not None
    for i in range(len(a)):
        x, y = list(a[i]), list(b[i])
        for k in ks:
            assert got.overlap[k][i] == pytest.approx(ref_overlap(x, y, k), abs=1e-12)
            assert got.jaccard[k][i] == pytest.approx(ref_jaccard(x, y, k), abs=1e-12)
        assert got.rbo[i] == pytest.approx(ref_rbo(x, y, 0.8), abs=1e-9)


def test_agreement_of_rows_without_repeats_matches_the_general_path() -> None:
    rng = np.random.default_rng(11)
    a = np.stack([rng.permutation(30)[:10] for _ in range(40)])
    b = np.stack([rng.permutation(30)[:10] for _ in range(40)])
    fast = kernels.agreement(a, b, (3, 10), 0.9)
    b_padded = b.copy()
    b_padded[0, -1] = -1  # one padded row sends the whole chunk down the general path
    general = kernels.agreement(a, b_padded, (3, 10), 0.9)
    for k in (3, 10):
        assert fast.overlap[k][1:] == pytest.approx(general.overlap[k][1:], abs=1e-12)
        assert fast.jaccard[k][1:] == pytest.approx(general.jaccard[k][1:], abs=1e-12)
    assert fast.rbo is not None and general.rbo is not None
    assert fast.rbo[1:] == pytest.approx(general.rbo[1:], abs=1e-12)


def test_rbo_of_identical_and_disjoint_lists() -> None:
    a = np.arange(20, dtype=np.int64).reshape(2, 10)
    assert kernels.rbo(a, a) == pytest.approx([1.0, 1.0])
    assert kernels.rbo(a, a + 100) == pytest.approx([0.0, 0.0])


def test_large_ids_use_wide_keys() -> None:
    a = np.array([[2**40, 5, 2**41]], dtype=np.int64)
    b = np.array([[2**41, 2**40, 7]], dtype=np.int64)
    assert kernels.overlap_at_k(a, b, 3)[0] == pytest.approx(2 / 3)
    assert kernels.rbo(a, b)[0] == pytest.approx(ref_rbo(list(a[0]), list(b[0]), 0.9))


def test_threshold_map_is_quantile_mapping() -> None:
    old = np.linspace(0.0, 1.0, 101)
    new = old * 0.5 + 0.2
    share, mapped = kernels.threshold_map(old, new, np.array([0.3, 0.62]))
    expected_share = [np.mean(old <= 0.3), np.mean(old <= 0.62)]
    assert share == pytest.approx(expected_share)
    assert mapped == pytest.approx(np.quantile(new, expected_share))


def test_bootstrap_interval_is_seeded_and_covers_the_mean() -> None:
    values = np.random.default_rng(3).normal(0.1, 1.0, 400)
    interval = kernels.bootstrap_mean_ci(values, seed=7)
    assert interval is not None
    low, high = float(interval[0]), float(interval[1])
    assert low < values.mean() < high
    again = kernels.bootstrap_mean_ci(np.stack([values, -values]), seed=7)
    assert again is not None and (again[0][0], again[1][0]) == pytest.approx((low, high), abs=1e-12)
    assert (again[0][1], again[1][1]) == pytest.approx((-high, -low))
    # Reference: the same resamples drawn one at a time.
    rng = np.random.default_rng(7)
    means = [values[rng.integers(0, 400, 400, dtype=np.int32)].mean() for _ in range(1000)]
    assert (low, high) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])), abs=1e-12)


def test_ranks_of_finds_first_positions_and_marks_absent() -> None:
    ids = np.array([[5, 3, 5, -1], [1, 2, 3, 4]], dtype=np.int64)
    ranks = relevance.ranks_of(ids, np.array([0, 0, 1, 1]), np.array([5, 9, 4, 1]))
    assert list(ranks) == [0, 4, 3, 0]


def test_pair_cosines_are_every_distinct_pair() -> None:
    x = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]], dtype=np.float32)
    assert kernels.pair_cosines(x) == pytest.approx([0.0, 2**-0.5, 2**-0.5])


@pytest.mark.parametrize("size", [1, 2, 7, 1000])
def test_summary_quantiles_match_numpy(size: int) -> None:
    values = np.random.default_rng(size).normal(size=size)
    stats = kernels.summary(values)
    expected = np.quantile(values, kernels.QUANTILES)
    got = [stats[f"p{round(q * 100)}"] for q in kernels.QUANTILES]
    assert got == pytest.approx(list(expected), abs=1e-12)
    assert (stats["min"], stats["max"], stats["mean"]) == pytest.approx(
        (values.min(), values.max(), values.mean())
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sample_counts_bin_like_numpy_histogram(dtype: type) -> None:
    edges = np.linspace(-0.2, 1.0, 21)
    drawn = np.clip(np.random.default_rng(5).normal(0.4, 0.2, 500), -0.2, 1.0)
    # Values exactly on the first, an inner and the last edge, and repeated values.
    values: np.ndarray = np.concatenate([np.round(drawn, 2), edges[[0, 5, 5, 20]]]).astype(dtype)
    expected, _ = np.histogram(values, edges)
    assert list(kernels.Sample.of(values).counts(edges)) == list(expected)


def test_a_sorted_sample_gives_what_its_raw_values_give() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(0.5, 0.1, 300).astype(np.float32)
    y = rng.normal(0.4, 0.2, 200).astype(np.float32)
    x[:3] = [np.nan, np.inf, -np.inf]
    sx, sy = kernels.Sample.of(x), kernels.Sample.of(y)
    assert sx.size == 297
    assert kernels.distribution_shift(sx, sy) == kernels.distribution_shift(x, y)
    assert kernels.summary(sx) == kernels.summary(x)
    assert kernels.histogram_pair(sx, sy) == kernels.histogram_pair(x, y)
    thresholds = np.array([0.3, 0.5, 0.7])
    assert np.array_equal(
        np.stack(kernels.threshold_map(sx, sy, thresholds)),
        np.stack(kernels.threshold_map(x, y, thresholds)),
    )
