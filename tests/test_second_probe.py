"""Specs of the faults found by the second probe (45 bad inputs and faults): each failed before its
fix. Every bad input is one line on stderr, a non-zero exit, and an unchanged snapshot."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from embedmig import (
    Config,
    ConfigError,
    EmbedderError,
    IterableSource,
    SourceError,
    command,
    open_searcher,
    open_writer,
)
from embedmig.cli import main
from embedmig.embedders import Embedder
from embedmig.sources import JsonlSource
from tests.support import FLAKY_ENV, corpus_rows, count_encodes, edit, indexed, snapshot


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(
    capsys: pytest.CaptureFixture[str], config: Config, *args: str, match: str
) -> None:
    before = snapshot(config)
    capsys.readouterr()  # what earlier steps printed
    code, _, err = cli(capsys, "-q", *args)
    assert code != 0
    assert len(err.strip().splitlines()) == 1, err
    (line,) = err.strip().splitlines()
    assert line.startswith("embedmig: error: ") and match in line, line
    assert snapshot(config) == before


def killed_after_three_checkpoints(project: Path) -> Config:
    ini = project / "embedmig.ini"
    edit(ini, "checkpoint_every = 1024", "checkpoint_every = 40")
    (project / "migrations" / "env.py").write_text(FLAKY_ENV)
    config = Config(ini)
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    (project / "die-after").write_text("130")
    with pytest.raises(SourceError, match="lost after 130"):
        command.upgrade(config, "head")
    (project / "die-after").unlink()
    return config


def keep_lines(project: Path, keep: list[int]) -> set[str]:
    path = project / "corpus.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[i] for i in keep))
    return {json.loads(lines[i])["id"] for i in keep}


def test_a_resume_over_a_corpus_that_shrank_starts_over(project: Path) -> None:
    config = killed_after_three_checkpoints(project)
    kept = keep_lines(project, list(range(100)))
    (report,) = command.upgrade(config, "head")
    assert set(indexed(config, "docs")) == kept
    assert any("the corpus changed under the checkpoint" in note for note in report.notes)


def test_a_resume_over_a_corpus_missing_a_line_before_its_checkpoint_starts_over(
    project: Path,
) -> None:
    config = killed_after_three_checkpoints(project)
    kept = keep_lines(project, [i for i in range(300) if i != 50])
    command.upgrade(config, "head")
    assert set(indexed(config, "docs")) == kept


def test_a_resume_counts_what_the_killed_run_skipped_too(project: Path) -> None:
    rows = corpus_rows(300)
    for i in (10, 200):  # one empty document before the kill point, one after
        rows[i]["text"] = "   "
    with (project / "corpus.jsonl").open("w") as fh:
        fh.writelines(json.dumps(row) + "\n" for row in rows)
    config = killed_after_three_checkpoints(project)
    (resumed,) = command.upgrade(config, "head")
    assert "2 empty document(s) skipped" in resumed.notes


def test_a_forked_alias_chain_is_refused_naming_both_revisions(
    config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.upgrade(config, "head")
    command.revision(config, "left", alias="docs", new="models/near", rev_id="r2a")
    fork = config.script_location / "versions" / "r2b_right.py"
    text = next((config.script_location / "versions").glob("r2a_*.py")).read_text()
    fork.write_text(text.replace("'r2a'", "'r2b'").replace('"r2a"', '"r2b"'))
    for args in (("upgrade", "heads"), ("upgrade", "r2a"), ("check",)):
        one_line_error(capsys, config, *args, match="forks after r1: r2a and r2b")


def test_a_report_path_that_cannot_be_written_is_refused_before_anything_changes(
    config: Config, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    (project / "afile").write_text("")
    one_line_error(capsys, config, "upgrade", "--report", "afile/x.json", match="not a directory")
    with pytest.raises(ConfigError, match="is a directory"):
        command.upgrade(config, "head", report_path=project)


def test_a_broken_pending_revision_does_not_stop_writers_or_searchers(config: Config) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.upgrade(config, "head")
    command.revision(config, "second", alias="docs", new="models/near", rev_id="r2")
    pending = next((config.script_location / "versions").glob("r2_*.py"))
    pending.write_text(pending.read_text() + "\nthis is not python\n")
    with open_writer(config, "docs") as writer:
        writer.upsert("new-key", "zebrafish fin regeneration")
    searcher = open_searcher(config, "docs")
    assert searcher.search("zebrafish fin regeneration", k=1)[0].key == "new-key"
    searcher.close()


def test_search_depth_is_clamped_to_the_index_and_bounded(
    config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.upgrade(config, "head")
    assert len(command.search(config, "docs", "tumor", k=10_000)) == 300
    with pytest.raises(ConfigError, match="k must be an integer from 1 to 10,000"):
        command.search(config, "docs", "tumor", k=1_000_000_000)
    with pytest.raises(ConfigError, match="k must be an integer"):
        command.search(config, "docs", "tumor", k=1e20)  # type: ignore[arg-type]
    code, _, err = cli(capsys, "search", "docs", "tumor", "-k", "1e20")
    assert code == 2 and "Invalid value for '-k'" in err and "Traceback" not in err
    one_line_error(capsys, config, "search", "docs", "  ", match="the query is empty")


@pytest.mark.parametrize("key", ["a\tb", "a\nb", "a\rb", "\x00"])
def test_keys_with_control_characters_are_refused(config: Config, key: str) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.upgrade(config, "head")
    with open_writer(config, "docs") as writer, pytest.raises(SourceError, match="control"):
        writer.upsert(key, "text")
    rows = corpus_rows(3)
    rows[1]["id"] = key
    with (config.root / "corpus.jsonl").open("w") as fh:
        fh.writelines(json.dumps(row) + "\n" for row in rows)
    command.revision(config, "second", alias="docs", new="models/near", rev_id="r2")
    before = snapshot(config)
    with pytest.raises(SourceError, match="control"):
        command.upgrade(config, "head", force=True)
    assert snapshot(config) == before


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


@pytest.mark.parametrize("line", [6, 150, 199])
def test_a_non_utf8_byte_is_reported_at_its_own_line(tmp_path: Path, line: int) -> None:
    path = tmp_path / "c.jsonl"
    rows = [json.dumps(row).encode() for row in corpus_rows(200)]
    rows[line - 1] = rows[line - 1][:20] + b"\xff" + rows[line - 1][20:]
    path.write_bytes(b"\n".join(rows) + b"\n")
    with pytest.raises(SourceError, match=rf"c\.jsonl:{line}: not valid UTF-8"):
        list(JsonlSource(path))


def test_string_and_number_ids_do_not_merge_silently(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "1", "text": "a"}\n{"id": 1, "text": "b"}\n')
    with pytest.raises(
        SourceError, match=r"c\.jsonl:2: 'id' is a number but earlier ones are strings"
    ):
        list(JsonlSource(path))
    path.write_text('{"id": 1, "text": "a"}\n{"id": 2, "text": "b"}\n')
    assert [d.key for d in JsonlSource(path)] == ["1", "2"]
    with pytest.raises(SourceError, match="document 2: key 1 is a number but earlier ones"):
        list(IterableSource(lambda: [("1", "a"), (1, "b")]))  # type: ignore[list-item]


def test_a_directory_as_the_corpus_says_so(
    config: Config, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    (project / "corpus.jsonl").unlink()
    (project / "corpus.jsonl").mkdir()
    one_line_error(capsys, config, "upgrade", match="is a directory; name a file")


def test_non_string_texts_from_an_iterable_source_are_one_line() -> None:
    with pytest.raises(SourceError, match="document 'k': text must be a string, got int"):
        list(IterableSource(lambda: [("k", 5)]))  # type: ignore[list-item]
    with pytest.raises(SourceError, match=r"expected a \(key, text\) pair"):
        list(IterableSource(lambda: ["just a string"]))  # type: ignore[list-item]


@pytest.mark.parametrize(
    "args, match",
    [
        (("downgrade", ""), "empty target"),
        (("stamp", ""), "empty target"),
        (("upgrade", ""), "empty target"),
        (("report", ""), "name a revision"),
        (("show", ""), "empty target"),
        (("downgrade", "-1"), "nothing to roll back: no alias is at a revision"),
        (("downgrade", "docs@-1"), "nothing to roll back"),
    ],
)
def test_targets_that_name_nothing_are_one_line(
    config: Config, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], match: str
) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    one_line_error(capsys, config, *args, match=match)


def test_a_downgrade_below_base_is_one_line(
    config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.upgrade(config, "head")
    one_line_error(capsys, config, "downgrade", "docs@-2", match="goes below base")


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
    config: Config, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    encoded = count_encodes(monkeypatch)
    ini = config.root / "embedmig.ini"
    edit(ini, "eval.k = 10", "eval.k = 0")
    one_line_error(capsys, config, "upgrade", match="option 'eval.k' must be at least 1, got 0")
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
    config: Config, capsys: pytest.CaptureFixture[str], option: str, value: str, match: str
) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    ini = config.root / "embedmig.ini"
    text = re.sub(rf"^{re.escape(option)} = .*\n", "", ini.read_text(), flags=re.M)
    ini.write_text(text + f"{option} = {value}\n")
    one_line_error(capsys, config, "upgrade", match=f"option {option!r} {match}")


def test_an_embedder_option_of_the_wrong_type_is_refused_when_the_revision_loads() -> None:
    with pytest.raises(EmbedderError, match="query_prompt must be a string or None, got 123"):
        Embedder("models/a", query_prompt=123)  # type: ignore[arg-type]
    with pytest.raises(EmbedderError, match="normalize must be True or False"):
        Embedder("models/a", normalize="yes")  # type: ignore[arg-type]


def test_a_revision_with_a_badly_typed_embedder_is_refused_before_the_backfill(
    config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    rev = next((config.script_location / "versions").glob("r1_*.py"))
    edit(rev, "Embedder('models/a')", "Embedder('models/a', query_prompt=123)")
    one_line_error(capsys, config, "upgrade", match="query_prompt must be a string or None")


def test_an_env_py_yielding_a_non_string_text_is_one_line(
    config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    (config.script_location / "env.py").write_text(
        "from embedmig import Document\n\n"
        "def corpus(config, alias):\n"
        "    yield Document('a', 'fine text')\n"
        "    yield Document('b', 42)\n"
    )
    one_line_error(capsys, config, "upgrade", match="document 'b': text is int, not str")
    one_line_error(
        capsys, config, "upgrade", "--dry-run", match="document 'b': text is int, not str"
    )
