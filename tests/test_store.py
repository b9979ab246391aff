"""Index files: atomic, checksummed saves; verified loads; the spool's last-write-wins build;
a snapshot with its journal tail applied in memory (the overlay)."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from embedmig import StoreError, names
from embedmig.store import files, journal
from embedmig.store.overlay import Overlay


def vectors(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    unit: np.ndarray = x / np.linalg.norm(x, axis=1, keepdims=True)
    return unit


def test_saved_index_loads_back_with_its_checksum(tmp_path: Path) -> None:
    index = files.build(vectors(50), np.arange(50, dtype=np.int64) * 3, "Flat")
    sha = files.save(index, tmp_path / "a.faiss")
    loaded = files.load(tmp_path / "a.faiss", sha)
    assert loaded.ntotal == 50
    _, ids = files.search(loaded, vectors(50)[:1], 1)
    assert ids[0, 0] == 0
    assert [p.name for p in tmp_path.iterdir()] == ["a.faiss"]  # no temp file left behind


@pytest.mark.parametrize("damage", ["truncate", "flip", "append", "delete"])
def test_damaged_index_files_are_refused(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "a.faiss"
    sha = files.save(files.build(vectors(50), np.arange(50, dtype=np.int64), "Flat"), path)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:-20] + bytes([data[-20] ^ 1]) + data[-19:])
    elif damage == "append":
        path.write_bytes(data + b"\0")
    else:
        path.unlink()
    with pytest.raises(StoreError):
        files.load(path, sha)


def test_spool_build_keeps_the_last_vector_of_a_repeated_id(tmp_path: Path) -> None:
    spool = files.Spool(tmp_path / "s", 8)
    x = vectors(10)
    spool.append(np.arange(5, dtype=np.int64), x[:5])
    spool.append(np.array([2, 7], dtype=np.int64), x[5:7])
    index = spool.build("Flat")
    assert index.ntotal == 6
    np.testing.assert_allclose(index.reconstruct(2), x[5])
    np.testing.assert_allclose(index.reconstruct(7), x[6])


def test_spool_truncate_drops_rows_after_the_checkpoint(tmp_path: Path) -> None:
    spool = files.Spool(tmp_path / "s", 8)
    spool.append(np.arange(4, dtype=np.int64), vectors(4))
    spool.append(np.arange(4, 6, dtype=np.int64), vectors(2, seed=1))
    spool.truncate(4)
    assert spool.rows() == 4 and spool.build("Flat").ntotal == 4


def test_spool_trains_ivf_factories_on_its_vectors(tmp_path: Path) -> None:
    spool = files.Spool(tmp_path / "s", 8)
    spool.append(np.arange(400, dtype=np.int64), vectors(400))
    index = spool.build("IVF4,Flat")
    assert index.is_trained and index.ntotal == 400


def test_invalid_factory_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="invalid faiss index factory"):
        files.new_index(8, "NotAFactory")


@pytest.mark.parametrize("name", ["../x", "a/b", "..", "", ".x", "x..y", "a" * 65])
def test_unsafe_path_components_are_refused(name: str) -> None:
    with pytest.raises(StoreError):
        names.safe_component(name, "alias")


def _tail(
    upserts: dict[int, np.ndarray], deletes: list[int], last_seq: int, dim: int = 16
) -> journal.Tail:
    ids = np.array(list(upserts), dtype=np.int64)
    return journal.Tail(
        last_seq=last_seq,
        upsert_ids=ids,
        texts=[""] * len(ids),
        metas=[None] * len(ids),
        vectors=np.array(list(upserts.values()), dtype=np.float32).reshape(len(ids), dim),
        missing=np.empty(0, dtype=np.int64),
        deleted_ids=np.array(deletes, dtype=np.int64),
    )


@pytest.mark.parametrize("factory", ["Flat", "IVF4,Flat", "HNSW16"])
def test_overlay_answers_like_an_index_rebuilt_with_the_changes(factory: str) -> None:
    rng = np.random.default_rng(3)
    base_vectors = rng.standard_normal((400, 16)).astype(np.float32)
    base_ids = np.arange(1000, 1400, dtype=np.int64)
    base = files.build(base_vectors, base_ids, factory)
    if factory.startswith("IVF"):
        faiss.extract_index_ivf(base.index).nprobe = 4  # every list: exact, like the rebuilt one
    overlay = Overlay(base, base_seq=7)
    changed = {int(i): rng.standard_normal(16).astype(np.float32) for i in base_ids[::5]}
    added = {5000 + i: rng.standard_normal(16).astype(np.float32) for i in range(30)}
    deleted = [int(i) for i in base_ids[1::7]] + [5000]  # 5000: added, then deleted later
    overlay.apply(_tail(changed | added, [], last_seq=9))
    overlay.apply(_tail({}, deleted, last_seq=12))
    assert overlay.applied == 12

    expected = {int(i): v for i, v in zip(base_ids, base_vectors, strict=True)}
    expected |= changed | added
    for key in deleted:
        expected.pop(key)
    ids, vectors = overlay.contents()
    assert ids.tolist() == sorted(expected)
    np.testing.assert_array_equal(vectors, np.stack([expected[int(i)] for i in ids]))

    rebuilt = files.build(vectors, ids, "Flat")
    queries = rng.standard_normal((20, 16)).astype(np.float32)
    exact_scores, exact_ids = files.search(rebuilt, queries, 10)
    scores, got = overlay.search(queries, 10)
    if factory == "HNSW16":  # approximate: most of the exact neighbours, never a deleted id
        assert (
            np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact_ids, strict=True)]) > 0.8
        )
    else:
        np.testing.assert_array_equal(got, exact_ids)
        np.testing.assert_allclose(scores, exact_scores, rtol=1e-5)
    assert not set(got.ravel().tolist()) & set(deleted)

    folded = overlay.fold()
    folded_ids, folded_vectors = Overlay(folded, 12).contents()
    assert folded_ids.tolist() == ids.tolist()
    np.testing.assert_allclose(folded_vectors, vectors, atol=1e-6)
    if factory != "HNSW16":
        np.testing.assert_array_equal(files.search(folded, queries, 10)[1], got)


def test_overlay_refuses_a_tail_whose_vectors_are_not_filled() -> None:
    overlay = Overlay(files.build(np.eye(4, dtype=np.float32), np.arange(4), "Flat"), 0)
    tail = _tail({9: np.ones(4, dtype=np.float32)}, [], last_seq=1, dim=4)
    tail.missing = np.array([0])
    with pytest.raises(StoreError, match="must be filled"):
        overlay.apply(tail)
