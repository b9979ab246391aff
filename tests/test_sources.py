"""Specs of document sources (JSONL, SQL, Python), queries and qrels, and model resolution."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from embedmig import (
    Config,
    EmbedderError,
    IterableSource,
    SourceError,
    command,
    open_writer,
)
from embedmig.sources import Document, JsonlSource, read_qrels
from tests.support import (
    corpus_rows,
    first_index,
    indexed,
    one_line_error,
    snapshot,
    with_judged_queries,
)


def test_jsonl_source_joins_title_and_text_when_configured(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"_id": 7, "title": "T", "text": "body"}) + "\n\n")
    assert list(JsonlSource(path, "_id", "text", "title")) == [Document("7", "T body")]
    assert list(JsonlSource(path, "_id", "text")) == [Document("7", "body")]
    with_meta = JsonlSource(path, "_id", "text", with_meta=True)
    assert list(with_meta) == [Document("7", "body", {"title": "T"})]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"id": 1, "text": "ok"}\n{not json}\n', r"c\.jsonl:2: invalid JSON"),
        (b'{"id": 1}\n', "'text' is not a string"),
        (b'{"text": "x"}\n', "missing or invalid 'id'"),
        (b'{"id": 1, "text": "caf\xe9"}\n', "not valid UTF-8"),
        (b"[1, 2]\n", "expected a JSON object"),
    ],
)
def test_broken_jsonl_lines_are_named(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(content)
    with pytest.raises(SourceError, match=message):
        list(JsonlSource(path))


def test_qrels_are_read_as_beir_tsv(tmp_path: Path) -> None:
    path = tmp_path / "q.tsv"
    path.write_text("query-id\tcorpus-id\tscore\n1\ta\t1\n1\tb\t2\n2\tc\t1\n")
    assert read_qrels(path) == {"1": {"a": 1, "b": 2}, "2": {"c": 1}}


def test_a_sql_source_in_env_py_feeds_the_backfill(project: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{project / 'app.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE articles (id TEXT, body TEXT)"))
        conn.execute(
            sa.text("INSERT INTO articles VALUES (:id, :body)"),
            [{"id": r["id"], "body": r["text"]} for r in corpus_rows(80)],
        )
    engine.dispose()
    (project / "migrations" / "env.py").write_text(
        "from embedmig import SqlSource\n"
        "def corpus(config, alias):\n"
        "    url = f'sqlite:///{config.root / \"app.db\"}'\n"
        "    return SqlSource(url, 'SELECT id, body AS text FROM articles ORDER BY id')\n"
    )
    config = Config(project / "embedmig.ini")
    command.revision(config, "first", alias="docs", new="models/a")
    (report,) = command.upgrade(config)
    assert report.corpus_size == 80


def test_a_python_iterable_in_env_py_feeds_the_backfill(project: Path) -> None:
    (project / "migrations" / "env.py").write_text(
        "from embedmig import IterableSource\n"
        "def corpus(config, alias):\n"
        "    return IterableSource(lambda: ((f'k{i}', f'stem cells {i} tumor') for i in range(50)))\n"
    )
    config = Config(project / "embedmig.ini")
    command.revision(config, "first", alias="docs", new="models/a")
    (report,) = command.upgrade(config)
    assert report.corpus_size == 50


def test_queries_and_qrels_give_retrieval_metrics_for_both_models(project: Path) -> None:
    config = with_judged_queries(project, 40)
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.revision(config, "second", alias="docs", new="models/near", rev_id="r2")
    first, second = command.upgrade(config, "head")
    assert first.n_queries == 40 and first.metrics["ndcg_at_10_new"] is not None
    metrics = second.metrics
    assert metrics["recall_at_10_old"] == 1.0 and metrics["ndcg_at_10_old"] == pytest.approx(1.0)
    assert metrics["recall_ratio"] is not None and metrics["ndcg_at_10_delta"] is not None


def test_a_model_that_is_not_on_disk_is_refused(config: Config) -> None:
    command.revision(config, "first", alias="docs", new="no-such-org/no-such-model")
    before = snapshot(config)
    with pytest.raises(EmbedderError, match="neither a folder nor in the local Hugging Face cache"):
        command.upgrade(config)
    assert snapshot(config) == before


def test_a_missing_corpus_file_is_refused(config: Config, project: Path) -> None:
    (project / "corpus.jsonl").unlink()
    command.revision(config, "first", alias="docs", new="models/a")
    before = snapshot(config)
    with pytest.raises(SourceError, match=r"corpus file .* does not exist"):
        command.upgrade(config)
    assert snapshot(config) == before


def test_an_empty_corpus_is_refused_and_leaves_nothing_behind(
    config: Config, project: Path
) -> None:
    (project / "corpus.jsonl").write_text("")
    command.revision(config, "first", alias="docs", new="models/a")
    assert command.current(config) == []
    before = snapshot(config)
    with pytest.raises(SourceError, match="no non-empty documents"):
        command.upgrade(config)
    assert snapshot(config) == before


ROOT = Path(__file__).resolve().parents[1]

# ---- refused inputs (each found by a probe; each failed before its fix) --------------------


def test_empty_texts_are_skipped_and_counted(config: Config, project: Path) -> None:
    with (project / "corpus.jsonl").open("a") as fh:
        for i in range(3):
            fh.write(json.dumps({"id": f"empty{i}", "text": "   "}) + "\n")
    command.revision(config, "first", alias="docs", new="models/a", rev_id="aaa111")
    (report,) = command.upgrade(config)
    assert report.corpus_size == 300 and "3 empty document(s) skipped" in report.notes


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


def test_a_directory_as_the_corpus_says_so(config: Config, project: Path) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    (project / "corpus.jsonl").unlink()
    (project / "corpus.jsonl").mkdir()
    one_line_error(config, "upgrade", match="is a directory; name a file")


def test_non_string_texts_from_an_iterable_source_are_one_line() -> None:
    with pytest.raises(SourceError, match="document 'k': text must be a string, got int"):
        list(IterableSource(lambda: [("k", 5)]))  # type: ignore[list-item]
    with pytest.raises(SourceError, match=r"expected a \(key, text\) pair"):
        list(IterableSource(lambda: ["just a string"]))  # type: ignore[list-item]


def test_an_env_py_yielding_a_non_string_text_is_one_line(config: Config) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    (config.script_location / "env.py").write_text(
        "from embedmig import Document\n\n"
        "def corpus(config, alias):\n"
        "    yield Document('a', 'fine text')\n"
        "    yield Document('b', 42)\n"
    )
    one_line_error(config, "upgrade", match="document 'b': text is int, not str")
    one_line_error(config, "upgrade", "--dry-run", match="document 'b': text is int, not str")


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
    one_line_error(config, "upgrade", "r1", match=message)


def test_a_document_of_only_zero_width_characters_is_skipped_as_empty(config: Config) -> None:
    rows = corpus_rows(300)
    with (config.root / "corpus.jsonl").open("a") as fh:
        fh.write('{"id": "invisible", "text": "\\u200b\\u200d"}\n')
    first_index(config)
    assert sorted(indexed(config, "docs")) == sorted(row["id"] for row in rows)
    with pytest.raises(Exception, match="has no text"):
        open_writer(config, "docs").upsert("invisible", "\u200b")


def test_the_key_limit_is_documented() -> None:
    pages = "".join(page.read_text() for page in [ROOT / "README.md", *ROOT.glob("docs/*.md")])
    assert "512 characters" in pages
