"""Nothing silently lost across migrations: a new index covers what the alias served, plus the
corpus's own changes, or the upgrade refuses. Upgrades run as `embedmig` processes, on SQLite and
on PostgreSQL; the final keys and texts are read back from what a searcher serves."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from embedmig import Config, command, open_writer
from embedmig.history import schema
from embedmig.metrics import coverage
from embedmig.metrics.coverage import Docs
from tests.support import CLI, assert_serves, corpus_rows, edit, embedmig, indexed, wait_until

NEW = "Zebrafish fin regeneration depends on osteoblast dedifferentiation, report"

# A corpus that can hold still half-way, so a test can write while a backfill is running.
PAUSING_ENV = """
import time
from pathlib import Path
from embedmig import sources

def corpus(config, alias):
    for n, doc in enumerate(sources.corpus_from_config(config)):
        if n == 150 and Path(config.root, "pause").exists():
            Path(config.root, "paused").touch()
            while not Path(config.root, "resume").exists():
                time.sleep(0.05)
        yield doc
"""


def revisions(config: Config, second: str = "models/a", gates: str = "Gates()") -> None:
    """r1 builds the alias from the corpus (Flat); r2 moves it to ``second`` on HNSW32."""
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    rev = command.revision(
        config, "second", alias="docs", new=second, rev_id="r2", index_factory="HNSW32"
    )
    path = Path(str(rev.path))
    edit(path, "gates = Gates(min_overlap_at_10=0.5, max_score_shift=0.2)", f"gates = {gates}")
    first = embedmig(config.root, "upgrade", "r1")
    assert first.returncode == 0, first.stderr


def corpus_now(project: Path) -> dict[str, str]:
    rows = [json.loads(line) for line in (project / "corpus.jsonl").open()]
    return {row["id"]: row["text"] for row in rows}


def rewrite_corpus(project: Path, texts: dict[str, str]) -> None:
    with (project / "corpus.jsonl").open("w") as fh:
        for key, text in texts.items():
            fh.write(json.dumps({"id": key, "text": text}) + "\n")


def lose_written_texts(config: Config) -> None:
    """Fold the writes into the live index, then lose their texts from the journal (as the
    `compact` of embedmig before coverage did)."""
    assert embedmig(config.root, "compact", "docs").returncode == 0
    engine = sa.create_engine(config.url)
    with engine.begin() as conn:
        conn.execute(schema.journal.delete())
    engine.dispose()


def twenty_new_and_ten_deleted(config: Config) -> dict[str, str]:
    """The writes of the issue's probe, acknowledged; what the alias serves after them."""
    rows = corpus_rows(300)
    with open_writer(config, "docs") as writer:
        writer.upsert_many([(f"new-{i}", f"{NEW} {i}") for i in range(20)])
        writer.delete_many([row["id"] for row in rows[:10]])
    return {r["id"]: r["text"] for r in rows[10:]} | {f"new-{i}": f"{NEW} {i}" for i in range(20)}


def last_upgrade(config: Config) -> dict[str, object]:
    (event, *_) = [e for e in command.history(config) if e.action == "upgrade"]
    assert event.metrics is not None
    return event.metrics


def test_writes_acknowledged_before_a_migration_reach_the_new_index(any_db: Config) -> None:
    config = any_db
    project = config.root
    revisions(config)
    expected = twenty_new_and_ten_deleted(config)

    result = embedmig(project, "upgrade", "r2")

    assert result.returncode == 0, result.stderr
    assert_serves(config, config.root / "models" / "a", expected)
    report = last_upgrade(config)
    metrics = report["metrics"]
    assert isinstance(metrics, dict)
    assert [metrics[m] for m in ("coverage_missing", "coverage_resurrected", "coverage_stale")] == [
        0,
        0,
        0,
    ]
    notes = report["notes"]
    assert isinstance(notes, list)
    assert any("30 acknowledged write(s) the corpus lacks were carried over" in n for n in notes)


def test_compact_keeps_what_a_later_migration_must_carry_over(any_db: Config) -> None:
    config = any_db
    project = config.root
    revisions(config)
    expected = twenty_new_and_ten_deleted(config)
    assert embedmig(project, "compact", "docs").returncode == 0

    result = embedmig(project, "upgrade", "r2")

    assert result.returncode == 0, result.stderr
    assert_serves(config, config.root / "models" / "a", expected)


