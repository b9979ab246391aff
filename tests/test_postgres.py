"""The same guarantees with the history on a real PostgreSQL server (skips without one)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from embedmig import Config, GateFailed, Locked, command, open_searcher
from tests.support import CrashRunner, edit, snapshot

QUERY = "glioblastoma stem cells tumor growth"


def revisions(config: Config, second: str = "models/near") -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.revision(config, "second", alias="docs", new=second, rev_id="r2")


def test_full_cycle_on_postgres(postgres_config: Config) -> None:
    config = postgres_config
    revisions(config)
    command.upgrade(config, "r1")
    searcher = open_searcher(config, "docs")
    first = searcher.search(QUERY, k=5)
    before = snapshot(config, with_history=False)
    command.upgrade(config, "head", dry_run=True, sample=100)
    assert snapshot(config, with_history=False) == before
    command.upgrade(config, "head")
    assert searcher.index_record.revision == "r2"
    command.downgrade(config, "-1")
    assert searcher.search(QUERY, k=5) == first
    searcher.close()
    assert [e.action for e in command.history(config)] == [
        "downgrade",
        "upgrade",
        "dry-run",
        "upgrade",
    ]


def test_failing_gate_leaves_alias_unchanged_on_postgres(postgres_config: Config) -> None:
    config = postgres_config
    revisions(config, second="models/far")
    command.upgrade(config, "r1")
    path = next((config.script_location / "versions").glob("r2_*.py"))
    edit(path, "min_overlap_at_10=0.5", "min_overlap_at_10=0.99")
    with pytest.raises(GateFailed):
        command.upgrade(config, "head")
    assert command.current(config)[0].revision == "r1"


@pytest.mark.process
def test_locks_on_postgres(postgres_config: Config) -> None:
    config = postgres_config
    revisions(config)
    command.upgrade(config, "r1")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        from tests.test_locks import plant_lock

        plant_lock(config, "docs", sleeper.pid)
        with pytest.raises(Locked, match=f"pid {sleeper.pid}"):
            command.upgrade(config, "head")
    finally:
        sleeper.kill()
        sleeper.wait()
    command.upgrade(config, "head")  # the dead holder's lock is taken over
    assert command.current(config)[0].revision == "r2"


@pytest.mark.process
@pytest.mark.parametrize("point", ["before-checkpoint", "after-index-rename", "before-swap-commit"])
def test_killed_upgrade_recovers_on_postgres(
    postgres_config: Config,
    project: Path,
    models: dict[str, Path],
    point: str,
    crash_runner: CrashRunner,
) -> None:
    from tests.test_crashes import assert_correct_final_state, kill_upgrade_at, prepared

    config = prepared(project)
    assert config.url.startswith("postgresql")
    kill_upgrade_at(crash_runner, project, point)
    assert command.current(config)[0].revision == "r1"
    command.upgrade(config, "head")
    assert_correct_final_state(config, models)
