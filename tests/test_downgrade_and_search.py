"""Specs of rollback, stamp and the alias-resolving searcher."""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from embedmig import (
    Config,
    ConfigError,
    ScriptError,
    StateError,
    StoreError,
    command,
    open_searcher,
    open_writer,
)
from embedmig.store import sidecar
from tests.support import (
    cli,
    corpus_rows,
    edit,
    first_index,
    index_file,
    one_line_error,
    seen,
    snapshot,
    with_options,
)

QUERY = "glioblastoma stem cells tumor growth"


def upgraded_twice(config: Config) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.revision(config, "second", alias="docs", new="models/far", rev_id="r2")
    command.upgrade(config, "r1")


def test_downgrade_restores_the_exact_previous_index(config: Config) -> None:
    upgraded_twice(config)
    (before,) = command.current(config)
    assert before.live is not None and before.live.path is not None
    file_sha = hashlib.sha256(index_file(config, before.live).read_bytes()).hexdigest()
    hits_before = command.search(config, "docs", QUERY)
    command.upgrade(config, "head", force=True)
    assert command.search(config, "docs", QUERY) != hits_before

    (undone,) = command.downgrade(config, "-1")
    assert undone.revision == "r2"
    (after,) = command.current(config)
    assert after.revision == "r1" and after.live is not None
    assert after.live.id == before.live.id and after.live.sha256 == before.live.sha256
    assert hashlib.sha256(index_file(config, after.live).read_bytes()).hexdigest() == file_sha
    assert command.search(config, "docs", QUERY) == hits_before
    assert command.history(config)[0].action == "downgrade"


