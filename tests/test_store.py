"""Index files: atomic, checksummed saves; verified loads; the spool's last-write-wins build;
a snapshot with its journal tail applied in memory (the overlay)."""

from __future__ import annotations

import os
from pathlib import Path

import faiss
import numpy as np
import pytest
import sqlalchemy as sa

from embedmig import (
    Config,
    HistoryError,
    StoreError,
    command,
    names,
    open_searcher,
    open_writer,
)
from embedmig.store import files, journal
from embedmig.store.overlay import Overlay
from tests.support import (
    cli,
    embedmig,
    first_index,
    indexed,
    one_line_error,
    seen,
    snapshot,
)


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


# ---- refused inputs (each found by a probe; each failed before its fix) --------------------


def test_an_unwritable_index_folder_is_refused_before_embedding(
    config: Config, project: Path
) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="aaa111")
    blocked = Config(config.path, options={"index_dir": "corpus.jsonl/indexes"})
    command.current(blocked)
    before = snapshot(blocked)
    with pytest.raises(StoreError, match="not writable"):
        command.upgrade(blocked)
    assert snapshot(blocked) == before


def test_a_history_schema_newer_than_embedmig_is_refused(config: Config) -> None:
    first_index(config, "aaa111")
    engine = sa.create_engine(config.url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE embedmig_schema_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(HistoryError, match="newer than this embedmig"):
        command.current(config)


def test_a_history_database_that_is_not_sqlite_or_is_read_only_is_one_line(
    config: Config, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    (project / "not.db").write_text("this is not a database\n" * 100)
    ini = project / "embedmig.ini"
    original = ini.read_text()
    ini.write_text(original.replace("sqlite:///embedmig.db", "sqlite:///not.db"))
    code, _, err = cli(capsys, "current")
    assert code == 1 and err.strip() == (
        f"embedmig: error: cannot open history database sqlite:///{project}/not.db: "
        "file is not a database"
    )
    ini.write_text(original)
    command.upgrade(config, "head")
    ini.write_text(
        original.replace(
            "sqlite:///embedmig.db", f"sqlite:///file:{project}/embedmig.db?mode=ro&uri=true"
        )
    )
    capsys.readouterr()
    code, _, err = cli(capsys, "-q", "stamp", "base")
    assert len(err.strip().splitlines()) == 1, err
    (line,) = err.strip().splitlines()
    assert (
        code == 1
        and line == "embedmig: error: history database error: attempt to write a readonly database"
    )


def test_a_searcher_and_a_writer_refuse_a_history_database_deleted_under_them(
    refreshing: Config,
) -> None:
    config = refreshing
    first_index(config)
    database = config.root / "embedmig.db"
    searcher = open_searcher(config, "docs")
    writer = open_writer(config, "docs")
    searcher.search("protein folding")
    files = {p.name for p in config.index_dir.rglob("*.faiss")}
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    with pytest.raises(HistoryError, match="was deleted or replaced while in use"):
        writer.upsert("new-key", "Zebrafish fin regeneration depends on osteoblasts")

    def refused() -> bool:
        try:
            searcher.search("protein folding")
        except HistoryError as exc:
            assert "was deleted or replaced while in use" in str(exc)
            return True
        return False

    seen(searcher, refused, "the refusal")
    writer.close()
    searcher.close()
    assert not database.exists()  # nothing created an empty database, so nothing acknowledged
    with pytest.raises(HistoryError, match="does not exist"):
        open_writer(config, "docs")
    with pytest.raises(HistoryError, match="does not exist"):
        open_searcher(config, "docs")
    assert not database.exists()
    assert {p.name for p in config.index_dir.rglob("*.faiss")} == files
    failed = embedmig(config.root, "search", "docs", "protein folding")
    assert failed.returncode == 1 and "does not exist" in failed.stderr
    assert not database.exists()


def test_a_writer_refuses_a_history_database_replaced_under_it(config: Config) -> None:
    first_index(config)
    writer = open_writer(config, "docs")
    database = config.root / "embedmig.db"
    copy = database.with_name("copy.db")
    copy.write_bytes(database.read_bytes())
    os.replace(copy, database)  # another file at the same path: another history
    with pytest.raises(HistoryError, match="was deleted or replaced while in use"):
        writer.upsert("new-key", "Zebrafish fin regeneration depends on osteoblasts")
    writer.close()
    assert "new-key" not in indexed(config, "docs")


def test_read_only_commands_create_no_history_database(config: Config) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    (
        config.root / "embedmig.db"
    ).unlink()  # `embedmig init` made it; only an upgrade makes it again
    assert command.current(config) == [] and command.history(config) == []
    for args in (("current",), ("history",), ("show", "r1")):
        assert embedmig(config.root, *args).returncode == 0
    assert not (config.root / "embedmig.db").exists()
    one_line_error(
        config, "downgrade", "base", match="does not exist (an `embedmig upgrade` creates"
    )
