"""Specs of upgrade: backfill, evaluate, gates and the atomic alias swap."""

from __future__ import annotations

import re
from pathlib import Path

import faiss
import numpy as np
import pytest

from embedmig import Config, GateFailed, ScriptError, StateError, command
from embedmig.store import files
from tests.support import edit, embedmig, index_file, snapshot


def set_gates(config: Config, rev_id: str, gates: str) -> None:
    path = next((config.script_location / "versions").glob(f"{rev_id}_*.py"))
    text = re.sub(r"^gates = .*$", f"gates = {gates}", path.read_text(), flags=re.M)
    path.write_text(text)


def two_revisions(config: Config, second: str = "models/near", gates: str | None = None) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.revision(config, "second", alias="docs", new=second, rev_id="r2")
    if gates is not None:
        set_gates(config, "r2", gates)


def call_twice(config: Config, rev_id: str, call: str) -> None:
    """Make the revision script call ``call`` twice in a row."""
    path = next((config.script_location / "versions").glob(f"{rev_id}_*.py"))
    text = path.read_text()
    assert f"    {call}" in text
    path.write_text(text.replace(f"    {call}", f"    {call}\n    {call}", 1))


def live(config: Config):  # type: ignore[no-untyped-def]
    (state,) = command.current(config)
    return state


def test_first_upgrade_builds_the_alias_first_index(config: Config) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    (report,) = command.upgrade(config, "head")
    state = live(config)
    assert (state.alias, state.revision, state.is_head) == ("docs", "r1", True)
    assert state.live is not None and state.live.ntotal == 300 and state.live.dim == 32
    assert report.old_model is None and report.corpus_size == 300


def test_upgrade_to_a_nearby_model_reports_high_overlap_and_swaps(config: Config) -> None:
    two_revisions(config)
    reports = command.upgrade(config, "head")
    assert [r.revision for r in reports] == ["r1", "r2"]
    metrics = reports[1].metrics
    assert metrics["overlap_at_10"] is not None and metrics["overlap_at_10"] > 0.6
    assert metrics["score_ks"] is not None and 0 <= metrics["score_ks"] <= 1
    assert live(config).revision == "r2"


def test_upgrade_to_an_unrelated_model_reports_low_overlap(config: Config) -> None:
    two_revisions(config, second="models/far")
    command.upgrade(config, "r1")
    (report,) = command.upgrade(config, "head", force=True)
    assert report.metrics["overlap_at_10"] is not None and report.metrics["overlap_at_10"] < 0.3


def test_failing_gate_leaves_alias_unchanged_and_keeps_the_shadow(config: Config) -> None:
    two_revisions(config, second="models/far", gates="Gates(min_overlap_at_10=0.9)")
    command.upgrade(config, "r1")
    before = live(config).live
    with pytest.raises(GateFailed, match=r"overlap_at_10 = 0\.\d+ \(needs >= 0\.9\)"):
        command.upgrade(config, "head")
    after = live(config)
    assert after.revision == "r1" and after.live == before
    from embedmig.environment import Environment
    from embedmig.store import catalog, events

    env = Environment(config)
    with env.engine.connect() as conn:
        shadows = [i for i in catalog.indexes(conn, "docs") if i.revision == "r2"]
        (event, *_) = events.history(conn, "docs")
    assert [s.state for s in shadows] == ["ready"]
    assert index_file(config, shadows[0]).is_file()
    assert (event.action, event.status, event.verdict) == ("upgrade", "gate-failed", "fail")
    assert event.metrics is not None and event.metrics["verdict"]["checks"][0]["passed"] is False


def test_force_swaps_despite_a_failing_gate_and_is_recorded(config: Config) -> None:
    two_revisions(config, second="models/far", gates="Gates(min_overlap_at_10=0.9)")
    command.upgrade(config, "head", force=True)
    assert live(config).revision == "r2"
    (event, *_) = command.history(config)
    assert (event.status, event.verdict, event.forced) == ("forced", "forced", True)


