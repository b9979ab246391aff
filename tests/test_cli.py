"""Specs of the command line: output for scripts, one-line errors, exit codes."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from embedmig import (
    Config,
    ConfigError,
    command,
)
from embedmig.cli import main
from tests.support import (
    cli,
    count_encodes,
    edit,
    embedmig,
    embedmig_process,
    first_index,
    one_line_error,
    snapshot,
)


def revise(
    capsys: pytest.CaptureFixture[str], message: str, model: str, rev_id: str
) -> tuple[int, str, str]:
    return cli(
        capsys, "revision", "-m", message, "--alias", "docs", "--new", model, "--rev-id", rev_id
    )


def test_full_cycle_through_the_cli(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert revise(capsys, "first", "models/a", "r1")[0] == 0
    code, out, _ = revise(capsys, "second", "models/near", "r2")
    assert code == 0 and "r2" in out
    assert cli(capsys, "upgrade", "r1")[0] == 0
    code, out, _ = cli(capsys, "upgrade", "--dry-run", "--sample", "100")
    assert code == 0 and "dry run" in out and "overlap_at_10" in out
    code, out, _ = cli(capsys, "upgrade")
    assert code == 0 and out.startswith("PASS")
    code, out, _ = cli(capsys, "current")
    assert out.strip().startswith("docs: r2 (head); index #")
    code, out, _ = cli(capsys, "downgrade", "-1")
    assert code == 0 and "r2 -> r1" in out
    code, out, _ = cli(capsys, "history", "-v")
    assert [line.split()[4] for line in out.splitlines() if not line.startswith(" ")] == [
        "downgrade",
        "upgrade",
        "dry-run",
        "upgrade",
    ]
    code, out, _ = cli(capsys, "heads")
    assert out.startswith("r2 (docs) (head)")
    code, out, _ = cli(capsys, "show", "r2")
    assert "Alias: docs" in out and "New: models/near" in out


def test_search_prints_only_hits_one_per_line(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli(capsys, "revision", "-m", "first", "--alias", "docs", "--new", "models/a")
    cli(capsys, "upgrade")
    code, out, _ = cli(capsys, "search", "docs", "stem cells", "-k", "4")
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
    code, out, err = cli(capsys, "upgrade", "nope")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("embedmig: error: ") and "Traceback" not in err
    assert snapshot(Config(project / "embedmig.ini")) == before


def test_verbose_shows_the_traceback(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "--verbose", "upgrade", "nope")
    assert (
        code == 1
        and "Traceback" in err
        and err.rstrip().splitlines()[-1].startswith("embedmig: error:")
    )


def test_failed_gate_exits_3(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    revise(capsys, "first", "models/a", "r1")
    revise(capsys, "second", "models/far", "r2")
    cli(capsys, "upgrade", "r1")
    path = next((project / "migrations" / "versions").glob("r2_*.py"))
    edit(path, "Gates(min_overlap_at_10=0.5", "Gates(min_overlap_at_10=0.95")
    code, out, err = cli(capsys, "upgrade")
    assert code == 3 and out.startswith("FAIL") and "gate failed" in err


def test_missing_config_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, "current")
    assert code == 1 and "embedmig init" in err


def test_unreachable_database_is_a_clear_error(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ini = project / "embedmig.ini"
    edit(ini, "sqlite:///embedmig.db", "sqlite:////nonexistent/dir/x.db")
    code, _, err = cli(capsys, "upgrade")
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


# ---- refused inputs (each found by a probe; each failed before its fix) --------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["upgrade", "nope"],
        ["downgrade", "nope"],
        ["show", "nope"],
        ["stamp", "nope"],
        ["search", "docs", "query"],
        ["revision", "-m", "x", "--alias", "../x", "--new", "models/a"],
        ["report", "nope"],
        ["unlock", "docs"],
    ],
)
def test_cli_errors_are_one_line(
    project: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    config = Config(project / "embedmig.ini")
    command.current(config)
    before = snapshot(config)
    assert main(argv) == 1
    _, err = capsys.readouterr()
    assert err.startswith("embedmig: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert snapshot(config) == before


def test_a_report_path_that_cannot_be_written_is_refused_before_anything_changes(
    config: Config, project: Path
) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    (project / "afile").write_text("")
    one_line_error(config, "upgrade", "--report", "afile/x.json", match="not a directory")
    with pytest.raises(ConfigError, match="is a directory"):
        command.upgrade(config, "head", report_path=project)


def test_an_unknown_option_is_warned_about_with_the_closest_name(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ini = project / "embedmig.ini"
    ini.write_text(ini.read_text() + "chekpoint_every = 10\nenv.source_url = x\n")
    with caplog.at_level(logging.WARNING, logger="embedmig"):
        Config(ini)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "unknown option 'chekpoint_every' ignored; did you mean 'checkpoint_every'?" in warning


def test_bad_evaluation_options_fail_before_anything_is_embedded(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    encoded = count_encodes(monkeypatch)
    ini = config.root / "embedmig.ini"
    edit(ini, "eval.k = 10", "eval.k = 0")
    one_line_error(config, "upgrade", match="option 'eval.k' must be at least 1, got 0")
    assert encoded == []


@pytest.mark.parametrize(
    "option, value, match",
    [
        ("eval.k", "1000000000", "must be at most 10,000"),
        ("eval.pair_docs", "1000000", "must be at most 5,000"),
        ("eval.seed", "-1", "must be at least 0"),
    ],
)
def test_options_whose_size_becomes_memory_are_bounded(
    config: Config, option: str, value: str, match: str
) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    ini = config.root / "embedmig.ini"
    text = re.sub(rf"^{re.escape(option)} = .*\n", "", ini.read_text(), flags=re.M)
    ini.write_text(text + f"{option} = {value}\n")
    one_line_error(config, "upgrade", match=f"option {option!r} {match}")


def test_an_ini_file_with_a_byte_order_mark_is_read(config: Config) -> None:
    ini = config.root / "embedmig.ini"
    ini.write_bytes(b"\xef\xbb\xbf" + ini.read_bytes())
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    assert embedmig(config.root, "upgrade", "r1").returncode == 0
    assert command.current(Config(ini))[0].revision == "r1"


def test_a_non_utf8_byte_in_the_ini_file_names_its_line(config: Config) -> None:
    ini = config.root / "embedmig.ini"
    lines = ini.read_bytes().splitlines(keepends=True)
    lines.insert(3, b"# caf\xe9\n")
    ini.write_bytes(b"".join(lines))
    one_line_error(config, "current", match="line 4 is not UTF-8 (byte 0xe9)")


def test_a_config_path_that_is_a_directory_says_so(config: Config) -> None:
    one_line_error(config, "-c", str(config.root / "migrations"), "current", match="is a directory")


@pytest.mark.parametrize("sample", ["0", "0%", "150%", "1e3", "-5", "ten"])
def test_every_bad_sample_is_one_rule_and_exit_1(config: Config, sample: str) -> None:
    first_index(config)
    command.revision(config, "second", alias="docs", new="models/near", rev_id="r2")
    one_line_error(
        config,
        "upgrade",
        "--dry-run",
        "--sample",
        sample,
        match=f"--sample must be a number of documents (1 or more) or a share of the corpus "
        f"like 10% (above 0%, at most 100%), got {sample!r}",
    )


def test_a_sample_without_a_dry_run_is_refused(config: Config) -> None:
    first_index(config)
    command.revision(config, "second", alias="docs", new="models/near", rev_id="r2")
    one_line_error(config, "upgrade", "--sample", "10%", match="--sample is for a dry run")
