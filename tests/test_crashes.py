"""Fault injection: an upgrade killed (SIGKILL) at any point, then run again, ends correct and
verified; an embedder failure and a full disk are one-line errors that leave a resumable state."""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedmig import Config, EmbedderError, StoreError, command
from embedmig.environment import Environment
from embedmig.store import catalog, checkpoints, docids, events, files
from tests.crash_runner import ADAPTER_POINTS, POINTS, ROLLBACK_POINTS
from tests.support import CrashRunner, corpus_rows, count_encodes, edit, index_file, snapshot


def kill_upgrade_at(runner: CrashRunner, project: Path, point: str, *command_line: str) -> None:
    """`embedmig upgrade head` (or ``command_line``) in a child that SIGKILLs itself at ``point``."""
    died = runner.run(project, point, command_line or ("upgrade", "head"))
    assert died.get("signal") == signal.SIGKILL, died


def prepared(project: Path) -> Config:
    ini = project / "embedmig.ini"
    edit(ini, "checkpoint_every = 1024", "checkpoint_every = 50")
    config = Config(ini)
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.revision(config, "second", alias="docs", new="models/near", rev_id="r2")
    command.upgrade(config, "r1")
    return config


def assert_correct_final_state(config: Config, models: dict[str, Path]) -> None:
    from sentence_transformers import SentenceTransformer

    (state,) = command.current(config)
    assert state.revision == "r2" and state.live is not None and state.live.ntotal == 300
    index = files.load(
        index_file(config, state.live), state.live.sha256
    )  # verified against its sha256
    env = Environment(config)
    with env.engine.connect() as conn:
        live = [i for i in catalog.indexes(conn, "docs") if i.state == "live"]
        upgrades = [e for e in events.history(conn, "docs", "r2") if e.action == "upgrade"]
        ids = docids.lookup_ids(conn, "docs", ["33370", "8764879"])
    env.dispose()
    assert len(live) == 1 and [e.status for e in upgrades] == ["ok"]
    texts = {row["id"]: row["text"] for row in corpus_rows(300)}
    model = SentenceTransformer(str(models["near"]), device="cpu")
    expected = model.encode([texts["33370"], texts["8764879"]], normalize_embeddings=True)
    got = np.stack([index.reconstruct(ids["33370"]), index.reconstruct(ids["8764879"])])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    leftovers = [
        p.name
        for p in config.index_dir.rglob("*")
        if p.suffix in (".vec", ".ids") or ".tmp-" in p.name
    ]
    assert leftovers == []


@pytest.mark.process
@pytest.mark.parametrize("point", sorted(POINTS))
def test_an_upgrade_killed_anywhere_ends_correct_after_a_rerun(
    project: Path, models: dict[str, Path], point: str, crash_runner: CrashRunner
) -> None:
    config = prepared(project)
    kill_upgrade_at(crash_runner, project, point)
    (state,) = command.current(config)
    assert state.revision in ("r1", "r2")  # the state before or after, nothing in between
    if point != "after-swap-commit":
        assert state.revision == "r1" and state.live is not None and state.live.revision == "r1"
    command.upgrade(config, "head")
    assert_correct_final_state(config, models)


