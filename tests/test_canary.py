"""The canary: before a swap, searchers in their own processes mirror live queries to the shadow;
the comparison is recorded in SQL, reported like any evaluation and gated."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from embedmig import CanaryOpen, Config, ConfigError, StateError, command, open_searcher
from embedmig.environment import Environment
from embedmig.history import schema
from embedmig.metrics import report as rpt
from embedmig.metrics.names import CANARY_COMPARED, CANARY_PREFIX
from embedmig.store import catalog, files, traffic
from embedmig.store.overlay import Overlay
from tests.support import corpus_rows, edit, embedmig, snapshot

SEARCHER = Path(__file__).with_name("live_searcher.py")


def canary_revisions(config: Config, gates: str = "Gates()", min_queries: int = 30) -> Config:
    """r1 builds `docs` with model `a`; r2 moves it to `near` and holds the swap for a canary
    that mirrors every query and needs ``min_queries`` of them. Returns the configuration."""
    ini = config.root / "embedmig.ini"
    ini.write_text(
        ini.read_text()
        + f"canary.fraction = 1\ncanary.min_queries = {min_queries}\nsearcher.poll_seconds = 0.1\n"
    )
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    rev = command.revision(config, "second", alias="docs", new="models/near", rev_id="r2")
    path = Path(str(rev.path))
    edit(path, "    ctx.swap()", "    ctx.canary()\n    ctx.swap()")
    edit(path, "gates = Gates(min_overlap_at_10=0.5, max_score_shift=0.2)", f"gates = {gates}")
    done = embedmig(config.root, "upgrade", "r1")
    assert done.returncode == 0, done.stderr
    return Config(ini)


def queries_file(project: Path, n: int, offset: int = 0) -> Path:
    """``n`` short queries: the first words of corpus documents, as users type them."""
    path = project / f"queries-{offset}-{n}.txt"
    rows = corpus_rows(offset + n)[offset:]
    path.write_text("".join(" ".join(row["text"].split()[:6]) + "\n" for row in rows))
    return path


def serve(project: Path, queries: Path) -> dict[str, int]:
    """A searcher process that waits for the canary, searches every query and exits."""
    done = subprocess.run(
        [sys.executable, str(SEARCHER), str(project), str(queries), "--wait-canary"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    stats: dict[str, int] = json.loads(done.stdout.splitlines()[-1])
    return stats


def open_canary(config: Config) -> traffic.Canary:
    env = Environment(config)
    with env.engine.connect() as conn:
        found = traffic.open_canary(conn, "docs")
    env.dispose()
    assert found is not None
    return found


def offline(config: Config, canary: traffic.Canary, texts: list[str]) -> dict[str, float | None]:
    """The canary's metrics computed offline: both models embed the same queries and search the
    live index and the shadow (their files plus journal tails), as an evaluation does."""
    env = Environment(config)
    results = []
    assert canary.live_id is not None
    with env.engine.connect() as conn:
        records = [catalog.get_index(conn, i) for i in (canary.live_id, canary.index_id)]
    for record in records:
        overlay = Overlay(files.load(env.file_of(record), record.sha256), record.base_seq)
        vectors = env.embedder_of(record).encode_queries(texts)
        scores, ids = overlay.search(vectors, canary.k)
        results.append(rpt.Results(ids=ids, scores=scores))
    env.dispose()
    settings = rpt.Settings(k=canary.k)
    return rpt.compute(
        results[0], results[1], candidates=records[1].ntotal, settings=settings
    ).metrics


@pytest.mark.process
def test_a_canary_holds_the_swap_until_live_queries_were_compared(config: Config) -> None:
    canary_revisions(config, min_queries=30)
    opened = embedmig(config.root, "-q", "upgrade", "head")
    assert opened.returncode == 4, opened.stderr
    (line,) = opened.stderr.strip().splitlines()
    assert line.startswith("embedmig: canary opened for docs @ r2: searchers now mirror 100%")
    assert command.current(config)[0].revision == "r1"
    waiting = embedmig(config.root, "upgrade", "head")
    assert waiting.returncode == 4
    assert "0 of 30 mirrored queries" in waiting.stderr
    assert command.current(config)[0].revision == "r1"

    stats = serve(config.root, queries_file(config.root, 40))
    assert stats["mirrored"] == 40 and stats["dropped"] == 0 and stats["failed"] == 0

    done = embedmig(config.root, "upgrade", "head")
    assert done.returncode == 0, done.stderr
    assert command.current(config)[0].revision == "r2"
    (upgrade,) = [e for e in command.history(config, "docs") if e.action == "upgrade"][:1]
    assert upgrade.metrics is not None
    assert upgrade.metrics["metrics"]["canary_queries"] == 40
    assert upgrade.metrics["metrics"]["overlap_at_10"] is not None  # the offline figures stay
    env = Environment(config)
    with env.engine.connect() as conn:
        statuses = [row.status for row in conn.execute(sa.select(schema.canary))]
    env.dispose()
    assert statuses == [traffic.PASSED]


@pytest.mark.process
def test_mirrored_comparisons_equal_an_offline_comparison_of_the_same_queries(
    any_db: Config,
) -> None:
    canary_revisions(any_db)
    assert embedmig(any_db.root, "upgrade", "head").returncode == 4
    queries = queries_file(any_db.root, 60)
    serve(any_db.root, queries)
    shown = embedmig(any_db.root, "canary", "docs", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    live = json.loads(shown.stdout)
    assert live["kind"] == "canary" and live["n_queries"] == 60
    assert live["query_source"].startswith("live traffic, 60 queries since ")
    expected = offline(any_db, open_canary(any_db), queries.read_text().splitlines())
    for name in ("overlap_at_1", "overlap_at_10", "jaccard_at_10", "score_old_mean", "score_ks"):
        assert expected[name] is not None
        assert live["metrics"][name] == pytest.approx(expected[name], abs=1e-6), name
        assert live["metrics"][CANARY_PREFIX + name] == pytest.approx(expected[name], abs=1e-6)
    assert {CANARY_PREFIX + name for name in CANARY_COMPARED} <= set(live["metrics"])
    text = embedmig(any_db.root, "canary", "docs")
    assert "canary, live traffic" in text.stdout and "live traffic, 60 queries" in text.stdout


@pytest.mark.process
def test_a_failing_canary_gate_keeps_the_alias_until_forced(config: Config) -> None:
    canary_revisions(config, gates="Gates(min_canary_overlap_at_10=1.01)", min_queries=10)
    assert embedmig(config.root, "upgrade", "head").returncode == 4
    serve(config.root, queries_file(config.root, 20))
    held = embedmig(config.root, "upgrade", "head")
    assert held.returncode == 4
    assert "canary_overlap_at_10 = " in held.stderr and "FAILED" in held.stderr
    assert command.current(config)[0].revision == "r1"
    forced = embedmig(config.root, "upgrade", "head", "--force")
    assert forced.returncode == 0, forced.stderr
    assert command.current(config)[0].revision == "r2"
    upgrade = next(e for e in command.history(config, "docs") if e.action == "upgrade")
    assert upgrade.status == "forced" and upgrade.forced


def test_a_canary_on_one_alias_leaves_another_alone(config: Config) -> None:
    canary_revisions(config)
    command.revision(config, "other", alias="other", new="models/a", rev_id="o1")
    assert embedmig(config.root, "upgrade", "o1").returncode == 0
    assert embedmig(config.root, "upgrade", "r2").returncode == 4
    with open_searcher(config, "other") as searcher:
        deadline = time.monotonic() + 60
        while searcher.traffic.polls < 3:  # it looked for a canary, after r2 opened one
            assert time.monotonic() < deadline, "the searcher's worker never polled"
            searcher.search("protein folding", k=5)
            assert not searcher.mirroring
            time.sleep(0.02)
    assert searcher.traffic.mirrored == 0
    refused = embedmig(config.root, "canary", "other")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "embedmig: error: no canary is open on alias 'other'; a revision opens one with ctx.canary()"
    )


@pytest.mark.process
def test_killing_a_searcher_mid_mirror_loses_no_recorded_comparison(config: Config) -> None:
    canary_revisions(config)
    assert embedmig(config.root, "upgrade", "head").returncode == 4
    queries = queries_file(config.root, 50)
    proc = subprocess.Popen(
        [
            sys.executable,
            str(SEARCHER),
            str(config.root),
            str(queries),
            "--wait-canary",
            "--forever",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    env = Environment(config)
    canary = open_canary(config)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with env.engine.connect() as conn:
            if len(traffic.comparisons(conn, canary)) >= 80:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with env.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
        kept = traffic.comparisons(conn, canary)
    assert len(kept) >= 80
    # Every recorded comparison is whole: the shadow's list is what the shadow answers.
    texts = [t for t in kept.texts if t is not None]
    assert len(texts) == len(kept)
    with env.engine.connect() as conn:
        shadow = catalog.get_index(conn, canary.index_id)
    index = files.load(env.file_of(shadow), shadow.sha256)
    vectors = env.embedder_of(shadow).encode_queries(texts)
    _, ids = index.search(vectors, canary.k)
    np.testing.assert_array_equal(ids, kept.new_ids)
    env.dispose()
    # The canary goes on with the next searcher, and counts every comparison once.
    serve(config.root, queries_file(config.root, 10))
    shown = json.loads(embedmig(config.root, "canary", "docs", "--format", "json").stdout)
    assert shown["n_queries"] == len(kept) + 10


@pytest.mark.process
def test_closing_a_canary_keeps_the_alias_and_stops_the_mirroring(config: Config) -> None:
    canary_revisions(config)
    assert embedmig(config.root, "upgrade", "head").returncode == 4
    serve(config.root, queries_file(config.root, 5))
    closed = embedmig(config.root, "canary", "docs", "--close", "--format", "json")
    assert closed.returncode == 0, closed.stderr
    assert json.loads(closed.stdout)["n_queries"] == 5
    assert command.current(config)[0].revision == "r1"
    event = command.history(config, "docs")[0]
    assert (event.action, event.status) == ("canary", "closed")
    with open_searcher(config, "docs") as searcher:
        for _ in range(10):
            searcher.search("protein folding")
            time.sleep(0.05)
        assert not searcher.mirroring
    # The next upgrade builds the shadow again and opens a new canary.
    assert embedmig(config.root, "upgrade", "head").returncode == 4


def test_a_downgrade_abandons_the_open_canary(config: Config) -> None:
    canary_revisions(config)
    assert embedmig(config.root, "upgrade", "head").returncode == 4
    assert embedmig(config.root, "downgrade", "base").returncode == 0
    env = Environment(config)
    with env.engine.connect() as conn:
        assert traffic.open_canary(conn, "docs") is None
        statuses = [row.status for row in conn.execute(sa.select(schema.canary))]
    env.dispose()
    assert statuses == [traffic.ABANDONED]


@pytest.mark.process
def test_prune_keeps_the_shadow_a_canary_mirrors_to(config: Config) -> None:
    canary_revisions(config)
    assert embedmig(config.root, "upgrade", "head").returncode == 4
    assert command.prune(config, "docs").dropped == []
    serve(config.root, queries_file(config.root, 5))


def test_a_dry_run_opens_no_canary_and_says_the_swap_would_wait(config: Config) -> None:
    canary_revisions(config, gates="Gates(min_canary_queries=10)")
    before = snapshot(config, with_history=False)
    (report,) = command.check(config, "head", sample=100)
    assert any("hold the swap for a canary" in note for note in report.notes)
    assert any("canary_* gates are judged on live traffic" in note for note in report.notes)
    assert snapshot(config, with_history=False) == before


def test_canary_gates_without_a_canary_step_are_an_error(config: Config) -> None:
    canary_revisions(config, gates="Gates(min_canary_queries=10)")
    path = next((config.script_location / "versions").glob("r2_*.py"))
    edit(path, "    ctx.canary()\n", "")
    failed = embedmig(config.root, "upgrade", "head")
    assert failed.returncode == 1
    assert "calls ctx.swap() without ctx.canary() first" in failed.stderr
    assert command.current(config)[0].revision == "r1"


@pytest.mark.parametrize(
    ("args", "ini", "message"),
    [
        (
            ("upgrade", "head"),
            "canary.fraction = 1.5\n",
            "option 'canary.fraction' must be a share",
        ),
        (("canary", "docs", "--fraction", "2"), "", "--fraction must be a share from 0 to 1"),
        (("canary", "docs"), "", "no canary is open on alias 'docs'"),
        (("search", "docs", "cells"), "searcher.log_queries = -0.1\n", "must be a share"),
    ],
)
def test_bad_canary_input_is_one_line_and_changes_nothing(
    config: Config, args: tuple[str, ...], ini: str, message: str
) -> None:
    canary_revisions(config)
    path = config.root / "embedmig.ini"
    key = ini.partition(" = ")[0]
    kept = [line for line in path.read_text().splitlines(True) if not line.startswith(key + " =")]
    path.write_text("".join(kept) + ini)
    before = snapshot(config)
    failed = embedmig(config.root, *args)
    assert failed.returncode == 1, failed.stderr
    (line,) = failed.stderr.strip().splitlines()
    assert line.startswith("embedmig: error: ") and message in line
    assert snapshot(config) == before


def test_a_canary_step_before_evaluate_is_refused(config: Config) -> None:
    canary_revisions(config)
    path = next((config.script_location / "versions").glob("r2_*.py"))
    edit(path, "    ctx.backfill()", "    ctx.canary()\n    ctx.backfill()")
    before = snapshot(config)
    with pytest.raises(StateError, match=r"ctx.canary\(\) needs ctx.evaluate\(\) first"):
        command.upgrade(config, "head")
    assert snapshot(config) == before


def test_canary_open_carries_what_a_pipeline_needs(config: Config) -> None:
    config = canary_revisions(config, min_queries=7)
    with pytest.raises(CanaryOpen) as opened:
        command.upgrade(config, "head")
    assert (opened.value.alias, opened.value.compared, opened.value.needed) == ("docs", 0, 7)
    assert opened.value.report.metrics["overlap_at_10"] is not None
    with pytest.raises(ConfigError, match="must be a share"):
        command.canary(config, "docs", fraction=-1)
    assert command.canary(config, "docs", fraction=0.25).n_queries == 0
    assert open_canary(config).fraction == 0.25


def test_a_canary_on_an_alias_first_index_is_refused(config: Config) -> None:
    rev = command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    path = Path(str(rev.path))
    edit(path, "    ctx.swap()", "    ctx.canary()\n    ctx.swap()")
    with pytest.raises(StateError, match="has none yet"):
        command.upgrade(config, "r1")
    assert command.current(config) == [] or command.current(config)[0].live is None
