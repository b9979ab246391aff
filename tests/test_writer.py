"""Specs of the writer, the change journal, the holdover and compaction (one process)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from embedmig import (
    Config,
    ConfigError,
    Document,
    SourceError,
    command,
    open_searcher,
    open_writer,
)
from embedmig.environment import Environment
from embedmig.history import schema
from embedmig.sources import Corpus
from embedmig.store import catalog, docids, sidecar
from tests.support import assert_serves, corpus_rows, index_file, seen, snapshot

NEW_TEXT = "Zebrafish fin regeneration depends on osteoblast dedifferentiation"


def live_on_r1(config: Config) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.upgrade(config, "r1")


def migrated_to_r2(config: Config) -> None:
    live_on_r1(config)
    command.revision(config, "second", alias="docs", new="models/far", rev_id="r2")
    command.upgrade(config, "r2", force=True)


def final_state(rows: list[dict[str, str]]) -> dict[str, str]:
    return {row["id"]: row["text"] for row in rows}


def journal_vector_indexes(config: Config) -> set[int]:
    engine = sa.create_engine(config.url)
    with engine.connect() as conn:
        found = {row[0] for row in conn.execute(sa.select(schema.journal_vector.c.index_id))}
    engine.dispose()
    return found


def test_upsert_is_seen_by_an_open_searcher_without_reopening(refreshing: Config) -> None:
    config = refreshing
    live_on_r1(config)
    searcher = open_searcher(config, "docs")
    assert "new-1" not in {hit.key for hit in searcher.search(NEW_TEXT)}
    with open_writer(config, "docs") as writer:
        writer.upsert("new-1", NEW_TEXT, {"lang": "en"})

    def top() -> tuple[str, object]:
        hit = searcher.search(NEW_TEXT, k=1)[0]
        return hit.key, hit.metadata

    seen(searcher, lambda: top() == ("new-1", {"lang": "en"}), "the upsert")
    searcher.close()


def test_delete_and_re_upsert_of_a_key(refreshing: Config) -> None:
    config = refreshing
    live_on_r1(config)
    rows = corpus_rows(300)
    victim = rows[0]
    searcher = open_searcher(config, "docs")
    assert searcher.search(victim["text"], k=1)[0].key == victim["id"]
    with open_writer(config, "docs") as writer:
        writer.delete(victim["id"])
        seen(
            searcher,
            lambda: victim["id"] not in {hit.key for hit in searcher.search(victim["text"], k=20)},
            "the delete",
        )
        writer.upsert(victim["id"], NEW_TEXT)
    seen(searcher, lambda: searcher.search(NEW_TEXT, k=1)[0].key == victim["id"], "the upsert")
    searcher.close()
    expected = final_state(rows) | {victim["id"]: NEW_TEXT}
    assert_serves(config, config.root / "models" / "a", expected)


def test_writes_during_backfill_are_replayed_into_the_shadow(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    live_on_r1(config)
    command.revision(config, "second", alias="docs", new="models/far", rev_id="r2")
    rows = corpus_rows(300)
    expected = final_state(rows)
    writer = open_writer(config, "docs")
    corpus = Environment.corpus

    def changing_corpus(self: Environment, alias: str) -> Corpus:
        # The corpus is read over time while the application keeps writing: some changes land on
        # documents already read, some on documents not reached yet.
        def read() -> Iterator[Document]:
            for i, doc in enumerate(corpus(self, alias)):
                if i == 100:
                    writer.delete(rows[250]["id"])  # not reached yet: the stream still yields it
                    # Read already, in its old state, in the batch the backfill has not committed.
                    writer.upsert(rows[98]["id"], NEW_TEXT)
                    writer.upsert_many(
                        [("new-1", "a brand new document"), ("new-2", "another one")]
                    )
                    writer.delete_many(["new-2", rows[20]["id"]])
                    writer.upsert(rows[20]["id"], "back with a new text")
                yield doc

        return Corpus(read())

    monkeypatch.setattr(Environment, "corpus", changing_corpus)
    config.options["checkpoint_every"] = "32"
    command.upgrade(config, "r2", force=True)
    writer.close()
    del expected[rows[250]["id"]]
    expected |= {rows[98]["id"]: NEW_TEXT, "new-1": "a brand new document"}
    expected[rows[20]["id"]] = "back with a new text"
    assert_serves(config, config.root / "models" / "far", expected)
    # The backfill stored rows[98]'s old snippet after the write; the replay restored it.
    assert snippet_of(config, rows[98]["id"]) == NEW_TEXT
    # Nothing needed re-embedding: the writer wrote the shadow's vectors as it journaled.
    (event,) = [e for e in command.history(config) if e.action == "upgrade" and e.revision == "r2"]
    assert event.metrics is not None
    assert any("7 change(s) written during the backfill" in note for note in event.metrics["notes"])


def test_writes_after_a_swap_survive_downgrade_without_re_embedding(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrated_to_r2(config)
    rows = corpus_rows(300)
    with open_writer(config, "docs") as writer:
        writer.upsert("new-1", NEW_TEXT)
        writer.delete(rows[0]["id"])
    from embedmig.embedders import LoadedEmbedder

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("the restored index re-embedded documents")

    monkeypatch.setattr(LoadedEmbedder, "encode_documents", refuse)
    command.downgrade(config, "-1")
    assert command.search(config, "docs", NEW_TEXT, k=1)[0].key == "new-1"
    expected = final_state(rows) | {"new-1": NEW_TEXT}
    del expected[rows[0]["id"]]
    monkeypatch.undo()
    assert_serves(config, config.root / "models" / "a", expected)


def test_holdover_ends_with_the_next_swap(config: Config) -> None:
    migrated_to_r2(config)
    (r1_index, r2_index) = (r.id for r in _indexes(config))
    command.revision(config, "third", alias="docs", new="models/near", rev_id="r3")
    command.upgrade(config, "r3", force=True)
    with open_writer(config, "docs") as writer:
        writer.upsert("new-1", NEW_TEXT)
    r3_index = _indexes(config)[-1].id
    assert journal_vector_indexes(config) == {r2_index, r3_index}
    # Restoring r1 still serves the write: its vector is computed from the journal on load.
    command.downgrade(config, "r1")
    assert r1_index not in journal_vector_indexes(config)
    assert_serves(
        config, config.root / "models" / "a", final_state(corpus_rows(300)) | {"new-1": NEW_TEXT}
    )


def test_holdover_of_zero_seconds_writes_only_the_live_index(config: Config) -> None:
    migrated_to_r2(config)
    config.options["writer.holdover"] = "0"
    with open_writer(config, "docs") as writer:
        writer.upsert("new-1", NEW_TEXT)
    assert journal_vector_indexes(config) == {_indexes(config)[-1].id}


def test_compact_folds_the_journal_into_new_snapshots(config: Config) -> None:
    migrated_to_r2(config)
    rows = corpus_rows(300)
    with open_writer(config, "docs") as writer:
        writer.upsert_many([(f"new-{i}", f"{NEW_TEXT} number {i}") for i in range(20)])
        writer.delete_many([row["id"] for row in rows[:10]])
    searcher = open_searcher(config, "docs")
    hits_before = searcher.search(NEW_TEXT, k=10)
    old_path = index_file(config, searcher.index_record)

    result = command.compact(config, "docs")

    assert [f.changes for f in result.folded] == [30, 30]  # live r2 and its holdover, r1
    # The deletes go; the 20 new documents keep their text, which the corpus lacks: a later
    # migration must embed it again.
    assert result.journal_removed == 10
    live = searcher.index_record
    assert index_file(config, live) != old_path and not old_path.exists()
    # The new file's documents in its sidecar (the 20 new keys with them), the old one's gone.
    assert not sidecar.path_of(old_path).exists()
    docs = sidecar.read(index_file(config, live), live.sha256)
    env = Environment(config)
    with env.engine.connect() as conn:
        ids = docids.lookup_ids(conn, "docs", ["new-0", rows[0]["id"]])
    env.dispose()
    assert docs is not None and docs.get(ids["new-0"]) == (
        "new-0",
        f"{NEW_TEXT} number 0"[: docids.SNIPPET_CHARS],
        None,
    )
    assert docs.get(ids[rows[0]["id"]]) is None  # deleted, folded away
    assert searcher.search(NEW_TEXT, k=10) == hits_before  # reloaded the new file, same answers
    assert live.ntotal == 300 + 20 - 10 and live.base_seq == 30
    searcher.close()
    expected = final_state(rows[10:]) | {f"new-{i}": f"{NEW_TEXT} number {i}" for i in range(20)}
    assert_serves(config, config.root / "models" / "far", expected)
    assert command.compact(config, "docs").journal_removed == 0
    command.downgrade(config, "-1")
    assert_serves(config, config.root / "models" / "a", expected)


def test_compact_keeps_changes_a_retired_index_still_needs(config: Config) -> None:
    migrated_to_r2(config)
    config.options["writer.holdover"] = "0"
    with open_writer(config, "docs") as writer:
        writer.upsert("new-1", NEW_TEXT)
    result = command.compact(config, "docs")
    # The retired r1 index got no vector for the write: compaction embedded it for r1 too.
    assert sorted(f.changes for f in result.folded) == [1, 1]
    command.downgrade(config, "-1")
    assert_serves(
        config, config.root / "models" / "a", final_state(corpus_rows(300)) | {"new-1": NEW_TEXT}
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda w: w.upsert("", "text"), "document key '' must be"),
        (lambda w: w.upsert("k" * 600, "text"), "must be a string of 1-512"),
        (lambda w: w.upsert("k", "   "), "document 'k' has no text; delete() it instead"),
        (lambda w: w.upsert("k", "text", {"x": object()}), "metadata of document 'k' is not JSON"),
        (lambda w: w.upsert("k", "text", ["not", "a", "mapping"]), "must be a mapping"),
        (lambda w: w.upsert_many([("ok", "fine"), ("bad",)]), "takes (key, text[, metadata])"),
        (lambda w: w.delete_many(["ok", 7]), "document key '7' must be"),
    ],
)
def test_bad_writes_change_nothing(config: Config, call: object, message: str) -> None:
    live_on_r1(config)
    before = snapshot(config)
    with (
        open_writer(config, "docs") as writer,
        pytest.raises(SourceError, match=re.escape(message)),
    ):
        call(writer)  # type: ignore[operator]
    assert snapshot(config) == before


def test_writer_refuses_an_alias_no_revision_defines(config: Config) -> None:
    live_on_r1(config)
    with pytest.raises(ConfigError, match="no revision defines alias 'doc'"):
        open_writer(config, "doc")


def test_invalid_holdover_is_a_config_error(config: Config) -> None:
    live_on_r1(config)
    config.options["writer.holdover"] = "forever"
    with pytest.raises(
        ConfigError, match=r"'writer.holdover' must be 'next' or a number of seconds"
    ):
        open_writer(config, "docs")


def snippet_of(config: Config, key: str) -> str:
    env = Environment(config)
    with env.engine.connect() as conn:
        doc_id = docids.lookup_ids(conn, "docs", [key])[key]
        snippet = docids.describe_ids(conn, "docs", [doc_id])[doc_id].snippet
    env.dispose()
    return snippet


def _indexes(config: Config) -> list[catalog.IndexRecord]:
    env = Environment(config)
    with env.engine.connect() as conn:
        found = catalog.indexes(conn, "docs")
    env.dispose()
    return found
