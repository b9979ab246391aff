"""Specs of the command line: output for scripts, one-line errors, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from embedmig import Config
from embedmig.cli import main
from tests.support import edit, embedmig, embedmig_process, snapshot


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def revise(
    capsys: pytest.CaptureFixture[str], message: str, model: str, rev_id: str
) -> tuple[int, str, str]:
    return run(
        capsys, "revision", "-m", message, "--alias", "docs", "--new", model, "--rev-id", rev_id
    )


def test_full_cycle_through_the_cli(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert revise(capsys, "first", "models/a", "r1")[0] == 0
    code, out, _ = revise(capsys, "second", "models/near", "r2")
    assert code == 0 and "r2" in out
    assert run(capsys, "upgrade", "r1")[0] == 0
    code, out, _ = run(capsys, "upgrade", "--dry-run", "--sample", "100")
    assert code == 0 and "dry run" in out and "overlap_at_10" in out
    code, out, _ = run(capsys, "upgrade")
    assert code == 0 and out.startswith("PASS")
    code, out, _ = run(capsys, "current")
    assert out.strip().startswith("docs: r2 (head); index #")
    code, out, _ = run(capsys, "downgrade", "-1")
    assert code == 0 and "r2 -> r1" in out
    code, out, _ = run(capsys, "history", "-v")
    assert [line.split()[4] for line in out.splitlines() if not line.startswith(" ")] == [
        "downgrade",
        "upgrade",
        "dry-run",
        "upgrade",
    ]
    code, out, _ = run(capsys, "heads")
    assert out.startswith("r2 (docs) (head)")
    code, out, _ = run(capsys, "show", "r2")
    assert "Alias: docs" in out and "New: models/near" in out


def test_search_prints_only_hits_one_per_line(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "revision", "-m", "first", "--alias", "docs", "--new", "models/a")
    run(capsys, "upgrade")
    code, out, _ = run(capsys, "search", "docs", "stem cells", "-k", "4")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 4
    for rank, line in enumerate(lines, 1):
        fields = line.split("\t")
        assert len(fields) == 4 and fields[0] == str(rank)
        float(fields[2])


def test_bad_input_is_one_line_on_stderr_with_exit_1(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(Config(project / "embedmig.ini"))
    code, out, err = run(capsys, "upgrade", "nope")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("embedmig: error: ") and "Traceback" not in err
    assert snapshot(Config(project / "embedmig.ini")) == before


def test_verbose_shows_the_traceback(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--verbose", "upgrade", "nope")
    assert (
        code == 1
        and "Traceback" in err
        and err.rstrip().splitlines()[-1].startswith("embedmig: error:")
    )


def test_failed_gate_exits_3(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    revise(capsys, "first", "models/a", "r1")
    revise(capsys, "second", "models/far", "r2")
    run(capsys, "upgrade", "r1")
    path = next((project / "migrations" / "versions").glob("r2_*.py"))
    edit(path, "Gates(min_overlap_at_10=0.5", "Gates(min_overlap_at_10=0.95")
    code, out, err = run(capsys, "upgrade")
    assert code == 3 and out.startswith("FAIL") and "gate failed" in err


def test_missing_config_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "current")
    assert code == 1 and "embedmig init" in err


def test_unreachable_database_is_a_clear_error(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ini = project / "embedmig.ini"
    edit(ini, "sqlite:///embedmig.db", "sqlite:////nonexistent/dir/x.db")
    code, _, err = run(capsys, "upgrade")
    assert code == 1 and "cannot open history database" in err


@pytest.mark.process
def test_console_script_runs(project: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from embedmig.cli import run; run()", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and "upgrade" in result.stdout


@pytest.mark.process
def test_the_process_the_specs_start_exits_with_the_commands_code(project: Path) -> None:
    failed = embedmig_process(project, "downgrade", "no-such-revision")
    assert failed.returncode == 1
    assert failed.stderr.startswith("embedmig: error: ")
    assert embedmig_process(project, "current").returncode == 0


@pytest.mark.process
def test_the_in_process_runner_gives_the_same_code_and_lines_as_the_process(project: Path) -> None:
    for args in (("downgrade", "no-such-revision"), ("search", "docs", "x", "-k", "0"), ("heads",)):
        here, there = embedmig(project, *args), embedmig_process(project, *args)
        assert (here.returncode, here.stdout, here.stderr) == (
            there.returncode,
            there.stdout,
            there.stderr,
        ), args
