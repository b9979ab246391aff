"""Live migration with real processes: writers keep writing while an upgrade backfills and swaps,
on SQLite (WAL) and on PostgreSQL; an open searcher in another process sees writes within 1 s."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from embedmig import Config, command, open_searcher
from embedmig.environment import Environment
from embedmig.store import journal
from tests.support import (
    assert_serves,
    corpus_rows,
    edit,
    embedmig_process,
    wait_until,
    with_options,
)

pytestmark = pytest.mark.process

WRITER = Path(__file__).with_name("live_writer.py")
WORKERS = 3
OPS = 5000  # per writer process, at most: they stop once 150 writes followed the swap


def with_source_table(project: Path, config: Config) -> Config:
    """The project's corpus is an application table that the writer processes also update."""
    source = sqlite3.connect(project / "source.db")
    source.execute("PRAGMA journal_mode=WAL")
    source.execute("CREATE TABLE docs (id TEXT PRIMARY KEY, text TEXT NOT NULL)")
    source.executemany(
        "INSERT INTO docs VALUES (?, ?)", [(r["id"], r["text"]) for r in corpus_rows(600)]
    )
    source.commit()
    source.close()
    env_py = config.script_location / "env.py"
    edit(
        env_py,
        "return sources.corpus_from_config(config)",
        f'return sources.SqlSource("sqlite:///{project}/source.db", '
        '"SELECT id, text FROM docs ORDER BY id")',
    )
    ini = project / "embedmig.ini"
    edit(ini, "checkpoint_every = 1024", "checkpoint_every = 25")
    return Config(ini)


def source_state(project: Path) -> dict[str, str]:
    source = sqlite3.connect(project / "source.db")
    rows = dict(source.execute("SELECT id, text FROM docs"))
    source.close()
    return rows


def start_writers(
    project: Path, ops: int, seed: int, workers: int = WORKERS
) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(
            [sys.executable, str(WRITER), "churn", str(project)]
            + [str(n) for n in (w, workers, ops, seed + w)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(workers)
    ]


def finish(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err


def journal_position(config: Config) -> int:
    env = Environment(config)
    with env.engine.connect() as conn:
        position = journal.position(conn, "docs")
    env.dispose()
    return position


def run_live_migration(project: Path, config: Config) -> None:
    config = with_source_table(project, config)
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.revision(config, "second", alias="docs", new="models/far", rev_id="r2")
    command.upgrade(config, "r1")

    writers = start_writers(project, OPS, seed=100)
    wait_until(  # writers are up and writing before the migration
        lambda: journal_position(config) >= 200,
        "200 journaled writes",
        alive=lambda: all(w.poll() is None for w in writers),
    )
    upgrade = embedmig_process(project, "upgrade", "r2", "--force")  # beside the writers
    assert upgrade.returncode == 0, upgrade.stderr
    at_swap = journal_position(config)
    wait_until(  # writes go on after the swap, too
        lambda: journal_position(config) >= at_swap + 150,
        "150 writes after the swap",
        alive=lambda: all(w.poll() is None for w in writers),
    )
    (project / "stop-writers").touch()
    finish(writers)
    (project / "stop-writers").unlink()
    (event,) = [e for e in command.history(config) if e.action == "upgrade" and e.revision == "r2"]
    assert event.metrics is not None
    assert any("written during the backfill were replayed" in n for n in event.metrics["notes"])

    assert_serves(config, project / "models" / "far", source_state(project))

    finish(start_writers(project, 60, seed=200, workers=1))  # one opened after the swap
    command.downgrade(config, "-1")
    assert_serves(config, project / "models" / "a", source_state(project))


@pytest.mark.waits  # writer processes and an upgrade process, which the spec waits on
def test_no_write_is_lost_or_resurrected_across_a_live_migration_on_sqlite(
    project: Path, config: Config
) -> None:
    run_live_migration(project, config)


@pytest.mark.waits
def test_no_write_is_lost_or_resurrected_across_a_live_migration_on_postgres(
    project: Path, postgres_config: Config
) -> None:
    run_live_migration(project, postgres_config)


@pytest.mark.waits
def test_a_searcher_in_another_process_sees_an_upsert_and_a_delete_within_a_second(
    config: Config,
) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.upgrade(config, "r1")
    # The default refresher (every 100 ms, off the request path), not a clock read per search.
    searcher = open_searcher(with_options(config, searcher__refresh_ms=100), "docs")
    text = "zebrafish fin regeneration osteoblast dedifferentiation"

    def top() -> str:
        return searcher.search(text, k=1)[0].key

    assert top() != "fresh-key"
    steps: list[tuple[tuple[str, ...], Callable[[], bool]]] = [
        (("once", "fresh-key", text), lambda: top() == "fresh-key"),
        (("delete", "fresh-key"), lambda: top() != "fresh-key"),
    ]
    for args, seen in steps:
        command_line = [sys.executable, str(WRITER), args[0], str(config.root), *args[1:]]
        proc = subprocess.Popen(command_line, stdout=subprocess.PIPE, text=True)
        wait_until(seen, f"{args[0]} seen", alive=partial(_alive_or_done, proc))
        seen_at = time.time()
        out, _ = proc.communicate(timeout=60)
        assert seen_at - float(out.split()[0]) < 1.0  # after its acknowledgement
    searcher.close()


def test_a_write_acknowledged_before_its_process_is_killed_is_kept(config: Config) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.upgrade(config, "r1")
    text = "zebrafish fin regeneration osteoblast dedifferentiation"
    died = subprocess.run(
        [sys.executable, str(WRITER), "once-then-die", str(config.root), "kept-key", text],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert died.returncode == -signal.SIGKILL and died.stdout.strip(), died.stderr
    assert command.search(config, "docs", text, k=1)[0].key == "kept-key"
    assert journal_position(config) == 1


def _alive_or_done(proc: subprocess.Popen[str]) -> bool:
    return proc.poll() in (None, 0)
