"""Adapter revisions: the new model's queries served on the old index through a fitted map,
measured against a full re-embed before it may serve, and rolled back like a swap (tiny models;
the real ones in tests/test_real_models.py)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from embedmig import (
    CanaryOpen,
    Config,
    Embedder,
    GateFailed,
    ScriptError,
    StateError,
    StoreError,
    command,
    open_searcher,
    open_writer,
)
from embedmig.environment import Environment
from embedmig.metrics import names as metric_names
from embedmig.store import catalog, docids, files
from tests.support import (
    corpus_rows,
    edit,
    embedmig,
    index_file,
    random_model,
    snapshot,
    with_judged_queries,
)

QUERY = "glioblastoma stem cells tumor growth"


def adapter_revision(
    config: Config,
    new: str | Embedder = "models/near",
    *,
    gates: str = "",
    kind: str = "procrustes",
) -> Path:
    """r1 builds `docs` on model a; r2 adapts it to ``new`` (gates: the Gates(...) arguments)."""
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    rev = command.revision(config, "adapt", alias="docs", new=new, rev_id="r2", adapter=kind)
    path = Path(rev.path)
    edit(path, "gates = Gates()", f"gates = Gates({gates})")
    command.upgrade(config, "r1")
    return path


def adapter_record(config: Config) -> catalog.AdapterRecord | None:
    (state,) = command.current(config)
    return state.adapter


def bridge_up(config: Config) -> None:
    """r1 builds `docs` on model a; r2 backfills model near with a bridge, behind a gate no
    shadow passes: the upgrade stops with the shadow built and the bridge up."""
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    rev = command.revision(config, "second", alias="docs", new="models/near", rev_id="r2")
    path = Path(rev.path)
    edit(path, "ctx.backfill()", 'ctx.backfill(bridge="procrustes")')
    edit(path, "min_overlap_at_10=0.5", "min_overlap_at_10=1.1")
    command.upgrade(config, "r1")
    with pytest.raises(GateFailed):
        command.upgrade(config, "head")


def test_an_adapter_revision_serves_the_live_index_to_the_new_model(
    config: Config, models: dict[str, Path]
) -> None:
    adapter_revision(config, gates="min_adapter_overlap_at_10=0.0")
    (before,) = command.current(config)
    searcher = open_searcher(config, "docs")  # opened before: it follows the swap unrestarted
    old_hits = searcher.search(QUERY)
    (report,) = command.upgrade(config, "head")
    (after,) = command.current(config)
    assert after.revision == "r2" and after.live is not None
    assert after.live == before.live  # no index built or changed
    adapter = after.adapter
    assert adapter is not None and adapter.kind == "procrustes" and adapter.revision == "r2"
    assert adapter.pairs == 300 and report.metrics["adapter_overlap_at_10"] is not None
    # The search is the new model's query vector through the map, on the old index.
    env = Environment(config)
    adapted = env.adapted(adapter)
    index = files.load(index_file(config, after.live), after.live.sha256)
    _, ids = index.search(adapted.encode_queries([QUERY]), 10)
    with env.engine.connect() as conn:
        keys = docids.describe_ids(conn, "docs", ids[0])
    env.dispose()
    hits = searcher.search(QUERY)
    searcher.close()
    assert [h.key for h in hits] == [keys[int(i)].key for i in ids[0]]
    assert hits != old_hits
    assert command.history(config)[0].action == "adapter"
    shown = embedmig(config.root, "current").stdout
    assert "through adapter #1 (procrustes map from models/near)" in shown


def test_the_map_is_a_verified_file_recorded_in_sql(config: Config) -> None:
    adapter_revision(config, gates="min_adapter_overlap_at_10=0.0")
    command.upgrade(config, "head")
    adapter = adapter_record(config)
    assert adapter is not None and adapter.path is not None and adapter.sha256 is not None
    path = config.index_dir / adapter.path
    import hashlib

    assert hashlib.sha256(path.read_bytes()).hexdigest() == adapter.sha256
    path.write_bytes(path.read_bytes()[:-8] + b"tampered")
    with pytest.raises(StoreError, match="does not match its recorded sha256"):
        command.search(config, "docs", QUERY)


def test_writers_store_new_documents_through_the_map(config: Config) -> None:
    adapter_revision(config, gates="min_adapter_overlap_at_10=0.0")
    command.upgrade(config, "head")
    text = "A brand new abstract about zebrafish heart regeneration after injury"
    with open_writer(config, "docs") as writer:
        writer.upsert("fresh-1", text)
    with open_searcher(config, "docs") as searcher:
        ids, vectors = searcher.view.contents()
        stored = vectors[list(ids).index(int(ids.max()))]
        expected = searcher.view.embedder.encode_documents([text])[0]
        assert searcher.search(text, k=1)[0].key == "fresh-1"
    np.testing.assert_allclose(stored, expected, atol=1e-6)


def test_downgrade_from_an_adapter_revision_serves_the_old_model_again(config: Config) -> None:
    adapter_revision(config, gates="min_adapter_overlap_at_10=0.0")
    hits_before = command.search(config, "docs", QUERY)
    command.upgrade(config, "head")
    assert command.search(config, "docs", QUERY) != hits_before
    (undone,) = command.downgrade(config, "-1")
    assert undone.revision == "r2"
    (state,) = command.current(config)
    assert state.revision == "r1" and state.adapter is None
    assert command.search(config, "docs", QUERY) == hits_before
    event = command.history(config)[0]
    assert (event.action, event.message) == ("downgrade", "adapter #1 retired")
    command.upgrade(config, "head")  # and forward again
    assert adapter_record(config) is not None


def test_without_qrels_the_default_adapter_gate_fails_closed_and_the_alias_stays(
    config: Config,
) -> None:
    adapter_revision(config)
    before = snapshot(config, with_history=False)
    ran = embedmig(config.root, "upgrade")
    assert ran.returncode == 3
    line = ran.stderr.strip().splitlines()[-1]
    assert "adapter_recall_ratio = not measured (needs >= 0.95): FAILED" in line
    assert "a revision whose upgrade() calls ctx.backfill() is the way" in line
    after = snapshot(config, with_history=False)
    assert after["embedmig_version"] == before["embedmig_version"]
    assert after["embedmig_index"] == before["embedmig_index"]
    assert command.current(config)[0].adapter is None


def test_a_map_from_random_vectors_is_refused_by_the_default_gates(
    project: Path, models: dict[str, Path]
) -> None:
    config = with_judged_queries(project, 60, words=12)
    adapter_revision(config, random_model(project))
    with pytest.raises(GateFailed, match=r"adapter_recall_ratio = 0\.0") as failed:
        command.upgrade(config, "head")
    metrics = failed.value.report.metrics
    assert (
        metrics["adapter_recall_ratio_ci_high"] or 0.0
    ) < 0.5  # refused with certainty, not by noise
    assert command.current(config)[0].revision == "r1"
    env = Environment(config)
    with env.engine.connect() as conn:
        assert catalog.adapters(conn) == []  # a refused map is not kept
    env.dispose()
    assert list(config.index_dir.rglob("*.map.npz")) == []


def test_the_report_names_every_adapter_metric_with_its_interval(
    project: Path, models: dict[str, Path]
) -> None:

    config = with_judged_queries(project, 60, words=12)
    adapter_revision(config, gates="min_adapter_recall_ratio=0.0", kind="affine")
    (report,) = command.upgrade(config, "head")
    for name in metric_names.ADAPTER:
        low, value, high = (report.metrics[name + s] for s in ("_ci_low", "", "_ci_high"))
        assert low is not None and value is not None and high is not None
        assert low <= value <= high, name
    assert report.metrics["recall_at_10_old"] is not None  # and the usual old-vs-new figures
    assert report.embedding["forecast_tokens"] > 0  # what the full re-embed would have cost


def test_a_dry_run_of_an_adapter_revision_stores_nothing(config: Config) -> None:
    adapter_revision(config, gates="min_adapter_overlap_at_10=0.0", kind="mlp")
    before = snapshot(config, with_history=False)
    (report,) = command.upgrade(config, "head", dry_run=True)
    assert report.metrics["adapter_overlap_at_10"] is not None
    assert snapshot(config, with_history=False) == before
    assert command.history(config)[0].action == "dry-run"


def test_a_bridge_lets_searchers_use_the_new_model_until_the_swap(config: Config) -> None:
    bridge_up(config)
    (state,) = command.current(config)
    assert state.revision == "r1" and state.adapter is None  # the alias still serves model a
    assert state.live is not None
    near = Embedder("models/near")
    with open_searcher(config, "docs", near) as searcher:
        assert searcher.view.adapter is not None and searcher.view.adapter.state == "bridge"
        assert searcher.index_record.id == state.live.id  # the live index, through the bridge
        bridged = searcher.search(QUERY)
        command.upgrade(config, "head", force=True)  # the swap: the shadow is the new model's
        assert searcher.view.adapter is None and searcher.index_record.revision == "r2"
        assert searcher.search(QUERY) != bridged
    actions = [e.action for e in reversed(command.history(config))]
    assert actions == ["upgrade", "bridge", "upgrade", "upgrade"]  # r1, bridge, failed gate, swap
    with (
        pytest.raises(StateError, match="serves no index or map for models/far"),
        open_searcher(config, "docs", Embedder("models/far")) as searcher,
    ):
        searcher.search(QUERY)


def test_prune_drops_a_bridge_with_the_shadow_it_stood_in_for(config: Config) -> None:
    bridge_up(config)
    pruned = command.prune(config, "docs")
    assert [i.revision for i in pruned.dropped] == ["r2"]
    assert [(a.revision, a.state) for a in pruned.adapters] == [("r2", "bridge")]
    assert list(config.index_dir.rglob("*.map.npz")) == []
    with (
        pytest.raises(StateError, match="serves no index or map for models/near"),
        open_searcher(config, "docs", Embedder("models/near")) as searcher,
    ):
        searcher.search(QUERY)


def test_a_revision_after_an_adapter_revision_starts_from_the_adapted_search(
    config: Config,
) -> None:
    adapter_revision(config, gates="min_adapter_overlap_at_10=0.0")
    command.upgrade(config, "head")
    adapted_hits = command.search(config, "docs", QUERY)
    command.revision(config, "re-embed", alias="docs", new="models/near", rev_id="r3")
    (report,) = command.upgrade(config, "head", force=True)
    assert report.old_model == "models/near through a procrustes map"
    (state,) = command.current(config)
    assert state.revision == "r3" and state.adapter is None
    assert state.live is not None and state.live.revision == "r3"
    command.downgrade(config, "-1")  # back on r1's index, through r2's map again
    (state,) = command.current(config)
    assert state.revision == "r2" and state.adapter is not None
    assert state.live is not None and state.live.revision == "r1"
    assert command.search(config, "docs", QUERY) == adapted_hits


def test_a_canary_after_an_adapter_revision_compares_the_adapted_search_with_the_shadow(
    config: Config,
) -> None:
    adapter_revision(config, gates="min_adapter_overlap_at_10=0.0")
    command.upgrade(config, "head")
    ini = config.root / "embedmig.ini"
    ini.write_text(
        ini.read_text()
        + "canary.fraction = 1\ncanary.min_queries = 20\nsearcher.poll_seconds = 0.05\n"
    )
    config = Config(ini)
    rev = command.revision(config, "re-embed", alias="docs", new="models/near", rev_id="r3")
    path = Path(rev.path)
    edit(path, "    ctx.swap()", "    ctx.canary()\n    ctx.swap()")
    edit(path, "min_overlap_at_10=0.5", "min_overlap_at_10=0.0")
    with pytest.raises(CanaryOpen):
        command.upgrade(config, "head")
    texts = [" ".join(row["text"].split()[:6]) for row in corpus_rows(20)]
    with open_searcher(config, "docs") as searcher:  # the alias's searcher: through the map
        served = [searcher.search(t) for t in texts]  # the warm-up starts its canary poll
        deadline = time.monotonic() + 60
        while not searcher.mirroring and time.monotonic() < deadline:
            time.sleep(0.02)  # no search meanwhile: only the next 20 are mirrored
        assert [searcher.search(t) for t in texts] == served
        assert searcher.flush(30)
        mirrored = searcher.traffic.mirrored  # the warm-up's last searches may be mirrored too
    (report,) = command.upgrade(config, "head")
    assert report.metrics["canary_queries"] == mirrored >= 20
    assert report.old_model == "models/near through a procrustes map"
    # The same model on both sides of the canary, one through the map: close, not the same.
    overlap = report.metrics["canary_overlap_at_10"]
    assert overlap is not None and 0.3 < overlap < 1.0
    assert command.current(config)[0].revision == "r3"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ('ctx.adapt("rotation")', "adapter kind 'rotation': use one of procrustes, affine, mlp"),
        ('ctx.adapt("procrustes", rank=8)', "a procrustes map has no rank"),
        ('ctx.adapt("affine", rank=0)', "adapter rank must be a positive integer, got 0"),
        ('ctx.adapt("mlp", epochs=0)', "adapter epochs must be a positive integer, got 0"),
        ("ctx.adapt()\n    ctx.backfill()", "ctx.backfill() or ctx.adapt() was called twice"),
        (
            "ctx.adapt()\n    ctx.evaluate()\n    ctx.canary()",
            "an adapter revision builds none: its map is measured by ctx.evaluate()",
        ),
    ],
)
def test_a_bad_adapt_call_is_one_line_and_changes_nothing(
    config: Config, call: str, message: str
) -> None:
    path = adapter_revision(config, gates="min_adapter_overlap_at_10=0.0")
    edit(path, "ctx.adapt('procrustes')", call)
    before = snapshot(config)
    ran = embedmig(config.root, "upgrade")
    assert ran.returncode == 1 and message in ran.stderr and "Traceback" not in ran.stderr
    assert snapshot(config) == before


def test_a_first_revision_cannot_be_an_adapter_revision(config: Config) -> None:
    with pytest.raises(ScriptError, match="its first revision must build one"):
        command.revision(config, "x", alias="docs", new="models/a", adapter="procrustes")
    # Nothing written: the alias still has no revision.
    assert not list((config.script_location / "versions").glob("*.py"))
    assert command.heads(config) == []
    assert command.heads(config) == []