def test_an_upgrade_that_cannot_carry_a_write_over_refuses_unless_told(any_db: Config) -> None:
    config = any_db
    project = config.root
    revisions(config)
    with open_writer(config, "docs") as writer:
        writer.upsert_many([(f"new-{i}", f"{NEW} {i}") for i in range(20)])
    lose_written_texts(config)
    before = indexed(config, "docs")

    refused = embedmig(project, "-q", "upgrade", "r2")

    assert refused.returncode == 3
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("embedmig: error: gate failed")
    assert "coverage_missing = 20.0000 (needs <= 0): FAILED (new-0, new-1," in line
    assert "alias unchanged" in line
    (state,) = command.current(config)
    assert state.revision == "r1"
    assert sorted(indexed(config, "docs")) == sorted(before)

    accepted = embedmig(project, "upgrade", "r2", "--force")
    assert accepted.returncode == 0, accepted.stderr
    (event, *_) = [e for e in command.history(config) if e.action == "upgrade"]
    assert event.status == "forced" and event.forced
    assert sorted(indexed(config, "docs")) == sorted(corpus_now(project))


def test_an_explicit_coverage_gate_accepts_what_it_names(config: Config) -> None:
    revisions(config, gates="Gates(max_coverage_missing=20)")
    with open_writer(config, "docs") as writer:
        writer.upsert_many([(f"new-{i}", f"{NEW} {i}") for i in range(20)])
    lose_written_texts(config)
    result = embedmig(config.root, "upgrade", "r2")
    assert result.returncode == 0, result.stderr
    assert last_upgrade(config)["metrics"]["coverage_missing"] == 20  # type: ignore[index]


