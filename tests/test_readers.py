"""Readers in view: every searcher reports the index it holds and follows a swap between queries;
`status` shows a reader stalled or skew after a swap, `upgrade --wait-readers` waits for
convergence, and `prune` keeps a file a reader still holds."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from embedmig import Config, ConfigError, ReadersBehind, command, open_searcher
from embedmig.environment import Environment
from embedmig.history import schema
from embedmig.store import clock, readers
from tests.support import edit, embedmig, snapshot

READER = Path(__file__).with_name("live_reader.py")
FAST = "readers.heartbeat_seconds = 0.1\nreaders.skew_seconds = 0.5\nreaders.silent_seconds = 30\n"


def two_revisions(config: Config) -> Config:
    """`docs` built by model `a` (r1, live) and r2 moving it to `near`, not yet run."""
    ini = config.root / "embedmig.ini"
    ini.write_text(ini.read_text() + FAST)
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.revision(config, "second", alias="docs", new="models/near", rev_id="r2")
    config = Config(ini)
    command.upgrade(config, "r1")
    return config


class Reader:
    """A searcher in a process of its own, driven line by line."""

    def __init__(self, project: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(READER), str(project)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def say(self, line: str) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return self.process.stdout.readline().strip()

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        assert self.process.wait(timeout=60) == 0


@pytest.fixture
def reader_process(any_db: Config) -> Iterator[tuple[Config, Reader]]:
    config = two_revisions(any_db)
    reader = Reader(config.root)
    try:
        yield config, reader
    finally:
        if reader.process.poll() is None:
            reader.process.kill()


def states(config: Config) -> list[str]:
    (docs,) = command.status(config, "docs")
    return [r.state for r in docs.readers]


def settle(config: Config, wanted: list[str], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while states(config) != wanted:
        assert time.monotonic() < deadline, states(config)
        time.sleep(0.05)


@pytest.mark.process
@pytest.mark.waits
def test_an_idle_reader_follows_the_swap_between_queries_and_lets_its_old_index_go(
    reader_process: tuple[Config, Reader],
) -> None:
    config, reader = reader_process
    assert reader.say("search") == "served #1"
    settle(config, ["live"])
    (report,) = command.upgrade(config, "r2", wait_readers=30)  # no query comes meanwhile
    assert 0 <= report.timings["readers_converged_s"] < 30
    shown = embedmig(config.root, "status", "docs")
    assert shown.returncode == 0 and "on index #2: live" in shown.stdout
    dropped = command.prune(config, "docs", keep=0)
    assert [r.id for r in dropped.dropped] == [1] and dropped.held == []
    assert reader.say("search") == "served #2"
    reader.close()
    assert states(config) == []  # a reader that closed leaves no row


@pytest.mark.process
@pytest.mark.waits
def test_a_frozen_reader_is_stalled_not_gone_it_keeps_its_index_and_fails_wait_readers(
    reader_process: tuple[Config, Reader],
) -> None:
    config, reader = reader_process
    ini = config.root / "embedmig.ini"
    edit(ini, "silent_seconds = 30", "silent_seconds = 1")
    config = Config(ini)
    assert reader.say("search") == "served #1"
    settle(config, ["live"])
    reader.process.send_signal(signal.SIGSTOP)  # a debugger, a VM pause: no heartbeat, alive
    try:
        settle(config, ["stalled"])
        with pytest.raises(ReadersBehind, match=r"1 reader\(s\)") as behind:
            command.upgrade(config, "r2", wait_readers=0.5)
        assert [(r.state, r.reader.index_id) for r in behind.value.readers] == [("stalled", 1)]
        pruned = embedmig(config.root, "prune", "docs", "--keep", "0")
        assert "kept index #1 (r1): a reader still serves it" in pruned.stdout
        shown = embedmig(config.root, "status", "docs")
        assert shown.returncode == 1 and "on index #1: stalled" in shown.stdout
    finally:
        reader.process.send_signal(signal.SIGCONT)
    settle(config, ["live"])  # it follows the swap at its next heartbeat
    assert [r.id for r in command.prune(config, "docs", keep=0).dropped] == [1]
    reader.close()


def test_a_reader_that_cannot_follow_is_skew_and_keeps_its_file(config: Config) -> None:
    config = two_revisions(config)
    command.upgrade(config, "r2")
    env = Environment(config)
    with env.engine.begin() as conn:  # a reader elsewhere that reports, but stays on #1
        readers.beat(conn, readers.Beat("old", "docs", "elsewhere", 7, 1, None, 3, None, _now()))
    env.dispose()
    settle(config, ["skew"])  # past readers.skew_seconds after the swap
    shown = embedmig(config.root, "status")
    assert shown.returncode == 1
    assert "docs: index #2 since" in shown.stdout and "on index #1: skew for" in shown.stdout
    assert shown.stderr.startswith("embedmig: error: 1 reader(s) flagged: docs: pid ")
    pruned = embedmig(config.root, "prune", "docs", "--keep", "0")
    assert pruned.returncode == 0, pruned.stderr
    assert "kept index #1 (r1): a reader still serves it" in pruned.stdout


def test_a_heartbeat_from_a_host_whose_clock_runs_behind_is_not_silent(
    any_db: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = two_revisions(any_db)

    class Behind(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return datetime.now(tz) - timedelta(hours=2)

    env = Environment(config)
    with monkeypatch.context() as behind:
        behind.setattr(clock, "datetime", Behind)  # every clock of that host says so
        with env.engine.begin() as conn:
            readers.beat(
                conn, readers.Beat("far", "docs", "behind-host", 7, 1, None, 3, None, clock.now())
            )
    env.dispose()
    assert states(config) == ["live"]
    assert [r.id for r in command.prune(config, "docs", keep=0).held] == []
    (docs,) = command.status(config, "docs")
    assert docs.readers[0].reader.host == "behind-host"


def _now() -> datetime:
    return datetime.now(UTC)


def test_upgrade_waits_until_a_busy_reader_serves_the_new_index(config: Config) -> None:
    config = two_revisions(config)
    stop = threading.Event()

    def serve() -> None:  # a busy reader: it picks the swap up at its next query
        with open_searcher(config, "docs") as searcher:
            while not stop.is_set():
                searcher.search("protein folding", k=3)

    busy = threading.Thread(target=serve)
    busy.start()
    try:
        settle(config, ["live"])
        (report,) = command.upgrade(config, "r2", wait_readers=30)
        assert 0 <= report.timings["readers_converged_s"] < 30
        assert states(config) == ["live"]
    finally:
        stop.set()
        busy.join()


def test_a_reader_that_closes_removes_its_heartbeat(config: Config) -> None:
    config = two_revisions(config)
    with open_searcher(config, "docs") as searcher:
        searcher.search("protein folding", k=3)
        settle(config, ["live"])
        (docs,) = command.status(config)
        (seen,) = docs.readers
        assert (seen.reader.index_id, seen.reader.served, seen.reader.drift) == (1, 1, None)
    assert states(config) == []


def test_no_heartbeat_when_it_is_turned_off(config: Config) -> None:
    config = two_revisions(config).with_options(**{"readers.heartbeat_seconds": 0})
    with open_searcher(config, "docs") as searcher:
        searcher.search("protein folding", k=3)
        time.sleep(0.3)
        assert states(config) == []


def test_a_reader_gone_silent_is_flagged_and_forgotten_by_prune(config: Config) -> None:
    config = two_revisions(config)
    env = Environment(config)
    with env.engine.begin() as conn:  # a reader on another host that stopped reporting
        readers.beat(
            conn,
            readers.Beat("dead", "docs", "elsewhere", 7, 1, None, 3, None, started_at=_long_ago()),
        )
        conn.execute(schema.reader.update().values(heartbeat_at=_long_ago()))
    env.dispose()
    assert states(config) == ["silent"]
    assert embedmig(config.root, "status", "docs").returncode == 1
    pruned = command.prune(config, "docs")
    assert pruned.forgotten == 1 and states(config) == []


def _long_ago() -> datetime:
    return datetime.now(UTC) - timedelta(hours=1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("status", "nope"), "alias 'nope' has no live index and no readers"),
        (("upgrade", "r2", "--wait-readers", "-1"), "--wait-readers must be 0 to 86400 seconds"),
        (("upgrade", "r2", "--dry-run", "--wait-readers", "5"), "--wait-readers is for an upgrade"),
    ],
)
def test_bad_reader_arguments_are_one_line_and_change_nothing(
    config: Config, args: tuple[str, ...], message: str
) -> None:
    config = two_revisions(config)
    before = snapshot(config)
    ran = embedmig(config.root, *args)
    (line,) = ran.stderr.strip().splitlines()
    assert ran.returncode == 1 and line.startswith("embedmig: error: ") and message in line
    assert snapshot(config) == before


def test_a_bad_readers_option_is_a_config_error(config: Config) -> None:
    config = two_revisions(config).with_options(**{"readers.skew_seconds": "soon"})
    with pytest.raises(ConfigError, match=r"readers\.skew_seconds"):
        command.status(config)
