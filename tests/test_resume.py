"""A backfill that dies part-way resumes from its last checkpoint without re-embedding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedmig import (
    Config,
    SourceError,
    command,
)
from embedmig.store import files
from tests.support import FLAKY_ENV, corpus_rows, count_encodes, edit, index_file, indexed


def test_killed_backfill_resumes_without_embedding_a_batch_twice(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ini = project / "embedmig.ini"
    edit(ini, "checkpoint_every = 1024", "checkpoint_every = 40")
    (project / "migrations" / "env.py").write_text(FLAKY_ENV)
    config = Config(ini)
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")

    encoded = count_encodes(monkeypatch)
    (project / "die-after").write_text("130")
    with pytest.raises(SourceError, match="lost after 130"):
        command.upgrade(config, "head")
    assert sum(encoded) == 120  # 3 checkpointed batches
    ((alias, revision, live),) = [(s.alias, s.revision, s.live) for s in command.current(config)]
    assert (alias, revision, live) == ("docs", None, None)

    (project / "die-after").unlink()
    command.upgrade(config, "head")
    assert sum(encoded) == 300  # the 120 already spooled were not embedded again

    (state,) = command.current(config)
    assert state.live is not None and state.live.ntotal == 300
    index = files.load(index_file(config, state.live), state.live.sha256)
    rebuilt = Config(
        ini, options={"index_dir": "indexes-again", "sqlalchemy.url": "sqlite:///again.db"}
    )
    command.upgrade(rebuilt, "head")
    (again,) = command.current(rebuilt)
    assert again.live is not None
    other = files.load(index_file(rebuilt, again.live), again.live.sha256)
    ids = np.arange(1, 301, dtype=np.int64)
    np.testing.assert_allclose(
        np.stack([index.reconstruct(int(i)) for i in ids]),
        np.stack([other.reconstruct(int(i)) for i in ids]),
        atol=1e-6,
    )
    assert not list(Path(project / "indexes").rglob("*.vec"))  # the spool is gone


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


# ---- refused inputs (each found by a probe; each failed before its fix) --------------------


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
