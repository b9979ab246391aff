"""Progress of a backfill: a bar with count, rate and ETA on a terminal, log lines elsewhere; the
total comes from the source when it is cheap to know, and a resumed run starts at its checkpoint."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from embedmig import Config, IterableSource, JsonlSource, SourceError, SqlSource, command
from embedmig.migrate.progress import Meter
from tests.support import FLAKY_ENV, edit, embedmig


def test_a_meter_counts_toward_its_total_with_rate_and_eta() -> None:
    meter = Meter("backfill docs", 1000, initial=200, bar=False)
    meter.update(100)
    line = meter.describe()
    assert line.startswith("backfill docs: 300 of 1,000 docs (")
    assert "/s, ETA " in line
    unknown = Meter("backfill docs", None, bar=False)
    unknown.update(5)
    assert "of" not in unknown.describe() and "ETA" not in unknown.describe()


def test_a_bar_starts_at_the_checkpoint(capsys: pytest.CaptureFixture[str]) -> None:
    meter = Meter("backfill docs", 300, initial=120, bar=True)
    meter.update(60)
    meter.close()
    drawn = capsys.readouterr().err
    assert "120/300" in drawn and "180/300" in drawn


def test_sources_tell_their_size_when_it_is_cheap(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": f"t{i}"}) + "\n" for i in range(7)))
    assert JsonlSource(path).count_documents() == 7
    path.write_text(path.read_text().rstrip("\n"))  # no newline at the end
    assert JsonlSource(path).count_documents() == 7
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE docs (id TEXT, body TEXT)")
        conn.executemany("INSERT INTO docs VALUES (?, ?)", [(str(i), "x") for i in range(11)])
    source = SqlSource(
        f"sqlite:///{db}",
        "SELECT id, body AS text FROM docs WHERE id != :skip",
        params={"skip": "3"},
    )
    assert source.count_documents() == 10
    assert SqlSource(f"sqlite:///{db}", "SELECT nonsense").count_documents() is None
    assert not hasattr(IterableSource(lambda: []), "count_documents")


def test_a_resumed_backfill_shows_its_bar_from_the_checkpoint(
    config: Config, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ini = project / "embedmig.ini"
    edit(ini, "checkpoint_every = 1024", "checkpoint_every = 40")
    config = Config(ini)
    env_py = config.script_location / "env.py"
    default = env_py.read_text()
    env_py.write_text(FLAKY_ENV)
    (project / "die-after").write_text("130")
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    with pytest.raises(SourceError):
        command.upgrade(config, "r1")
    env_py.write_text(default)  # the JSONL corpus: its size is known
    capsys.readouterr()
    command.upgrade(config, "r1", progress=True)
    drawn = capsys.readouterr().err
    assert "backfill docs:  40%" in drawn and "120/300" in drawn  # from the checkpoint
    assert "300/300" in drawn


def test_the_cli_logs_lines_when_not_on_a_terminal(config: Config, project: Path) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    done = embedmig(project, "upgrade", "r1")
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr  # no bar drawn into a pipe
