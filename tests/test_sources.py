"""Specs of document sources (JSONL, SQL, Python), queries and qrels, and model resolution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from embedmig import Config, EmbedderError, SourceError, command
from embedmig.sources import Document, JsonlSource, read_qrels
from tests.support import corpus_rows, snapshot, with_judged_queries


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
