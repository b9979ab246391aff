"""A learned map from one model's space into another's, and the embedder that serves through it.

An adapter revision (``ctx.adapt()``) keeps the old index and lets the new model query it: the
new model's vectors go through a map fitted on paired embeddings of sampled documents. The map is
fitted by ``embedmig.migrate.adapter`` (torch only for the MLP); applying it is numpy here, so a
searcher or writer needs no torch and adds one small matrix product per query.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
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
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        y = x @ self.weight + self.bias
        if self.hidden is not None:
            w1, b1, w2 = self.hidden
            y += np.maximum(x @ w1 + b1, 0.0) @ w2
        if self.normalize:
            norms = np.linalg.norm(y, axis=1, keepdims=True)
            y /= np.where(norms > 0, norms, 1.0)
        out: np.ndarray = y.astype(np.float32, copy=False)
        return out

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
        except (OSError, ValueError, KeyError) as exc:
            raise StoreError(f"adapter file {where} is not a map: {exc}") from None
        if found.kind not in MAP_KINDS or found.bias.shape != (found.out_dim,):
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
        self._fingerprint = hashlib.sha256(f"{inner.fingerprint}\0{sha256}".encode()).hexdigest()

    def describe(self) -> str:
        return f"{self.inner.describe()} through a {self.map.kind} map"

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self.map.apply(self.inner.encode_documents(texts))

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.map.apply(self.inner.encode_queries(texts))

    def encode_uncached(self, texts: Sequence[str], kind: str) -> np.ndarray:
        return self.map.apply(self.inner.encode_uncached(texts, kind))

    def close(self) -> None:
        self.inner.close()
