"""One migration per alias at a time: locks in SQL with a heartbeat lease."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from embedmig import Config, GateFailed, Locked, StateError, command
from embedmig.environment import Environment
from embedmig.history import schema
from embedmig.store import catalog
from tests.support import edit, embedmig, snapshot


def plant_lock(
    config: Config, alias: str, pid: int, host: str | None = None, age: float = 0.0
) -> None:
    """A lock row as another run would leave it."""
    engine = Environment(config).engine
    beat = datetime.now(UTC) - timedelta(seconds=age)
    with engine.begin() as conn:
        conn.execute(
            schema.lock.insert().values(
                alias=alias,
                owner="someone-else",
                host=host or socket.gethostname(),
                pid=pid,
                command="upgrade",
                acquired_at=beat,
                heartbeat_at=beat,
            )
        )
    engine.dispose()


def locks_held(config: Config) -> list[str]:
    engine = Environment(config).engine
    with engine.connect() as conn:
        rows = [row.alias for row in conn.execute(sa.select(schema.lock))]
    engine.dispose()
    return rows


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def two_revisions(config: Config) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.revision(config, "second", alias="docs", new="models/near", rev_id="r2")
    command.upgrade(config, "r1")


@pytest.mark.process
def test_a_locked_alias_is_refused_at_once_naming_the_holder(
    config: Config, sleeper: subprocess.Popen[bytes]
) -> None:
    two_revisions(config)
    plant_lock(config, "docs", sleeper.pid)
    before = snapshot(config)
    with pytest.raises(Locked, match=rf"pid {sleeper.pid} on {socket.gethostname()} since"):
        command.upgrade(config, "head")
    with pytest.raises(Locked):
        command.downgrade(config, "-1")
    with pytest.raises(Locked):
        command.stamp(config, "r2")
    assert snapshot(config) == before


@pytest.mark.process
def test_wait_takes_the_lock_once_its_holder_exits(config: Config) -> None:
    two_revisions(config)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    threading.Thread(target=holder.wait, daemon=True).start()  # reaped, so its pid really ends
    plant_lock(config, "docs", holder.pid)
    command.upgrade(config, "head", wait=30)
    assert command.current(config)[0].revision == "r2"
    assert locks_held(config) == []


@pytest.mark.process
def test_a_dead_holder_on_this_host_is_taken_over(config: Config) -> None:
    two_revisions(config)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    plant_lock(config, "docs", gone.pid)
    command.upgrade(config, "head")
    assert command.current(config)[0].revision == "r2" and locks_held(config) == []


def test_a_remote_holder_is_dead_once_its_heartbeat_is_older_than_the_lease(config: Config) -> None:
    two_revisions(config)
    plant_lock(config, "docs", 1, host="other-host", age=5)
    with pytest.raises(Locked, match="other-host"):
        command.upgrade(config, "head")
    ini = config.path
    assert ini is not None
    stale = Config(ini, options={"lock.lease_seconds": 2})
    command.upgrade(stale, "head")
    assert command.current(config)[0].revision == "r2"


@pytest.mark.process
def test_other_aliases_are_not_blocked(config: Config, sleeper: subprocess.Popen[bytes]) -> None:
    command.revision(config, "docs", alias="docs", new="models/a", rev_id="d1")
    command.revision(config, "faq", alias="faq", new="models/a", rev_id="f1")
    plant_lock(config, "docs", sleeper.pid)
    command.upgrade(config, "faq@head")
    assert [(s.alias, s.revision) for s in command.current(config)] == [("faq", "f1")]


def test_the_lock_is_released_after_a_failure(config: Config) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.revision(config, "second", alias="docs", new="models/far", rev_id="r2")
    path = next((config.script_location / "versions").glob("r2_*.py"))
    edit(path, "min_overlap_at_10=0.5", "min_overlap_at_10=0.99")
    with pytest.raises(GateFailed):
        command.upgrade(config, "head")
    assert locks_held(config) == []


@pytest.mark.process
def test_unlock_refuses_a_live_holder_unless_forced(
    config: Config, sleeper: subprocess.Popen[bytes]
) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    plant_lock(config, "docs", sleeper.pid)
    with pytest.raises(Locked, match="--force"):
        command.unlock(config, "docs")
    assert locks_held(config) == ["docs"]
    assert command.unlock(config, "docs", force=True).pid == sleeper.pid
    assert locks_held(config) == []
    with pytest.raises(StateError, match="not locked"):
        command.unlock(config, "docs")


SLOW_ENV = """
import time
from embedmig import sources

def corpus(config, alias):
    for doc in sources.corpus_from_config(config):
        time.sleep(0.01)  # a slow source keeps the migration running for a few seconds
        yield doc