def test_gate_on_a_metric_that_was_not_measured_fails_closed(config: Config) -> None:
    two_revisions(config, gates="Gates(min_recall_ratio=0.9)")  # no qrels configured
    command.upgrade(config, "r1")
    with pytest.raises(GateFailed, match="recall_ratio = not measured"):
        command.upgrade(config, "head")


def test_dry_run_changes_nothing_but_its_history_row(config: Config) -> None:
    two_revisions(config)
    command.upgrade(config, "r1")
    before = snapshot(config, with_history=False)
    history_before = len(command.history(config))
    (report,) = command.upgrade(config, "head", dry_run=True, sample=120)
    assert report.kind == "dry-run" and report.metrics["overlap_at_10"] is not None
    assert snapshot(config, with_history=False) == before
    events = command.history(config)
    assert len(events) == history_before + 1 and events[0].action == "dry-run"


def test_dry_run_writes_a_json_report(config: Config, project: Path) -> None:
    two_revisions(config)
    command.upgrade(config, "r1")
    command.upgrade(config, "head", dry_run=True, sample=100, report_path=project / "r.json")
    import json

    data = json.loads((project / "r.json").read_text())
    assert data["schema_version"] == 7 and data["kind"] == "dry-run" and data["revision"] == "r2"
    assert data["verdict"]["result"] == "pass"


def test_dry_run_of_a_first_revision_builds_nothing(config: Config) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    assert command.current(config) == []  # creates the history database
    before = snapshot(config, with_history=False)
    command.upgrade(config, "head", dry_run=True, sample=50)
    assert snapshot(config, with_history=False) == before
    assert command.current(config) == []


def test_old_that_does_not_match_the_live_index_is_refused(config: Config) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.revision(
        config, "second", alias="docs", old="models/far", new="models/near", rev_id="r2"
    )
    command.upgrade(config, "r1")
    before = snapshot(config)
    with pytest.raises(StateError, match="does not match"):
        command.upgrade(config, "head")
    assert snapshot(config) == before


def test_upgrade_that_never_swaps_is_an_error(config: Config) -> None:
    two_revisions(config)
    command.upgrade(config, "r1")
    path = next((config.script_location / "versions").glob("r2_*.py"))
    edit(path, "    ctx.swap()", "    pass")
    with pytest.raises(ScriptError, match=r"without calling ctx\.swap"):
        command.upgrade(config, "head")
    assert live(config).revision == "r1"


def test_upgrade_at_head_is_a_no_op(config: Config) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.upgrade(config, "head")
    before = snapshot(config)
    assert command.upgrade(config, "head") == []
    assert snapshot(config) == before


def test_repeated_keys_keep_the_last_text(config: Config, project: Path) -> None:
    import json

    with (project / "corpus.jsonl").open("a") as fh:
        fh.write(json.dumps({"id": "dup", "text": "first text of dup"}) + "\n")
        fh.write(json.dumps({"id": "dup", "text": "cancer stem cells tumor growth"}) + "\n")
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    (report,) = command.upgrade(config, "head")
    assert report.corpus_size == 301
    assert any("repeated document key" in note for note in report.notes)
    hits = command.search(config, "docs", "cancer stem cells tumor growth", k=1)
    assert hits[0].key == "dup" and hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_index_factory_of_the_revision_is_used(config: Config) -> None:
    command.revision(
        config, "first", alias="docs", new="models/a", rev_id="r1", index_factory="IVF4,Flat"
    )
    command.upgrade(config, "head")
    record = live(config).live
    assert record is not None and record.factory == "IVF4,Flat"
    index = files.load(index_file(config, record), record.sha256)
    assert index.ntotal == 300 and "IVF" in type(faiss.downcast_index(index.index)).__name__


