"""A learned map from one model's space into another's, and the embedder that serves through it.

An adapter revision (``ctx.adapt()``) keeps the old index and lets the new model query it: the
new model's vectors go through a map fitted on paired embeddings of sampled documents. The map is
fitted by ``embedmig.migrate.adapter`` (torch only for the MLP); applying it is numpy here, so a
searcher or writer needs no torch and adds one small matrix product per query.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from embedmig.embedders.base import LoadedEmbedder
from embedmig.embedders.spec import MAP_KINDS
from embedmig.errors import StoreError


@dataclass(frozen=True)
class Map:
    """``y = x @ weight + bias`` (+ ``relu(x @ w1 + b1) @ w2`` for an MLP), unit length when the
    target index holds unit vectors. ``weight`` is (in, out): the dimensions may differ."""

    kind: str
    weight: np.ndarray
    bias: np.ndarray
    normalize: bool
    hidden: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # w1, b1, w2

    @property
    def in_dim(self) -> int:
        return int(self.weight.shape[0])

    @property
    def out_dim(self) -> int:
        return int(self.weight.shape[1])

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        # On a search's path, one query at a time: few numpy calls, each in place where it can be.
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.hidden is None:
            y = x @ self.weight
        else:
            _, b1, w2 = self.hidden
            both = x @ self._stacked  # the linear part and the hidden layer in one BLAS call
            y, h = both[:, : self.out_dim], both[:, self.out_dim :]
            h += b1
            np.maximum(h, 0.0, out=h)
            y += h @ w2
        y += self.bias
        if self.normalize:
            norms = np.sqrt(np.einsum("ij,ij->i", y, y))[:, None]
            y /= np.maximum(norms, np.finfo(np.float32).tiny)
        out: np.ndarray = y
        return out

    @functools.cached_property
    def _stacked(self) -> np.ndarray:
        assert self.hidden is not None
        return np.ascontiguousarray(np.hstack([self.weight, self.hidden[0]]), dtype=np.float32)

    def to_bytes(self) -> bytes:
        """An ``.npz`` of the arrays and a JSON header; the same map gives the same bytes."""
        header = {"kind": self.kind, "normalize": self.normalize, "format": 1}
        arrays: dict[str, np.ndarray] = {
            "header": np.frombuffer(json.dumps(header, sort_keys=True).encode(), np.uint8),
            "weight": np.ascontiguousarray(self.weight, dtype=np.float32),
            "bias": np.ascontiguousarray(self.bias, dtype=np.float32),
        }
        if self.hidden is not None:
            for name, array in zip(("w1", "b1", "w2"), self.hidden, strict=True):
                arrays[name] = np.ascontiguousarray(array, dtype=np.float32)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]  # stubs type allow_pickle only
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> Map:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                header = json.loads(npz["header"].tobytes())
                hidden = (npz["w1"], npz["b1"], npz["w2"]) if "w1" in npz.files else None
                found = cls(
                    header["kind"], npz["weight"], npz["bias"], bool(header["normalize"]), hidden
                )
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise StoreError(f"adapter file {where} is not a map: {exc}") from None
        shapes = [found.bias.shape == (found.out_dim,)]
        if hidden is not None:
            w1, b1, w2 = hidden
            width = b1.shape[0] if b1.ndim == 1 else -1
            shapes += [w1.shape == (found.in_dim, width), w2.shape == (width, found.out_dim)]
        if found.kind not in MAP_KINDS or not all(shapes):
            raise StoreError(f"adapter file {where} is not a map embedmig wrote")
        return found

    def sha256(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()


class AdaptedEmbedder(LoadedEmbedder):
    """``inner`` (the new model) whose every vector goes through ``mapping`` into the space of
    the index it serves. Its fingerprint is the pair's: the model and the map's file."""

    def __init__(self, inner: LoadedEmbedder, mapping: Map, sha256: str) -> None:
        if inner.dim != mapping.in_dim:
            raise StoreError(
                f"the map takes {mapping.in_dim}-dimensional vectors, but "
                f"{inner.describe()} gives {inner.dim}"
            )
        super().__init__(inner.spec, inner.backend)
        self.inner = inner
        self.map = mapping
        self.meter = inner.meter
        self._dim = mapping.out_dim
        self.map_sha256 = sha256  # of the map's file
        self._fingerprint = hashlib.sha256(f"{inner.fingerprint}\0{sha256}".encode()).hexdigest()

    def describe(self) -> str:
        return f"{self.inner.describe()} through a {self.map.kind} map"

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self.map.apply(self.inner.encode_documents(texts))

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.map.apply(self.inner.encode_queries(texts))

    def encode_uncached(
        self,
        texts: Sequence[str],
        kind: str,
        keep: Callable[[list[str], np.ndarray], None] | None = None,
    ) -> np.ndarray:
        through = None if keep is None else (lambda part, got: keep(part, self.map.apply(got)))
        return self.map.apply(self.inner.encode_uncached(texts, kind, through))

    def close(self) -> None:
        self.inner.close()
