"""Index files: atomic, checksummed saves; verified loads; the spool's last-write-wins build."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedmig import StoreError
from embedmig.store import files


def vectors(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


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
        files.safe_component(name, "alias")
