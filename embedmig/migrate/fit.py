"""Fitting a map from the new model's space into the old one's, on paired document embeddings.

Three kinds, after Drift-Adapter (Vejendla, EMNLP 2025), each seeded and reproducible on a CPU:

- ``procrustes``: the orthogonal map (a rotation, semi-orthogonal when the dimensions differ)
  between the centered spaces, in closed form from one SVD. It cannot distort the new space, so
  it cannot overfit a small sample.
- ``affine``: ridge least squares ``y = xA + b``, optionally of rank ``rank`` (reduced-rank
  regression: the least-squares fit projected onto its top ``rank`` output directions).
- ``mlp``: the affine fit plus a residual ReLU layer trained with torch (Adam, cosine loss),
  its output layer starting at zero so training starts from the affine map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedmig.embedders.adapted import Map
from embedmig.embedders.spec import MAP_KINDS
from embedmig.errors import ConfigError, ScriptError

# Ridge strength as a share of the mean feature variance: enough to keep a fit on fewer pairs
# than dimensions from interpolating its sample, far below what moves a well-posed one.
RIDGE = 0.05


@dataclass(frozen=True)
class MapSpec:
    """What ``ctx.adapt()`` / ``ctx.backfill(bridge=...)`` asked for."""

    kind: str = "procrustes"
    rank: int | None = None
    hidden: int = 512
    epochs: int = 40

    def __post_init__(self) -> None:
        # Written in a revision script: its mistakes are the script's.
        if self.kind not in MAP_KINDS:
            raise ScriptError(f"adapter kind {self.kind!r}: use one of {', '.join(MAP_KINDS)}")
        if self.rank is not None and self.kind != "affine":
            raise ScriptError(
                f"a {self.kind} map has no rank; use kind='affine' for a low-rank map"
            )
        for name in ("rank", "hidden", "epochs"):
            value = getattr(self, name)
            if value is None and name == "rank":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ScriptError(f"adapter {name} must be a positive integer, got {value!r}")

    def describe(self) -> str:
        return self.kind + (f" (rank {self.rank})" if self.rank else "")


def fit(spec: MapSpec, new: np.ndarray, old: np.ndarray, *, normalize: bool, seed: int) -> Map:
    """The map of kind ``spec.kind`` taking rows of ``new`` to the matching rows of ``old``."""
    if len(new) != len(old) or len(new) < 2:
        raise ConfigError(f"a map needs at least 2 paired vectors, got {len(new)}")
    x = new.astype(np.float64)
    y = old.astype(np.float64)
    if spec.kind == "procrustes":
        weight, bias = _procrustes(x, y)
        return Map("procrustes", _f32(weight), _f32(bias), normalize)
    weight, bias = _affine(x, y, spec.rank)
    if spec.kind == "affine":
        return Map("affine", _f32(weight), _f32(bias), normalize)
    return _mlp(spec, x, y, weight, bias, normalize, seed)


def _procrustes(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mx, my = x.mean(axis=0), y.mean(axis=0)
    u, _, vt = np.linalg.svd((x - mx).T @ (y - my), full_matrices=False)
    weight = u @ vt
    return weight, my - mx @ weight


def _affine(x: np.ndarray, y: np.ndarray, rank: int | None) -> tuple[np.ndarray, np.ndarray]:
    mx, my = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - mx, y - my
    gram = xc.T @ xc
    ridge = RIDGE * np.trace(gram) / gram.shape[0]
    weight = np.linalg.solve(gram + ridge * np.eye(gram.shape[0]), xc.T @ yc)
    if rank is not None and rank < min(weight.shape):
        _, _, vt = np.linalg.svd(xc @ weight, full_matrices=False)
        weight = weight @ vt[:rank].T @ vt[:rank]
    return weight, my - mx @ weight


def _mlp(
    spec: MapSpec,
    x: np.ndarray,
    y: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    normalize: bool,
    seed: int,
) -> Map:
    import torch  # only here: serving and the other kinds need no torch

    generator = torch.Generator().manual_seed(seed)
    xt = torch.tensor(x, dtype=torch.float32)
    yt = torch.nn.functional.normalize(torch.tensor(y, dtype=torch.float32), dim=1)
    base_w = torch.tensor(weight, dtype=torch.float32)
    base_b = torch.tensor(bias, dtype=torch.float32)
    d_in, d_out = weight.shape
    w1 = torch.empty(d_in, spec.hidden)
    torch.nn.init.kaiming_uniform_(w1, generator=generator)
    w1 = (w1 / np.sqrt(d_in)).requires_grad_()
    b1 = torch.zeros(spec.hidden, requires_grad=True)
    w2 = torch.zeros(spec.hidden, d_out, requires_grad=True)  # starts as the affine map
    head_w = base_w.clone().requires_grad_()
    head_b = base_b.clone().requires_grad_()
    params = [w1, b1, w2, head_w, head_b]
    optimizer = torch.optim.Adam(params, lr=1e-3, weight_decay=1e-4)
    batch = 256
    for _ in range(spec.epochs):
        order = torch.randperm(len(xt), generator=generator)
        for start in range(0, len(xt), batch):
            rows = order[start : start + batch]
            xb = xt[rows]
            pred = xb @ head_w + head_b + torch.relu(xb @ w1 + b1) @ w2
            loss = 1.0 - torch.nn.functional.cosine_similarity(pred, yt[rows], dim=1).mean()
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
    with torch.no_grad():
        arrays = [p.detach().numpy().copy() for p in (w1, b1, w2, head_w, head_b)]
    return Map("mlp", arrays[3], arrays[4], normalize, (arrays[0], arrays[1], arrays[2]))


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)
