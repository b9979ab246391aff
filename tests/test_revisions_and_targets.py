"""Specs of init, revision generation, several aliases and relative targets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from embedmig import (
    Config,
    ConfigError,
    EmbedderError,
    ScriptError,
    command,
    open_searcher,
    open_writer,
)
from embedmig.embedders import Embedder
from tests.support import (
    edit,
    edit_revision,
    embedmig,
    first_index,
    one_line_error,
    refused,
    snapshot,
)


def test_init_copies_the_template_and_writes_the_config(tmp_path: Path) -> None:
    ini = command.init(tmp_path / "migrations", tmp_path / "embedmig.ini")
    for name in ("env.py", "script.py.mako", "README", "versions"):
        assert (tmp_path / "migrations" / name).exists()
    config = Config(ini)
    assert config.script_location == tmp_path / "migrations"
    assert config.url == f"sqlite:///{tmp_path / 'embedmig.db'}"
    assert config.index_dir == tmp_path / "indexes"


def test_init_refuses_to_overwrite_a_config(tmp_path: Path) -> None:
    (tmp_path / "embedmig.ini").write_text("[embedmig]\n")
    with pytest.raises(ConfigError, match="already exists"):
        command.init(tmp_path / "migrations", tmp_path / "embedmig.ini")
    assert not (tmp_path / "migrations").exists()
    assert (tmp_path / "embedmig.ini").read_text() == "[embedmig]\n"


def test_init_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "mine.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not empty"):
        command.init(tmp_path / "migrations", tmp_path / "embedmig.ini")
    assert not (tmp_path / "embedmig.ini").exists()


def test_pyproject_tool_table_configures_a_project(project: Path) -> None:
    (project / "embedmig.ini").unlink()
    (project / "pyproject.toml").write_text(
        '[tool.embedmig]\nscript_location = "migrations"\ncorpus = "corpus.jsonl"\n'
        "[tool.embedmig.eval]\nk = 5\n"
    )
    config = Config.find(project)
    assert config.path == project / "pyproject.toml" and config.get("eval.k") == "5"
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    (report,) = command.upgrade(config)
    assert report.k == 5 and report.corpus_size == 300


def test_first_revision_of_an_alias_starts_a_labelled_branch(config: Config) -> None:
    rev = command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    assert rev.down_revision is None and rev.old is None and rev.alias == "docs"
    text = rev.path.read_text()
    assert "branch_labels = ('docs',)" in text and "old = None" in text


def test_next_revision_chains_on_the_alias_head_and_takes_old_from_it(config: Config) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    rev = command.revision(config, "second", alias="docs", new="models/near", rev_id="r2")
    assert rev.down_revision == "r1"
    assert rev.old is not None and rev.old.model == "models/a" and rev.new.model == "models/near"


def test_old_for_an_alias_without_revisions_is_refused(config: Config) -> None:
    before = snapshot(config)
    with pytest.raises(ScriptError, match="no revision yet"):
        command.revision(config, "x", alias="docs", old="models/a", new="models/near")
    assert snapshot(config) == before


def test_a_taken_revision_id_is_refused(config: Config) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    before = snapshot(config)
    with pytest.raises(ScriptError, match="already exists"):
        command.revision(config, "again", alias="faq", new="models/a", rev_id="r1")
    assert snapshot(config) == before


@pytest.mark.parametrize("alias", ["../evil", "a/b", "..", ".hidden", "", "x" * 65])
def test_alias_names_cannot_escape_the_index_folder(config: Config, alias: str) -> None:
    before = snapshot(config)
    with pytest.raises(Exception, match="alias"):
        command.revision(config, "x", alias=alias, new="models/a")
    assert snapshot(config) == before


def aliases(config: Config) -> None:
    command.revision(config, "docs 1", alias="docs", new="models/a", rev_id="d1")
    command.revision(config, "docs 2", alias="docs", new="models/near", rev_id="d2")
    command.revision(config, "faq 1", alias="faq", new="models/far", rev_id="f1")


def test_several_aliases_each_have_their_own_chain_and_head(config: Config) -> None:
    aliases(config)
    assert sorted((h.alias, h.revision) for h in command.heads(config)) == [
        ("docs", "d2"),
        ("faq", "f1"),
    ]


def test_head_is_ambiguous_with_several_aliases(config: Config) -> None:
    aliases(config)
    before = snapshot(config)
    with pytest.raises(ScriptError, match="Multiple heads"):
        command.upgrade(config, "head")
    assert snapshot(config) == before


def test_heads_upgrades_every_alias(config: Config) -> None:
    aliases(config)
    command.upgrade(config, "heads")
    assert {(s.alias, s.revision) for s in command.current(config)} == {
        ("docs", "d2"),
        ("faq", "f1"),
    }


def test_alias_at_head_upgrades_one_alias_only(config: Config) -> None:
    aliases(config)
    command.upgrade(config, "faq@head")
    assert [(s.alias, s.revision) for s in command.current(config)] == [("faq", "f1")]


def test_relative_and_partial_targets(config: Config) -> None:
    command.revision(config, "1", alias="docs", new="models/a", rev_id="aaa111")
    command.revision(config, "2", alias="docs", new="models/near", rev_id="bbb222")
    command.revision(config, "3", alias="docs", new="models/a", rev_id="ccc333")
    command.upgrade(config, "+1")
    assert command.current(config)[0].revision == "aaa111"
    command.upgrade(config, "bbb2")  # a unique prefix
    assert command.current(config)[0].revision == "bbb222"
    command.upgrade(config, "+1", force=True)
    assert command.current(config)[0].revision == "ccc333"
    command.downgrade(config, "-2")
    assert command.current(config)[0].revision == "aaa111"


def test_minus_one_is_ambiguous_with_several_aliases(config: Config) -> None:
    aliases(config)
    command.upgrade(config, "heads")
    before = snapshot(config)
    with pytest.raises(ScriptError, match="ALIAS@-1"):
        command.downgrade(config, "-1")
    assert snapshot(config) == before
    command.downgrade(config, "docs@-1")
    assert {(s.alias, s.revision) for s in command.current(config)} == {
        ("docs", "d1"),
        ("faq", "f1"),
    }


def test_unknown_target_is_refused_and_changes_nothing(config: Config) -> None:
    aliases(config)
    before = snapshot(config)
    with pytest.raises(ScriptError, match="No such revision"):
        command.upgrade(config, "zzzz")
    assert snapshot(config) == before


def test_show_describes_a_revision_and_its_history(config: Config) -> None:
    aliases(config)
    command.upgrade(config, "docs@head")
    rev, events = command.show(config, "d2")
    assert rev.alias == "docs" and rev.old is not None and rev.new.model == "models/near"
    assert [e.action for e in events] == ["upgrade"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("alias = 'docs'", ""), "missing `alias`"),
        (lambda t: t.replace("new = Embedder(", "new = ("), "`new` has the wrong type"),
        (lambda t: t + "\ndef oops(:\n", "syntax error"),
        (
            lambda t: t.replace("revision = 'd2'", "revision = 'd2'\nraise RuntimeError('boom')"),
            "boom",
        ),
        (lambda t: t.replace("down_revision = 'd1'", "down_revision = 'zzzz'"), "zzzz"),
        (lambda t: t.replace("Gates(", "Gates(min_typo=1, "), "unknown gate 'min_typo'"),
    ],
)
def test_a_broken_revision_script_is_a_one_line_error(config: Config, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    aliases(config)
    path = next((config.script_location / "versions").glob("d2_*.py"))
    path.write_text(edit(path.read_text()))
    before = snapshot(config)
    with pytest.raises(ScriptError, match=message):
        command.upgrade(config, "docs@head")
    assert snapshot(config) == before


# ---- refused inputs (each found by a probe; each failed before its fix) --------------------


def test_a_cycle_in_down_revision_is_refused(config: Config) -> None:
    first_index(config, "aaa111")
    command.revision(config, "second", alias="docs", new="models/near", rev_id="bbb222")
    edit_revision(config, "aaa111", r"^down_revision = None", "down_revision = 'bbb222'")
    refused(config, ScriptError, "(?i)cycle")


def test_a_revision_without_a_revision_id_is_refused(config: Config) -> None:
    first_index(config, "aaa111")
    command.revision(config, "second", alias="docs", new="models/near", rev_id="bbb222")
    edit_revision(config, "bbb222", r"^revision = .*$", "")
    refused(config, ScriptError, "revision")


def test_an_ambiguous_partial_revision_id_is_refused(config: Config) -> None:
    first_index(config, "aaa111")
    command.revision(config, "b", alias="docs", new="models/near", rev_id="abc111")
    command.revision(config, "c", alias="docs", new="models/a", rev_id="abc222")
    refused(config, ScriptError, "(?i)multiple|ambiguous", target="abc")


def test_a_forked_alias_chain_is_refused_naming_both_revisions(config: Config) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.upgrade(config, "head")
    command.revision(config, "left", alias="docs", new="models/near", rev_id="r2a")
    fork = config.script_location / "versions" / "r2b_right.py"
    text = next((config.script_location / "versions").glob("r2a_*.py")).read_text()
    fork.write_text(text.replace("'r2a'", "'r2b'").replace('"r2a"', '"r2b"'))
    for args in (("upgrade", "heads"), ("upgrade", "r2a"), ("check",)):
        one_line_error(config, *args, match="forks after r1: r2a and r2b")


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
    config: Config, args: tuple[str, ...], match: str
) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    one_line_error(config, *args, match=match)


def test_a_downgrade_below_base_is_one_line(config: Config) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.upgrade(config, "head")
    one_line_error(config, "downgrade", "docs@-2", match="goes below base")


def test_an_embedder_option_of_the_wrong_type_is_refused_when_the_revision_loads() -> None:
    with pytest.raises(EmbedderError, match="query_prompt must be a string or None, got 123"):
        Embedder("models/a", query_prompt=123)  # type: ignore[arg-type]
    with pytest.raises(EmbedderError, match="normalize must be True or False"):
        Embedder("models/a", normalize="yes")  # type: ignore[arg-type]


def test_a_revision_with_a_badly_typed_embedder_is_refused_before_the_backfill(
    config: Config,
) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    rev = next((config.script_location / "versions").glob("r1_*.py"))
    edit(rev, "Embedder('models/a')", "Embedder('models/a', query_prompt=123)")
    one_line_error(config, "upgrade", match="query_prompt must be a string or None")


def test_current_shows_the_live_state_and_names_a_broken_pending_script(config: Config) -> None:
    first_index(config)
    rev = command.revision(config, "second", alias="docs", new="models/near", rev_id="r2")
    Path(str(rev.path)).write_text("revision = 'r2'\nthis is not python\n")
    done = embedmig(config.root, "current")
    assert done.returncode == 0, done.stderr
    assert re.search(r"^docs: r1; index #1", done.stdout, re.M), done.stdout
    assert "revision script r2_second.py:2 failed to load: NameError" in done.stderr