"""


def start_upgrade(project: Path, target: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from embedmig.cli import main; sys.exit(main(sys.argv[1:]))",
            "-q",
            "upgrade",
            target,
        ],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_lock(config: Config, alias: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while alias not in locks_held(config):
        assert time.monotonic() < deadline, "the other run never took its lock"
        time.sleep(0.1)


@pytest.mark.process
@pytest.mark.waits
def test_a_running_upgrade_blocks_a_second_one_on_the_same_alias(
    config: Config, project: Path
) -> None:
    (project / "migrations" / "env.py").write_text(SLOW_ENV)
    two_revisions(config)
    running = start_upgrade(project, "head")
    try:
        wait_for_lock(config, "docs")
        with pytest.raises(
            Locked, match=rf"upgrade by pid {running.pid} on {socket.gethostname()}"
        ):
            command.upgrade(config, "head")
    finally:
        _, err = running.communicate(timeout=300)
    assert running.returncode == 0, err
    assert command.current(config)[0].revision == "r2" and locks_held(config) == []


@pytest.mark.process
@pytest.mark.waits
def test_migrations_of_different_aliases_run_at_the_same_time(
    config: Config, project: Path
) -> None:
    (project / "migrations" / "env.py").write_text(SLOW_ENV)
    command.revision(config, "docs", alias="docs", new="models/a", rev_id="d1")
    command.revision(config, "faq", alias="faq", new="models/near", rev_id="f1")
    command.current(config)
    runs = [start_upgrade(project, "docs@head"), start_upgrade(project, "faq@head")]
    wait_for_lock(config, "docs")
    wait_for_lock(config, "faq")  # each takes its own lock; neither waits for the other
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
    assert {(s.alias, s.revision) for s in command.current(config)} == {
        ("docs", "d1"),
        ("faq", "f1"),
    }


FAR_HOST_UPGRADE = """
import socket, sys
socket.gethostname = lambda: "far-host"  # judged by its heartbeats, as a holder on another host
from embedmig.cli import main
sys.exit(main(["-q", "upgrade", "head"]))
"""

# The same, on a host whose clock runs two hours behind: every clock of the process says so.
BEHIND_HOST_UPGRADE = (
    """
import datetime as dt
class Behind(dt.datetime):
    @classmethod
    def now(cls, tz=None):
        return dt.datetime.now(tz) - dt.timedelta(hours=2)
import embedmig.store.clock, embedmig.store.locks
embedmig.store.clock.datetime = embedmig.store.locks.datetime = Behind
"""
    + FAR_HOST_UPGRADE
)


def start_far(project: Path, script: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def checkpointed(config: Config) -> bool:
    engine = Environment(config).engine
    with engine.connect() as conn:
        found = conn.execute(sa.select(schema.checkpoint)).first() is not None
    engine.dispose()
    return found


@pytest.mark.process
@pytest.mark.waits
def test_a_paused_holder_whose_lock_was_taken_over_stops_before_its_next_change(
    config: Config, project: Path
) -> None:
    (project / "migrations" / "env.py").write_text(SLOW_ENV)
    ini = project / "embedmig.ini"
    edit(ini, "checkpoint_every = 1024", "checkpoint_every = 16\nlock.lease_seconds = 1")
    two_revisions(config)
    paused = start_far(project, FAR_HOST_UPGRADE)
    try:
        deadline = time.monotonic() + 120
        while not checkpointed(config):
            assert time.monotonic() < deadline and paused.poll() is None, "no checkpoint"
            time.sleep(0.05)
        paused.send_signal(signal.SIGSTOP)  # a VM pause, a long GC: its heartbeat stops
        time.sleep(1.5)  # past the lease
        command.upgrade(Config(ini), "head")  # takes the lock over, resumes the build, swaps
        swapped = snapshot(config)
    finally:
        paused.send_signal(signal.SIGCONT)
        _, err = paused.communicate(timeout=300)
    assert paused.returncode != 0
    assert "lost the migration lock of 'docs'" in err and "Traceback" not in err
    assert snapshot(config) == swapped  # the resumed holder changed nothing
    (state,) = command.current(config)
    assert state.revision == "r2" and state.live is not None and state.live.revision == "r2"


@pytest.mark.process
@pytest.mark.waits
def test_a_holder_whose_clock_runs_behind_is_not_taken_for_dead(
    config: Config, project: Path
) -> None:
    (project / "migrations" / "env.py").write_text(SLOW_ENV)
    two_revisions(config)
    behind = start_far(project, BEHIND_HOST_UPGRADE)
    try:
        wait_for_lock(config, "docs")
        with pytest.raises(Locked, match=r"upgrade by pid .* on far-host"):
            command.upgrade(config, "head")
    finally:
        _, err = behind.communicate(timeout=300)
    assert behind.returncode == 0, err
    assert command.current(config)[0].revision == "r2" and locks_held(config) == []


def strand(config: Config) -> None:
    """What a run that lost its lock could leave before fencing: recorded at head, live on none."""
    engine = Environment(config).engine
    with engine.begin() as conn:
        catalog.point_alias(conn, "docs", "r2", None)
    engine.dispose()


def test_recover_points_an_alias_live_on_no_index_back_at_the_last_index_it_served(
    config: Config, project: Path
) -> None:
    two_revisions(config)
    command.upgrade(config, "head")
    (state,) = command.current(config)
    served = state.live
    assert served is not None
    strand(config)
    stranded = snapshot(config)
    with pytest.raises(StateError, match="no live index"):
        command.search(config, "docs", "a query", k=3)

    said = embedmig(project, "recover", "docs", "--dry-run")
    assert said.returncode == 0, said.stderr
    assert said.stdout.startswith(f"would point docs at index #{served.id}")
    assert "(the last index it served)" in said.stdout and "record revision r2" in said.stdout
    assert snapshot(config) == stranded

    done = embedmig(project, "recover", "docs")
    assert done.returncode == 0 and done.stdout.startswith(f"pointed docs at index #{served.id}")
    (state,) = command.current(config)
    assert state.revision == "r2" and state.live is not None and state.live.id == served.id
    assert command.search(config, "docs", "a query", k=3)
    command.downgrade(config, "-1")  # and the chain works again
    assert command.current(config)[0].revision == "r1"


def test_recover_refuses_an_alias_that_is_live(config: Config, project: Path) -> None:
    two_revisions(config)
    before = snapshot(config)
    refused = embedmig(project, "recover", "docs")
    assert refused.returncode != 0
    assert "is live on index #1 (r1); nothing to recover" in refused.stderr
    assert snapshot(config) == before