def test_downgrade_does_not_re_embed(config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    upgraded_twice(config)
    command.upgrade(config, "head", force=True)
    from embedmig.embedders import LoadedEmbedder

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("downgrade encoded documents")

    monkeypatch.setattr(LoadedEmbedder, "encode_documents", refuse)
    monkeypatch.setattr(LoadedEmbedder, "encode_queries", refuse)
    command.downgrade(config, "docs@-1")
    assert command.current(config)[0].revision == "r1"


def test_downgrade_to_base_leaves_the_alias_without_live_index(config: Config) -> None:
    upgraded_twice(config)
    command.downgrade(config, "base")
    (state,) = command.current(config)
    assert state.revision is None and state.live is None
    with pytest.raises(StateError, match="no live index"):
        command.search(config, "docs", QUERY)


def test_upgrade_again_after_downgrade_rebuilds_the_shadow(config: Config) -> None:
    upgraded_twice(config)
    command.upgrade(config, "head", force=True)
    command.downgrade(config, "-1")
    command.upgrade(config, "head", force=True)
    (state,) = command.current(config)
    assert state.revision == "r2" and state.live is not None


def test_downgrade_to_an_unknown_revision_changes_nothing(config: Config) -> None:
    upgraded_twice(config)
    before = snapshot(config)
    with pytest.raises(ScriptError, match="nope"):
        command.downgrade(config, "nope")
    assert snapshot(config) == before


def test_rollback_refuses_when_the_previous_index_file_is_gone(config: Config) -> None:
    upgraded_twice(config)
    (state,) = command.current(config)
    assert state.live is not None
    command.upgrade(config, "head", force=True)
    index_file(config, state.live).unlink()
    before = snapshot(config)
    with pytest.raises(StoreError, match="is missing"):
        command.downgrade(config, "-1")
    assert snapshot(config) == before


def test_downgrade_refuses_a_retired_index_whose_file_was_altered(config: Config) -> None:
    upgraded_twice(config)
    (state,) = command.current(config)
    assert state.live is not None
    command.upgrade(config, "head", force=True)
    path = index_file(config, state.live)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    before = snapshot(config)
    with pytest.raises(StoreError, match="does not match its recorded sha256"):
        command.downgrade(config, "-1")
    assert snapshot(config) == before
    assert command.search(config, "docs", QUERY, k=3)  # readers keep a working index


def test_a_moved_project_still_searches_and_downgrades(
    config: Config, tmp_path_factory: pytest.TempPathFactory
) -> None:
    upgraded_twice(config)
    command.upgrade(config, "head", force=True)
    hits = command.search(config, "docs", QUERY, k=5)
    moved = tmp_path_factory.mktemp("moved") / "project"
    shutil.move(str(config.root), moved)
    config = Config(moved / "embedmig.ini")
    assert command.search(config, "docs", QUERY, k=5) == hits
    command.downgrade(config, "-1")
    assert command.search(config, "docs", QUERY, k=5) != hits


def test_searcher_follows_a_swap_and_a_rollback_without_reopening(refreshing: Config) -> None:
    config = refreshing
    upgraded_twice(config)
    searcher = open_searcher(config, "docs")
    first = searcher.search(QUERY, k=5)
    assert {hit.revision for hit in first} == {"r1"}
    command.upgrade(config, "head", force=True)
    seen(searcher, lambda: searcher.search(QUERY, k=5)[0].revision == "r2", "the swap")
    assert searcher.search(QUERY, k=5) != first
    command.downgrade(config, "-1")
    seen(searcher, lambda: searcher.search(QUERY, k=5) == first, "the rollback")
    searcher.close()


def test_search_returns_keys_scores_and_snippets_in_rank_order(config: Config) -> None:
    upgraded_twice(config)
    hits = command.search(config, "docs", QUERY, k=7)
    assert [h.rank for h in hits] == list(range(1, 8))
    assert all(a.score >= b.score for a, b in itertools.pairwise(hits))
    assert all(h.key and h.snippet for h in hits)


def test_search_with_k_beyond_the_index_returns_every_document(config: Config) -> None:
    upgraded_twice(config)
    assert len(command.search(config, "docs", QUERY, k=1000)) == 300


def test_a_batch_search_answers_each_query_as_a_single_search_does(config: Config) -> None:
    upgraded_twice(config)
    texts = [row["text"][:80] for row in corpus_rows(40)]
    with open_searcher(config, "docs") as searcher:
        one_by_one = [searcher.search(text, k=5) for text in texts]
        assert searcher.search_many(texts, k=5) == one_by_one
        assert searcher.search_many([], k=5) == []
        with pytest.raises(ConfigError, match="a query is empty"):
            searcher.search_many(["fine", " "], k=5)
        with pytest.raises(ConfigError, match="metas holds 1 entries for 2 texts"):
            searcher.search_many(["a", "b"], metas=[{"lang": "en"}])


def test_search_answers_a_file_of_queries_one_json_line_each(
    config: Config, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    upgraded_twice(config)
    texts = {f"q{i}": row["text"][:60] for i, row in enumerate(corpus_rows(5))}
    path = project / "queries.jsonl"
    path.write_text(
        "".join(
            json.dumps({"id": key, "text": text, "lang": "en"}) + "\n"
            for key, text in texts.items()
        )
    )
    code, out, err = cli(capsys, "search", "docs", "--file", str(path), "-k", "3")
    assert code == 0, err
    answers = [json.loads(line) for line in out.splitlines()]
    assert [a["id"] for a in answers] == list(texts)
    for answer in answers:
        alone = command.search(config, "docs", texts[answer["id"]], k=3)
        assert [(h["key"], h["rank"]) for h in answer["hits"]] == [(h.key, h.rank) for h in alone]
    path.write_text(path.read_text() + "not json\n")
    code, out, err = cli(capsys, "-q", "search", "docs", "--file", str(path))
    assert code == 1 and out == ""
    assert err.strip() == f"embedmig: error: {path}:6: invalid JSON (Expecting value)"
    for args in (("search", "docs"), ("search", "docs", "q", "--file", str(path))):
        code, _, err = cli(capsys, *args)
        assert code == 2 and "give a QUERY or --file, one of them" in err


def test_eight_threads_can_share_one_searcher(config: Config) -> None:
    """A server holds one searcher for all its request threads: each answer is the one a lone
    thread gets, and the process's FAISS threads are as they were."""
    import faiss

    upgraded_twice(config)
    texts = [row["text"][:80] for row in corpus_rows(64)]
    threads_before = faiss.omp_get_max_threads()
    with open_searcher(config, "docs") as searcher:
        alone = {text: searcher.search(text, k=5) for text in texts}
        with ThreadPoolExecutor(8) as pool:
            shared = list(pool.map(lambda text: (text, searcher.search(text, k=5)), texts * 4))
    assert all(hits == alone[text] for text, hits in shared)
    assert faiss.omp_get_max_threads() == threads_before


def test_a_single_query_searches_faiss_on_one_thread_and_a_batch_on_the_option(
    config: Config,
) -> None:
    """FAISS's advice for serving: one thread per query. The setting holds for the call only."""
    import faiss
    import numpy as np

    from embedmig.store import files

    used: list[int] = []

    class Recorded:
        ntotal = 50

        def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            used.append(faiss.omp_get_max_threads())
            return np.zeros((len(vectors), k), np.float32), np.zeros((len(vectors), k), np.int64)

    before = faiss.omp_get_max_threads()
    files.search(Recorded(), np.zeros((1, 4)), 5)
    files.search(Recorded(), np.zeros((3, 4)), 5)
    files.search(Recorded(), np.zeros((3, 4)), 5, threads=1)
    assert used == [1, before, 1] and faiss.omp_get_max_threads() == before


def statements_of(statements: list[str]) -> Callable[..., None]:
    return lambda _conn, _cursor, sql, *_: statements.append(sql)


def test_a_search_issues_no_sql_and_with_refresh_0_one_clock_read(config: Config) -> None:
    """The control plane is off the request path: the alias's state is held in memory and
    followed by the refresher; with ``searcher.refresh_ms = 0`` each search reads the clock."""
    first_index(config)
    quiet = {"readers__heartbeat_seconds": 0, "searcher__poll_seconds": 3600}
    for refresh_ms, per_search in ((3_600_000, 0), (0, 1)):
        with open_searcher(
            with_options(config, searcher__refresh_ms=refresh_ms, **quiet), "docs"
        ) as searcher:
            searcher.search(QUERY)  # the first search opens the alias
            statements: list[str] = []
            sa.event.listen(searcher.env.engine, "before_cursor_execute", statements_of(statements))
            for _ in range(20):
                searcher.search(QUERY)
            searcher.search_many([QUERY] * 5)
        assert len(statements) == 21 * per_search
        assert all("FROM embedmig_sequence" in sql for sql in statements)


def test_hits_are_described_from_the_sidecar_written_with_the_index_file(config: Config) -> None:
    """Keys, snippets and metadata come from a file beside the index, not from a read of every
    document; a sidecar that is missing or written for another file is read from SQL instead."""
    first_index(config)
    (state,) = command.current(config)
    assert state.live is not None
    path = index_file(config, state.live)
    beside = sidecar.path_of(path)
    assert beside.exists()
    answers = []
    for damage in (None, "garbled", "missing"):
        if damage == "garbled":
            beside.write_bytes(b"not a sidecar")
        elif damage == "missing":
            beside.unlink()
        with open_searcher(config, "docs") as searcher:
            statements: list[str] = []
            sa.event.listen(searcher.env.engine, "before_cursor_execute", statements_of(statements))
            answers.append(searcher.search(QUERY, k=5))
        read_docs = [sql for sql in statements if "FROM embedmig_doc" in sql]
        assert len(read_docs) == (0 if damage is None else 1)
    assert answers[0] == answers[1] == answers[2]
    assert all(hit.key and hit.snippet for hit in answers[0])


def test_writes_are_applied_between_searches_of_eight_threads(config: Config) -> None:
    """The refresher applies the journal while threads search: never under a search (each
    answer is whole, ranked), and every acknowledged write is served within the bound."""
    first_index(config)
    rows = corpus_rows(300)
    texts = [row["text"][:80] for row in rows[:16]]
    stop = threading.Event()
    with (
        open_searcher(with_options(config, searcher__refresh_ms=5), "docs") as searcher,
        open_writer(config, "docs") as writer,
    ):
        searcher.search(QUERY)

        def search_until_stopped(text: str) -> int:
            answered = 0
            while not stop.is_set():
                hits = searcher.search(text, k=5)
                assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
                assert all(a.score >= b.score for a, b in itertools.pairwise(hits))
                answered += 1
            return answered

        with ThreadPoolExecutor(8) as pool:
            running = [pool.submit(search_until_stopped, text) for text in texts[:8]]
            for i, text in enumerate(texts):
                writer.upsert(f"new-{i}", f"{text} zebrafish {i}")
                writer.delete(rows[100 + i]["id"])
                time.sleep(0.01)
            stop.set()
            assert all(future.result() > 0 for future in running)
        seen(
            searcher,
            lambda: all(
                searcher.search(f"{t} zebrafish {i}", k=1)[0].key == f"new-{i}"
                for i, t in enumerate(texts)
            ),
            "every upsert",
        )


def test_searcher_refuses_an_index_file_that_was_altered(config: Config) -> None:
    upgraded_twice(config)
    (state,) = command.current(config)
    assert state.live is not None and state.live.path is not None
    path = index_file(config, state.live)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(Exception, match="sha256"):
        command.search(config, "docs", QUERY)


def test_a_refused_searcher_retries_each_second_not_at_each_refresh(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused follow reopens the index file (and model) when retried: once a second, or
    when the reader clock moves, not every ``searcher.refresh_ms``."""
    from embedmig.store import files

    upgraded_twice(config)
    (state,) = command.current(config)
    assert state.live is not None
    path = index_file(config, state.live)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    loads: list[Path] = []
    load = files.load

    def counted(file: Path, sha256: str | None) -> object:
        loads.append(file)
        return load(file, sha256)

    monkeypatch.setattr(files, "load", counted)
    with open_searcher(with_options(config, searcher__refresh_ms=10), "docs") as searcher:
        with pytest.raises(StoreError, match="sha256"):
            searcher.search(QUERY)
        time.sleep(0.5)  # 50 refreshes
        with pytest.raises(StoreError, match="sha256"):
            searcher.search(QUERY)
    assert len(loads) == 1


def test_stamp_sets_the_revision_without_touching_the_index(config: Config) -> None:
    upgraded_twice(config)
    (before,) = command.current(config)
    assert command.stamp(config, "r2") == [("docs", "r2")]
    (after,) = command.current(config)
    assert after.revision == "r2" and after.live == before.live
    assert command.history(config)[0].action == "stamp"
    assert command.stamp(config, "docs@base") == [("docs", None)]
    assert command.current(config)[0].revision is None


def three_applied(config: Config) -> list[int]:
    command.revision(config, "1", alias="docs", new="models/a", rev_id="r1")
    command.revision(config, "2", alias="docs", new="models/far", rev_id="r2")
    command.revision(config, "3", alias="docs", new="models/a", rev_id="r3")
    ids = []
    for rev in ("r1", "r2", "r3"):
        command.upgrade(config, rev, force=True)
        (state,) = command.current(config)
        assert state.live is not None
        ids.append(state.live.id)
    return ids


def test_prune_keeps_one_rollback_step_by_default(config: Config) -> None:
    first, second, third = three_applied(config)
    dropped = command.prune(config, "docs").dropped
    assert [r.id for r in dropped] == [first]
    assert not any(p.name.startswith(f"{first:06d}-") for p in config.index_dir.rglob("*"))
    assert command.history(config)[0].action == "prune"
    command.downgrade(config, "-1")
    (state,) = command.current(config)
    assert state.revision == "r2" and state.live is not None and state.live.id == second
    before = snapshot(config)
    with pytest.raises(StateError, match="dropped, not retired"):
        command.downgrade(config, "-1")
    assert snapshot(config) == before
    assert third != second


def test_prune_drops_shadows_that_were_never_swapped(config: Config) -> None:
    command.revision(config, "1", alias="docs", new="models/a", rev_id="r1")
    command.revision(config, "2", alias="docs", new="models/far", rev_id="r2")
    path = next((config.script_location / "versions").glob("r2_*.py"))
    edit(path, "min_overlap_at_10=0.5", "min_overlap_at_10=0.99")
    command.upgrade(config, "r1")
    with pytest.raises(Exception, match="gate failed"):
        command.upgrade(config, "head")
    dropped = command.prune(config, "docs", keep=0).dropped
    assert [(r.revision, r.state) for r in dropped] == [("r2", "ready")]
    assert command.prune(config, "docs").dropped == []
    assert command.search(config, "docs", QUERY, k=1)  # the live index is untouched


# ---- refused inputs (each found by a probe; each failed before its fix) --------------------


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
    one_line_error(config, "search", "docs", "  ", match="the query is empty")


@pytest.mark.parametrize("query", [" \t ", "\u200b\u200b", " \u200b\ufeff\u2060 "])
def test_a_query_of_only_white_space_and_zero_width_characters_is_empty(
    config: Config, query: str
) -> None:
    first_index(config)
    one_line_error(config, "search", "docs", query, match="the query is empty")