@pytest.mark.process
@pytest.mark.parametrize("point", sorted(ADAPTER_POINTS))
def test_an_adapter_upgrade_killed_anywhere_ends_on_one_verified_map_after_a_rerun(
    project: Path, point: str, crash_runner: CrashRunner
) -> None:
    config = Config(project / "embedmig.ini")
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    rev = command.revision(
        config, "adapt", alias="docs", new="models/near", rev_id="r2", adapter="procrustes"
    )
    path = Path(rev.path)
    edit(path, "Gates()", "Gates(min_adapter_overlap_at_10=0.0)")
    command.upgrade(config, "r1")
    kill_upgrade_at(crash_runner, project, point)
    (state,) = command.current(config)
    assert state.revision == "r1" and state.adapter is None
    command.upgrade(config, "head")
    (state,) = command.current(config)
    assert state.revision == "r2" and state.adapter is not None and state.live is not None
    env = Environment(config)
    with env.engine.connect() as conn:
        maps = catalog.adapters(conn, "docs")
        adapted = [e for e in events.history(conn, "docs", "r2") if e.action == "adapter"]
    stored = env.file_of(state.adapter)
    env.dispose()
    assert [m.state for m in maps] == ["live"] and [e.status for e in adapted] == ["ok"]
    assert files.read_bytes(stored, state.adapter.sha256, "map")  # the file its row names
    assert [p.name for p in stored.parent.iterdir() if ".tmp-" in p.name] == []


@pytest.mark.process
def test_a_rerun_after_a_kill_embeds_only_what_was_not_checkpointed(
    project: Path, monkeypatch: pytest.MonkeyPatch, crash_runner: CrashRunner
) -> None:
    config = prepared(project)
    kill_upgrade_at(crash_runner, project, "before-checkpoint")
    env = Environment(config)
    with env.engine.connect() as conn:
        (building,) = [i for i in catalog.indexes(conn, "docs") if i.state == "building"]
        rows = checkpoints.checkpoint(conn, building.id).rows
    env.dispose()
    assert rows == 100  # two batches of 50 committed; the third died before its commit
    encoded = count_encodes(monkeypatch)
    command.upgrade(config, "head")
    backfill_batches = [n for n in encoded if n <= 50]
    assert sum(backfill_batches[:4]) == 200  # 300 - 100: the committed batches were not redone


def test_an_embedder_that_fails_mid_backfill_is_a_one_line_error(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sentence_transformers import SentenceTransformer

    config = prepared(project)
    calls = {"n": 0}
    real = SentenceTransformer.encode

    def flaky(self: SentenceTransformer, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("CUDA error: device-side assert")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SentenceTransformer, "encode", flaky)
    with pytest.raises(EmbedderError, match="failed to encode a batch: RuntimeError: CUDA error"):
        command.upgrade(config, "head")
    assert command.current(config)[0].revision == "r1"
    monkeypatch.setattr(SentenceTransformer, "encode", real)
    command.upgrade(config, "head")
    assert command.current(config)[0].revision == "r2"


def test_a_full_disk_is_a_one_line_error_and_leaves_the_alias_alone(
    project: Path, monkeypatch: pytest.MonkeyPatch, models: dict[str, Path]
) -> None:
    config = prepared(project)
    real_fsync = os.fsync
    calls = {"n": 0}

    def full(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 3:  # the second batch's vectors: the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    before = snapshot(config)["embedmig_version"]
    with pytest.raises(StoreError, match="No space left on device"):
        command.upgrade(config, "head")
    assert snapshot(config)["embedmig_version"] == before
    assert command.current(config)[0].live is not None
    monkeypatch.setattr(os, "fsync", real_fsync)
    command.upgrade(config, "head")
    assert_correct_final_state(config, models)


@pytest.mark.process
@pytest.mark.parametrize("point", sorted(ROLLBACK_POINTS))
def test_a_downgrade_killed_anywhere_ends_on_the_previous_index_after_a_rerun(
    project: Path, point: str, crash_runner: CrashRunner
) -> None:
    config = prepared(project)
    (before,) = command.current(config)
    command.upgrade(config, "head")
    kill_upgrade_at(crash_runner, project, point, "downgrade", "r1")
    (state,) = command.current(config)
    assert state.revision in ("r1", "r2") and state.live is not None
    assert state.live.revision == state.revision  # never a version without its index
    command.downgrade(config, "r1")
    (after,) = command.current(config)
    assert after.revision == "r1" and after.live is not None and before.live is not None
    assert after.live.id == before.live.id
    files.load(index_file(config, after.live), after.live.sha256)
