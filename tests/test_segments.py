"""Segments: a group of queries that regresses alone is flagged and gated, even when the mean
barely moves; a group under eval.segment_min is not judged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedmig import Config, ConfigError, GateFailed, command, open_searcher, render
from embedmig.metrics.segments import SegmentSettings, benjamini_hochberg, segments
from tests.support import corpus_rows, edit, embedmig, encode, snapshot

SETTINGS = SegmentSettings("topic", min_queries=20, drop=0.1)


def test_one_collapsing_segment_is_flagged_while_the_mean_barely_moves() -> None:
    rng = np.random.default_rng(0)
    labels = [f"s{i}" for i in range(8) for _ in range(60)] + ["tiny"] * 10
    old = np.ones(len(labels))
    new = (rng.random(len(labels)) > 0.02).astype(float)  # 2% noise everywhere
    new[60:120] = 0.0  # s1 collapses
    new[-10:] = 0.0  # so does `tiny`, under the minimum
    overlap = np.full(len(labels), 0.8)
    found, table = segments(labels, SETTINGS, overlap, old, new)
    assert 1 - new.mean() < 0.16  # the whole loses little
    assert [row["label"] for row in table["segments"] if row["flagged"]] == ["s1"]
    assert table["skipped"] == [{"label": "tiny", "queries": 10}]
    assert found["segments"] == 8 and found["segments_flagged"] == 1
    assert found["segment_recall_drop"] == pytest.approx(1 - (1 - new.mean()), abs=0.02)
    assert found["segment_overlap_drop"] == pytest.approx(0.0, abs=1e-12)


def test_benjamini_hochberg_adjusts_as_the_procedure_defines() -> None:
    p = np.array([0.01, 0.04, 0.03, 0.5])
    np.testing.assert_allclose(benjamini_hochberg(p), [0.04, 0.04 * 4 / 3, 0.04 * 4 / 3 * 1, 0.5])


def collapsing_queries(models: dict[str, Path], project: Path) -> None:
    """Queries for moving `docs` from model a to model far: 200 `kept` queries (a document's
    whole text) that both models answer with their document, 25 `lost` and 5 `tiny` ones judged
    relevant to the document model a finds first and model far leaves out of its top 10."""
    rows = corpus_rows(300)
    texts = [row["text"] for row in rows]
    docs_a, docs_far = encode(models["a"], texts), encode(models["far"], texts)
    long = texts
    short = [" ".join(t.split()[:4]) for t in texts]
    kept = list(range(200))
    order_a = np.argsort(-(encode(models["a"], short) @ docs_a.T), axis=1)
    order_far = np.argsort(-(encode(models["far"], short) @ docs_far.T), axis=1)
    moved = [i for i in range(300) if order_a[i, 0] not in order_far[i, :10]][:30]
    assert len(moved) == 30
    queries, qrels = [], []
    for n, i in enumerate(kept):
        queries.append({"_id": f"k{n}", "text": long[i], "topic": "kept"})
        qrels.append((f"k{n}", rows[i]["id"]))
    for n, i in enumerate(moved):
        topic = "lost" if n < 25 else "tiny"
        queries.append({"_id": f"m{n}", "text": short[i], "topic": topic})
        qrels.append((f"m{n}", rows[int(order_a[i, 0])]["id"]))
    (project / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (project / "qrels.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d in qrels)
    )


def segmented(config: Config, by: str, gates: str = "Gates(max_segment_recall_drop=0.5)") -> Config:
    ini = config.root / "embedmig.ini"
    edit(ini, "# queries = queries.jsonl", "queries = queries.jsonl")
    edit(ini, "# qrels = qrels.tsv", f"qrels = qrels.tsv\neval.segment_by = {by}")
    config = Config(ini)
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    rev = command.revision(config, "second", alias="docs", new="models/far", rev_id="r2")
    path = Path(str(rev.path))
    edit(path, "gates = Gates(min_overlap_at_10=0.5, max_score_shift=0.2)", f"gates = {gates}")
    return config


@pytest.fixture
def collapsing(config: Config, models: dict[str, Path]) -> Config:
    """`docs` live on model a, segmented by topic; r2 (to far) collapses the `lost` segment."""
    collapsing_queries(models, config.root)
    config = segmented(config, "topic")
    command.upgrade(config, "r1")
    return config


def test_a_segment_whose_recall_collapses_fails_the_upgrade_and_a_small_one_is_skipped(
    collapsing: Config,
) -> None:
    config = collapsing
    with pytest.raises(GateFailed, match=r"segment_recall_drop = 0\.[6-9]\d* \(needs <= 0\.5\)"):
        command.upgrade(config, "r2")
    report = command.report(config, "r2")
    rows = {row["label"]: row for row in report.distributions["segments"]["segments"]}
    assert sorted(rows) == ["kept", "lost"]
    assert rows["lost"]["flagged"] and not rows["kept"]["flagged"]
    assert rows["lost"]["recall_at_10_new"] == 0.0 and rows["kept"]["recall_at_10_new"] == 1.0
    assert report.distributions["segments"]["skipped"] == [{"label": "tiny", "queries": 5}]
    whole = report.metrics["recall_at_10_new"]
    assert whole is not None and whole > 0.85  # the mean barely moves
    html = render(report, "html")
    assert "Segments by topic" in html and "per segment (red: flagged)" in html


def test_clusters_of_the_old_query_vectors_are_segments(
    config: Config, models: dict[str, Path]
) -> None:
    collapsing_queries(models, config.root)
    config = segmented(config, "cluster:3", gates="Gates()")
    command.upgrade(config, "r1")
    (report,) = command.upgrade(config, "r2")
    table = report.distributions["segments"]
    assert table["by"] == "cluster:3"
    named = [row["label"] for row in table["segments"]] + [s["label"] for s in table["skipped"]]
    assert len(named) == 3 and all(label.startswith("cluster ") for label in named)
    assert (
        sum(row["queries"] for row in table["segments"])
        + sum(s["queries"] for s in table["skipped"])
        == report.n_queries
    )


@pytest.mark.parametrize(
    ("by", "message"),
    [
        ("cluster:0", "write cluster:K with K an integer from 2 to 1,000"),
        ("cluster:x", "write cluster:K with K an integer from 2 to 1,000"),
        ("language", "no evaluation query of 'docs' has that field (their fields: topic)"),
    ],
)
def test_a_bad_segment_option_is_one_line_and_changes_nothing(
    config: Config, models: dict[str, Path], by: str, message: str
) -> None:
    collapsing_queries(models, config.root)
    config = segmented(config, by)
    before = snapshot(config)
    ran = embedmig(config.root, "upgrade", "r1")
    (line,) = ran.stderr.strip().splitlines()
    assert ran.returncode == 1 and line.startswith("embedmig: error: ") and message in line
    assert snapshot(config) == before


def test_a_field_segment_needs_queries_with_fields(config: Config) -> None:
    ini = config.root / "embedmig.ini"
    ini.write_text(ini.read_text() + "eval.segment_by = topic\n")
    command.revision(Config(ini), "first", alias="docs", new="models/a", rev_id="r1")
    ran = embedmig(config.root, "upgrade", "r1")
    assert ran.returncode == 1 and "evaluated on sampled corpus documents" in ran.stderr


def test_a_dry_run_forecasts_the_collapsing_segment_with_intervals(collapsing: Config) -> None:
    config = collapsing
    with pytest.raises(GateFailed, match="segment_recall_drop"):
        command.upgrade(config, "r2", dry_run=True, sample=150)
    forecast = command.report(config, "r2")
    rows = {row["label"]: row for row in forecast.distributions["segments"]["segments"]}
    assert rows["lost"]["flagged"] and not rows["kept"]["flagged"]
    low, high = rows["lost"]["recall_drop_ci"]
    assert low <= rows["lost"]["recall_drop"] <= high and low > 0.1
    with pytest.raises(GateFailed) as measured:
        command.upgrade(config, "r2")
    realized = {r["label"]: r for r in measured.value.report.distributions["segments"]["segments"]}
    assert low <= realized["lost"]["recall_drop"] <= high


def test_a_dry_runs_segments_render_as_text_and_html_with_their_intervals(
    collapsing: Config,
) -> None:
    ran = embedmig(collapsing.root, "upgrade", "r2", "--dry-run", "--sample", "150")
    assert ran.returncode == 3 and "Traceback" not in ran.stderr, ran.stderr
    assert "segments by topic" in ran.stdout and "95% intervals" in ran.stdout
    (lost,) = [line for line in ran.stdout.splitlines() if line.strip().startswith("lost")]
    assert "FLAGGED" in lost and "recall@10" in lost and "[+" in lost
    assert embedmig(collapsing.root, "report", "r2").stdout == ran.stdout
    html = render(command.report(collapsing, "r2"), "html")
    assert "<td>lost</td>" in html and "[+0." in html


def test_metadata_searchers_log_with_a_query_segments_the_query_log(config: Config) -> None:
    ini = config.root / "embedmig.ini"
    ini.write_text(ini.read_text() + "searcher.log_queries = 1\n")
    config = Config(ini)
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.revision(config, "second", alias="docs", new="models/near", rev_id="r2")
    command.upgrade(config, "r1")
    ini.write_text(
        ini.read_text() + "queries = log\neval.segment_by = lang\neval.segment_min = 5\n"
    )
    config = Config(ini)
    with open_searcher(config, "docs") as searcher:
        for i, row in enumerate(corpus_rows(30)):
            searcher.search(
                " ".join(row["text"].split()[:6]), meta={"lang": "de" if i % 3 else "en"}
            )
        with pytest.raises(ConfigError, match="meta must be JSON"):
            searcher.search("tumour", meta={"lang": object()})
        assert searcher.flush()
    (report,) = command.upgrade(config, "r2", force=True)
    table = report.distributions["segments"]
    assert {row["label"]: row["queries"] for row in table["segments"]} == {"de": 20, "en": 10}