def test_vectors_in_the_index_equal_a_fresh_encoding(
    config: Config, models: dict[str, Path]
) -> None:
    from sentence_transformers import SentenceTransformer

    from embedmig.environment import Environment
    from embedmig.store import docids

    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.upgrade(config, "head")
    record = live(config).live
    assert record is not None
    index = files.load(index_file(config, record), record.sha256)
    env = Environment(config)
    with env.engine.connect() as conn:
        ids = docids.lookup_ids(conn, "docs", ["33370", "8764879"])
    from tests.support import corpus_rows

    texts = {row["id"]: row["text"] for row in corpus_rows(300)}
    model = SentenceTransformer(str(models["a"]), device="cpu")
    expected = model.encode([texts["33370"], texts["8764879"]], normalize_embeddings=True)
    got = np.stack([index.reconstruct(ids["33370"]), index.reconstruct(ids["8764879"])])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_an_invalid_index_factory_is_refused_before_embedding(config: Config) -> None:
    command.revision(config, "first", alias="docs", new="models/a", index_factory="NoSuchIndex")
    assert command.current(config) == []
    before = snapshot(config)
    with pytest.raises(Exception, match="invalid faiss index factory 'NoSuchIndex'"):
        command.upgrade(config)
    assert snapshot(config) == before
    # A dry run builds no index, yet refuses the factory the upgrade would refuse.
    with pytest.raises(Exception, match="invalid faiss index factory 'NoSuchIndex'"):
        command.upgrade(config, dry_run=True, sample=50)
    assert snapshot(config) == before


def test_a_rerun_that_fails_to_start_keeps_the_kept_shadow_and_its_file(config: Config) -> None:
    """Files go after the commit that drops their index: a start that rolls back (here a factory
    the model cannot build) leaves the shadow kept for inspection whole, row and file."""
    two_revisions(config, second="models/far", gates="Gates(min_overlap_at_10=0.9)")
    command.upgrade(config, "r1")
    with pytest.raises(GateFailed):
        command.upgrade(config, "head")
    before = snapshot(config)
    path = next((config.script_location / "versions").glob("r2_*.py"))
    text = path.read_text().replace("index_factory = 'Flat'", "index_factory = 'IVF9x'")
    assert "'IVF9x'" in text
    path.write_text(text)
    with pytest.raises(Exception, match="invalid faiss index factory 'IVF9x'"):
        command.upgrade(config, "head")
    after = snapshot(config)
    assert after["files"] == before["files"]
    assert {k: v for k, v in after.items() if k != "versions"} == {
        k: v for k, v in before.items() if k != "versions"
    }


def test_a_second_swap_in_one_upgrade_changes_nothing_and_the_exit_code_tells_the_truth(
    config: Config,
) -> None:
    two_revisions(config)
    call_twice(config, "r2", "ctx.swap()")
    command.upgrade(config, "r1")
    done = embedmig(config.root, "upgrade", "head")
    assert done.returncode == 0, done.stderr
    assert "ctx.swap() called again in r2: already swapped" in done.stderr
    assert live(config).revision == "r2"
    upgrades = [e for e in command.history(config, "docs") if e.action == "upgrade"]
    assert [(e.revision, e.status) for e in upgrades] == [("r2", "ok"), ("r1", "ok")]
    again = embedmig(config.root, "upgrade", "head")  # and later runs are at head, not failing
    assert again.returncode == 0, again.stderr


def test_a_second_backfill_in_one_upgrade_is_refused_and_the_alias_stays(config: Config) -> None:
    two_revisions(config)
    call_twice(config, "r2", "ctx.backfill()")
    command.upgrade(config, "r1")
    done = embedmig(config.root, "upgrade", "head")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "embedmig: error: ctx.backfill() or ctx.adapt() was called twice in one upgrade()"
    )
    assert live(config).revision == "r1"


def test_a_second_rollback_in_one_downgrade_changes_nothing(config: Config) -> None:
    two_revisions(config)
    call_twice(config, "r2", "ctx.rollback()")
    command.upgrade(config, "head")
    done = embedmig(config.root, "downgrade", "-1")
    assert done.returncode == 0, done.stderr
    assert "ctx.rollback() called again in r2: already rolled back" in done.stderr
    assert live(config).revision == "r1"
    downgrades = [e for e in command.history(config, "docs") if e.action == "downgrade"]
    assert len(downgrades) == 1
