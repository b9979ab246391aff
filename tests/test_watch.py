"""The decay watch: traffic since the swap against the baseline kept at the swap, recorded in
history with its trend; `watch_*` gates fail it when the live index's answers drift."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedmig import Config, StateError, command, open_searcher, open_writer, render
from tests.support import corpus_rows, edit, embedmig, snapshot

WATCH_GATES = "Gates(max_watch_top1_ks=0.3, max_watch_topk_ks=0.3, thresholds=[0.5])"
LOGGING = "searcher.log_queries = 1\nwatch.min_queries = 20\n"


def queries(n: int = 60) -> list[str]:
    """The opening of corpus documents: each finds its document first, by a clear margin."""
    return [" ".join(row["text"].split()[:40]) for row in corpus_rows(n)]


def serve(config: Config, texts: list[str]) -> None:
    """A searcher answers ``texts``; every query is logged."""
    with open_searcher(config, "docs") as searcher:
        for text in texts:
            searcher.search(text, k=10)
        assert searcher.flush()


def watched(config: Config, *, log_before_swap: bool = True) -> Config:
    """`docs` swapped from model a (r1) to near (r2), whose revision gates the watch; with the
    query log holding traffic at the swap (the baseline) or not."""
    ini = config.root / "embedmig.ini"
    ini.write_text(ini.read_text() + LOGGING)
    config = Config(ini)
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    rev = command.revision(config, "second", alias="docs", new="models/near", rev_id="r2")
    path = Path(str(rev.path))
    edit(
        path, "gates = Gates(min_overlap_at_10=0.5, max_score_shift=0.2)", f"gates = {WATCH_GATES}"
    )
    command.upgrade(config, "r1")
    if log_before_swap:
        serve(config, queries())
    command.upgrade(config, "r2")
    return config


def test_the_swap_keeps_the_traffic_baseline_and_unchanged_traffic_passes(config: Config) -> None:
    config = watched(config)
    swap = command.report(config, "r2")
    kept = swap.distributions["watch_baseline"]
    assert kept["source"] == "query log at the swap" and kept["queries"] == 60
    assert set(kept["below"]) == {"new_threshold_for_0_5"}

    serve(config, queries())
    (report,) = command.watch(config)
    assert report.kind == "watch" and report.verdict is not None and report.verdict.passed
    assert report.metrics["watch_queries"] == 60
    # The same queries on the same index: the distributions are the baseline's.
    assert report.metrics["watch_top1_ks"] is not None and report.metrics["watch_top1_ks"] < 0.05
    assert report.metrics["watch_below_threshold_delta"] == pytest.approx(0.0, abs=0.02)
    (event,) = [h for h in command.history(config) if h.action == "watch"]
    assert event.status == "ok" and event.verdict == "pass"


def test_documents_rewritten_after_the_swap_trip_a_watch_gate(config: Config) -> None:
    config = watched(config)
    rows = corpus_rows(300)
    with open_writer(config, "docs") as writer:  # each queried document now says something else
        for i, row in enumerate(rows[:60]):
            writer.upsert(row["id"], rows[299 - i]["text"])
    serve(config, queries())
    ran = embedmig(config.root, "watch", "docs")
    assert ran.returncode == 3
    (line,) = ran.stderr.strip().splitlines()
    assert line.startswith("embedmig: error: watch of docs failed: watch_top1_ks = ")
    assert "decay since the swap" in ran.stdout
    (event,) = [h for h in command.history(config) if h.action == "watch"]
    assert event.status == "gate-failed" and event.verdict == "fail"


def test_without_traffic_at_the_swap_the_first_watch_is_the_baseline(config: Config) -> None:
    config = watched(config, log_before_swap=False)
    assert "watch_baseline" not in command.report(config, "r2").distributions
    serve(config, queries())
    (first,) = command.watch(config)
    assert first.metrics["watch_top1_ks"] is None
    assert "no baseline yet" in " ".join(first.notes)
    (second,) = command.watch(config)
    assert second.metrics["watch_top1_ks"] == pytest.approx(0.0, abs=0.01)
    assert [p["watch_queries"] for p in second.distributions["watch_trend"]] == [60, 60]
    text = embedmig(config.root, "report", "--event", str(command.history(config)[0].id)).stdout
    assert "trend over the watches of this index" in text
    html = render(second, "html")
    assert "decay watch: trend over the watches of this index" in html


def test_a_watch_before_any_traffic_sets_no_baseline_and_the_gates_still_judge_later_ones(
    config: Config,
) -> None:
    config = watched(config, log_before_swap=False)
    (empty,) = command.watch(config)  # a cron watch right after the swap: nothing logged yet
    assert empty.n_queries == 0 and empty.metrics["watch_top1_ks"] is None
    assert "0 logged queries since the swap, fewer than watch.min_queries" in " ".join(empty.notes)
    serve(config, queries())
    (first,) = command.watch(config)
    assert first.notes == ["no baseline yet: this watch is the baseline of the next ones"]
    rows = corpus_rows(300)
    with open_writer(config, "docs") as writer:
        for i, row in enumerate(rows[:60]):
            writer.upsert(row["id"], rows[299 - i]["text"])
    serve(config, queries())
    ran = embedmig(config.root, "watch", "docs")
    assert ran.returncode == 3 and "watch of docs failed: watch_top1_ks = " in ran.stderr
    assert "baseline: the first watch after the swap with watch.min_queries queries" in ran.stdout


def test_watching_an_alias_without_a_live_index_is_one_line_and_changes_nothing(
    config: Config,
) -> None:
    before = snapshot(config)
    ran = embedmig(config.root, "watch", "nope")
    assert ran.returncode == 1
    assert ran.stderr.strip() == "embedmig: error: alias 'nope' has no live index to watch"
    with pytest.raises(StateError):
        command.watch(config, "nope")
    assert snapshot(config) == before


def test_an_adapter_revision_keeps_the_baseline_of_the_adapted_search(config: Config) -> None:
    ini = config.root / "embedmig.ini"
    ini.write_text(ini.read_text() + LOGGING)
    config = Config(ini)
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    rev = command.revision(
        config, "adapt", alias="docs", new="models/near", rev_id="r2", adapter="procrustes"
    )
    path = Path(str(rev.path))
    path.write_text(
        path.read_text().replace("gates = Gates()", "gates = Gates(min_adapter_overlap_at_10=0.0)")
    )
    command.upgrade(config, "r1")
    serve(config, queries())
    command.upgrade(config, "r2")
    assert command.report(config, "r2").distributions["watch_baseline"]["queries"] == 60
    serve(config, queries())
    (adapted,) = command.watch(config)
    shift = adapted.metrics["watch_top1_ks"]
    assert adapted.revision == "r2" and shift is not None and shift < 0.05
    command.downgrade(config, "docs@-1")  # the alias serves r1's search again: a new baseline
    serve(config, queries())
    (rolled_back,) = command.watch(config)
    assert rolled_back.revision == "r1" and rolled_back.metrics["watch_top1_ks"] is None
    assert len(rolled_back.distributions["watch_trend"]) == 1
