"""Specs of the faults found by the third probe (31 bad inputs): each failed before its fix. A bad
input is one line on stderr, the exit code of its kind, and an unchanged snapshot."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from embedmig import Config, HistoryError, command, open_searcher, open_writer
from embedmig.config import EnvSettings
from embedmig.embedders import Embedder, load
from tests.support import corpus_rows, embedmig, indexed, snapshot

ROOT = Path(__file__).resolve().parents[1]


def one_line(config: Config, *args: str, code: int = 1, match: str) -> None:
    before = snapshot(config)
    done = embedmig(config.root, "-q", *args)
    assert done.returncode == code, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("embedmig: error: ") and match in line, line
    assert snapshot(config) == before


def first_index(config: Config) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.upgrade(config, "r1")


# ---- 1. the history database deleted under readers and writers --------------------------------


def test_a_searcher_and_a_writer_refuse_a_history_database_deleted_under_them(
    config: Config,
) -> None:
    first_index(config)
    database = config.root / "embedmig.db"
    searcher = open_searcher(config, "docs")
    writer = open_writer(config, "docs")
    searcher.search("protein folding")
    files = {p.name for p in config.index_dir.rglob("*.faiss")}
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    with pytest.raises(HistoryError, match="was deleted or replaced while in use"):
        writer.upsert("new-key", "Zebrafish fin regeneration depends on osteoblasts")
    with pytest.raises(HistoryError, match="was deleted or replaced while in use"):
        searcher.search("protein folding")
    writer.close()
    searcher.close()
    assert not database.exists()  # nothing created an empty database, so nothing acknowledged
    with pytest.raises(HistoryError, match="does not exist"):
        open_writer(config, "docs")
    with pytest.raises(HistoryError, match="does not exist"):
        open_searcher(config, "docs")
    assert not database.exists()
    assert {p.name for p in config.index_dir.rglob("*.faiss")} == files
    failed = embedmig(config.root, "search", "docs", "protein folding")
    assert failed.returncode == 1 and "does not exist" in failed.stderr
    assert not database.exists()


def test_a_writer_refuses_a_history_database_replaced_under_it(config: Config) -> None:
    first_index(config)
    writer = open_writer(config, "docs")
    database = config.root / "embedmig.db"
    copy = database.with_name("copy.db")
    copy.write_bytes(database.read_bytes())
    os.replace(copy, database)  # another file at the same path: another history
    with pytest.raises(HistoryError, match="was deleted or replaced while in use"):
        writer.upsert("new-key", "Zebrafish fin regeneration depends on osteoblasts")
    writer.close()
    assert "new-key" not in indexed(config, "docs")


def test_read_only_commands_create_no_history_database(config: Config) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    (
        config.root / "embedmig.db"
    ).unlink()  # `embedmig init` made it; only an upgrade makes it again
    assert command.current(config) == [] and command.history(config) == []
    for args in (("current",), ("history",), ("show", "r1")):
        assert embedmig(config.root, *args).returncode == 0
    assert not (config.root / "embedmig.db").exists()
    one_line(config, "downgrade", "base", match="does not exist (an `embedmig upgrade` creates")


# ---- 3. messages that mislead -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda path: path.symlink_to(path), "cannot be opened: Too many levels of symbolic links"),
        (os.mkfifo, "is not a regular file (a pipe or a device)"),
    ],
    ids=["symlink-loop", "fifo"],
)
def test_a_corpus_path_that_is_no_readable_file_says_what_it_is(
    config: Config, make: Callable[[Path], None], message: str
) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    corpus = config.root / "corpus.jsonl"
    corpus.unlink()
    make(corpus)
    one_line(config, "upgrade", "r1", match=message)


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
    one_line(config, "current", match="line 4 is not UTF-8 (byte 0xe9)")


def test_a_config_path_that_is_a_directory_says_so(config: Config) -> None:
    one_line(config, "-c", str(config.root / "migrations"), "current", match="is a directory")


@pytest.mark.parametrize("query", [" \t ", "\u200b\u200b", " \u200b\ufeff\u2060 "])
def test_a_query_of_only_white_space_and_zero_width_characters_is_empty(
    config: Config, query: str
) -> None:
    first_index(config)
    one_line(config, "search", "docs", query, match="the query is empty")


def test_a_document_of_only_zero_width_characters_is_skipped_as_empty(config: Config) -> None:
    rows = corpus_rows(300)
    with (config.root / "corpus.jsonl").open("a") as fh:
        fh.write('{"id": "invisible", "text": "\\u200b\\u200d"}\n')
    first_index(config)
    assert sorted(indexed(config, "docs")) == sorted(row["id"] for row in rows)
    with pytest.raises(Exception, match="has no text"):
        open_writer(config, "docs").upsert("invisible", "\u200b")


@pytest.mark.parametrize("sample", ["0", "0%", "150%", "1e3", "-5", "ten"])
def test_every_bad_sample_is_one_rule_and_exit_1(config: Config, sample: str) -> None:
    first_index(config)
    command.revision(config, "second", alias="docs", new="models/near", rev_id="r2")
    one_line(
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
    one_line(config, "upgrade", "--sample", "10%", match="--sample is for a dry run")


def test_current_shows_the_live_state_and_names_a_broken_pending_script(config: Config) -> None:
    first_index(config)
    rev = command.revision(config, "second", alias="docs", new="models/near", rev_id="r2")
    Path(str(rev.path)).write_text("revision = 'r2'\nthis is not python\n")
    done = embedmig(config.root, "current")
    assert done.returncode == 0, done.stderr
    assert re.search(r"^docs: r1; index #1", done.stdout, re.M), done.stdout
    assert "revision script r2_second.py:2 failed to load: NameError" in done.stderr


def test_the_key_limit_is_documented() -> None:
    pages = "".join(page.read_text() for page in [ROOT / "README.md", *ROOT.glob("docs/*.md")])
    assert "512 characters" in pages


# ---- 4. unit vectors --------------------------------------------------------------------------


@pytest.mark.parametrize("options", [{}, {"truncate_dim": 16}])
def test_every_vector_of_a_normalized_embedder_has_norm_one(
    models: dict[str, Path], options: dict[str, int]
) -> None:
    settings = EnvSettings.of(Config(None)).embedder
    embedder = load(Embedder(str(models["a"]), **options), Path("."), settings)  # type: ignore[arg-type]
    texts = [row["text"] for row in corpus_rows(100)]
    for vectors in (embedder.encode_documents(texts), embedder.encode_queries(texts)):
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_a_stored_vector_and_a_search_of_its_own_text_score_at_most_one(config: Config) -> None:
    first_index(config)
    with open_writer(config, "docs") as writer:
        writer.upsert("written", "Zebrafish fin regeneration depends on osteoblasts")
    stored = indexed(config, "docs")
    norms = np.linalg.norm(np.stack(list(stored.values())), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    for row in corpus_rows(20):
        (hit,) = command.search(config, "docs", row["text"], k=1)
        assert hit.score <= 1 + 1e-5