@pytest.mark.process
def test_writes_before_during_and_after_the_backfill_all_hold(any_db: Config) -> None:
    config = any_db
    project = config.root
    (config.script_location / "env.py").write_text(PAUSING_ENV)
    revisions(config, second="models/far")
    rows = corpus_rows(300)
    expected = {r["id"]: r["text"] for r in rows}
    with open_writer(config, "docs") as writer:  # before
        writer.upsert("before-new", f"{NEW} before")
        writer.upsert(rows[200]["id"], f"{NEW} rewritten before")
        writer.delete(rows[5]["id"])
    (project / "pause").touch()
    upgrade = subprocess.Popen(
        [*CLI, "upgrade", "r2"],
        cwd=project,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(
        (project / "paused").exists, "the upgrade paused", alive=lambda: upgrade.poll() is None
    )
    with open_writer(config, "docs") as writer:  # during: the stream has not reached row 200
        writer.upsert("during-new", f"{NEW} during")
        writer.upsert(rows[250]["id"], f"{NEW} rewritten during")
        writer.delete(rows[260]["id"])
        writer.delete("before-new")
    (project / "resume").touch()
    _, err = upgrade.communicate(timeout=600)
    assert upgrade.returncode == 0, err
    with open_writer(config, "docs") as writer:  # after the swap
        writer.upsert("after-new", f"{NEW} after")
        writer.delete(rows[7]["id"])

    expected |= {
        rows[200]["id"]: f"{NEW} rewritten before",
        "during-new": f"{NEW} during",
        rows[250]["id"]: f"{NEW} rewritten during",
        "after-new": f"{NEW} after",
    }
    for gone in (rows[5]["id"], rows[260]["id"], rows[7]["id"]):
        del expected[gone]
    assert_serves(config, config.root / "models" / "far", expected)


def test_a_delete_then_a_re_upsert_before_the_migration_keeps_the_last_write(
    any_db: Config,
) -> None:
    config = any_db
    project = config.root
    revisions(config)
    rows = corpus_rows(300)
    with open_writer(config, "docs") as writer:
        writer.delete(rows[3]["id"])
        writer.upsert(rows[3]["id"], f"{NEW} back again")
        writer.upsert("fresh", f"{NEW} first")
        writer.delete("fresh")
        writer.upsert("fresh", f"{NEW} second")
    result = embedmig(project, "upgrade", "r2")
    assert result.returncode == 0, result.stderr
    expected = {r["id"]: r["text"] for r in rows}
    expected |= {rows[3]["id"]: f"{NEW} back again", "fresh": f"{NEW} second"}
    assert_serves(config, config.root / "models" / "a", expected)


def test_when_the_corpus_and_a_writer_both_changed_a_document_the_later_change_wins(
    any_db: Config,
) -> None:
    config = any_db
    project = config.root
    revisions(config, second="models/far")
    rows = corpus_rows(300)
    both, writer_only, corpus_only = rows[10]["id"], rows[11]["id"], rows[12]["id"]
    with open_writer(config, "docs") as writer:
        writer.upsert(both, f"{NEW} by the writer")
        writer.upsert(writer_only, f"{NEW} only by the writer")
    # Then the application's own store changes (its later edit reaches the corpus file).
    texts = corpus_now(project)
    texts[both] = "the corpus edited this abstract after the write"
    texts[corpus_only] = "the corpus alone edited this abstract"
    rewrite_corpus(project, texts)

    result = embedmig(project, "upgrade", "r2")

    assert result.returncode == 0, result.stderr
    expected = texts | {writer_only: f"{NEW} only by the writer"}
    assert_serves(config, config.root / "models" / "far", expected)
    notes = last_upgrade(config)["notes"]
    assert isinstance(notes, list)
    assert any("1 document(s) changed by both the corpus and a writer" in n for n in notes)


def test_writes_to_an_alias_with_no_index_yet_reach_its_first_index(config: Config) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    rows = corpus_rows(300)
    with open_writer(config, "docs") as writer:
        writer.upsert("early", f"{NEW} early")
        writer.upsert(rows[1]["id"], f"{NEW} rewritten early")  # the corpus read is later: it wins
    result = embedmig(config.root, "upgrade", "r1")
    assert result.returncode == 0, result.stderr
    assert_serves(
        config,
        config.root / "models" / "a",
        {r["id"]: r["text"] for r in rows} | {"early": f"{NEW} early"},
    )


def test_a_dry_run_forecasts_the_carry_over_and_what_cannot_be_carried(config: Config) -> None:
    revisions(config)
    with open_writer(config, "docs") as writer:
        writer.upsert_many([(f"new-{i}", f"{NEW} {i}") for i in range(5)])
        writer.delete(corpus_rows(1)[0]["id"])
    (report,) = command.upgrade(config, "r2", dry_run=True, sample=0.5)
    assert report.metrics["coverage_missing"] == 0
    assert any(
        "6 acknowledged write(s) the corpus lacks would be carried over" in n for n in report.notes
    )


def test_the_coverage_rule_keeps_served_documents_unless_the_corpus_changed_them() -> None:
    def docs(**texts: int) -> Docs:
        return Docs.of(
            np.array([int(k[1:]) for k in texts], dtype=np.int64),
            np.array(list(texts.values()), dtype=np.int64),
        )

    # d1 unchanged everywhere; d2 rewritten by a writer; d3 deleted by a writer; d4 written new;
    # d5 changed by the corpus; d6 changed by both; d7 removed by the corpus; d8 added by it;
    # d9 changed by the corpus and then written during the backfill.
    live = docs(d1=1, d2=20, d4=40, d5=5, d6=61, d7=7, d9=90)
    before = docs(d1=1, d2=2, d3=3, d5=5, d6=6, d7=7, d9=9)
    now = docs(d1=1, d2=2, d3=3, d5=50, d6=60, d8=8, d9=91)
    found = coverage.target(live, before, now, written=np.array([9]))
    assert dict(zip(found.docs.ids.tolist(), found.docs.sha.tolist(), strict=True)) == {
        1: 1,
        2: 20,
        4: 40,
        5: 50,
        6: 60,
        8: 8,
        9: 90,
    }
    assert found.conflicts.tolist() == [6]
    gap = coverage.compare(found.docs, now)
    assert (gap.missing.tolist(), gap.resurrected.tolist(), gap.stale.tolist()) == (
        [4],
        [3],
        [2, 9],
    )
