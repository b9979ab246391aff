"""Maps fitted from one space into another (embedmig.migrate.fit) and applied as searchers apply
them (embedmig.embedders.adapted.Map): each kind recovers what it can represent, reproducibly."""

from __future__ import annotations

import numpy as np
import pytest

from embedmig import ConfigError, StoreError
from embedmig.embedders.adapted import Map
from embedmig.migrate.fit import MapSpec, fit

RNG = np.random.default_rng(7)


def rotation(n: int) -> np.ndarray:
    q: np.ndarray = np.linalg.qr(RNG.standard_normal((n, n)))[0]
    return q


def unit(a: np.ndarray) -> np.ndarray:
    out: np.ndarray = a / np.linalg.norm(a, axis=1, keepdims=True)
    return out


def test_procrustes_recovers_a_rotation_and_a_shift() -> None:
    x = RNG.standard_normal((400, 16))
    q, shift = rotation(16), RNG.standard_normal(16)
    mapping = fit(MapSpec("procrustes"), x, x @ q + shift, normalize=False, seed=0)
    np.testing.assert_allclose(mapping.weight, q, atol=1e-5)
    np.testing.assert_allclose(mapping.apply(x[:5]), x[:5] @ q + shift, atol=1e-4)


def test_procrustes_between_dimensions_is_semi_orthogonal() -> None:
    x, y = RNG.standard_normal((300, 12)), RNG.standard_normal((300, 20))
    weight = fit(MapSpec("procrustes"), x, y, normalize=True, seed=0).weight
    assert weight.shape == (12, 20)
    np.testing.assert_allclose(weight @ weight.T, np.eye(12), atol=1e-5)  # no distortion


def test_affine_recovers_a_linear_map_from_plenty_of_pairs() -> None:
    x = RNG.standard_normal((2000, 8))
    a, b = RNG.standard_normal((8, 6)), RNG.standard_normal(6)
    mapping = fit(MapSpec("affine"), x, x @ a + b, normalize=False, seed=0)
    # The ridge shrinks by about RIDGE relative to the variance: close, on purpose not exact.
    np.testing.assert_allclose(mapping.weight, a, rtol=0.1, atol=0.1)
    np.testing.assert_allclose(mapping.bias, b, atol=0.1)


def test_a_low_rank_affine_map_has_that_rank() -> None:
    x, y = RNG.standard_normal((500, 24)), RNG.standard_normal((500, 16))
    mapping = fit(MapSpec("affine", rank=4), x, y, normalize=True, seed=0)
    assert np.linalg.matrix_rank(mapping.weight, tol=1e-4) == 4


def test_an_mlp_fits_what_no_linear_map_can() -> None:
    x = RNG.standard_normal((1500, 8))
    y = np.concatenate([x, np.abs(x[:, :4]) * 2], axis=1)  # a fold: not linear
    spec = MapSpec("mlp", hidden=64, epochs=60)

    def cosine(m: Map) -> float:
        return float(np.mean(np.sum(m.apply(x) * unit(y), axis=1)))

    affine = fit(MapSpec("affine"), x, y, normalize=True, seed=0)
    mlp = fit(spec, x, y, normalize=True, seed=0)
    assert cosine(mlp) > cosine(affine) + 0.02


def test_a_fit_is_reproducible_from_its_seed() -> None:
    x, y = RNG.standard_normal((300, 8)), RNG.standard_normal((300, 8))
    spec = MapSpec("mlp", hidden=16, epochs=3)
    first = fit(spec, x, y, normalize=True, seed=3)
    assert fit(spec, x, y, normalize=True, seed=3).sha256() == first.sha256()
    assert fit(spec, x, y, normalize=True, seed=4).sha256() != first.sha256()


def test_apply_is_the_formula_of_the_map() -> None:
    x = RNG.standard_normal((30, 8)).astype(np.float32)
    w, b = RNG.standard_normal((8, 5)), RNG.standard_normal(5)
    w1, b1, w2 = RNG.standard_normal((8, 11)), RNG.standard_normal(11), RNG.standard_normal((11, 5))
    f32 = [a.astype(np.float32) for a in (w, b, w1, b1, w2)]
    mapping = Map("mlp", f32[0], f32[1], True, (f32[2], f32[3], f32[4]))
    plain = x @ w + b + np.maximum(x @ w1 + b1, 0) @ w2
    got = mapping.apply(x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, unit(plain), atol=1e-5)
    np.testing.assert_allclose(mapping.apply(x[:1]), got[:1], atol=1e-6)  # one query as many


def test_a_map_round_trips_through_its_bytes() -> None:
    x, y = RNG.standard_normal((200, 8)), RNG.standard_normal((200, 6))
    mapping = fit(MapSpec("mlp", hidden=8, epochs=2), x, y, normalize=True, seed=0)
    again = Map.from_bytes(mapping.to_bytes(), "m.npz")
    assert again.to_bytes() == mapping.to_bytes()
    np.testing.assert_array_equal(again.apply(x), mapping.apply(x))


@pytest.mark.parametrize("data", [b"not a map", b"", b"PK\x03\x04 torn"])
def test_bytes_that_are_not_a_map_are_refused_in_one_line(data: bytes) -> None:
    with pytest.raises(StoreError, match=r"^adapter file m\.npz is not a map"):
        Map.from_bytes(data, "m.npz")


def test_a_map_whose_layers_do_not_fit_together_is_refused() -> None:
    w = np.zeros((8, 5), np.float32)
    bad = Map("mlp", w, np.zeros(5, np.float32), True, (w, np.zeros(5, np.float32), w))
    with pytest.raises(StoreError, match="not a map embedmig wrote"):
        Map.from_bytes(bad.to_bytes(), "m.npz")


def test_a_fit_needs_two_pairs_of_one_count() -> None:
    with pytest.raises(ConfigError, match="at least 2 paired vectors, got 1"):
        fit(MapSpec(), np.ones((1, 4)), np.ones((1, 4)), normalize=True, seed=0)
    with pytest.raises(ConfigError, match="at least 2 paired vectors"):
        fit(MapSpec(), np.ones((3, 4)), np.ones((2, 4)), normalize=True, seed=0)
