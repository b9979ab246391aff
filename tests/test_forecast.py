"""Dry runs forecast the full corpus: specs of the estimator on real text and of the dry run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from embedmig import Gates, command
from embedmig.errors import ConfigError
from embedmig.metrics import forecast as fc
from embedmig.metrics import report as rpt
from embedmig.metrics.intervals import Interval, with_intervals
from embedmig.metrics.ranks import SampledScores, rank_posterior
from embedmig.metrics.relevance import Judgements
from embedmig.render.html import render_html
from embedmig.render.text import render_text
from tests.support import (
    DEMO_DATA,
    FEW_RESAMPLES,
    build_static_model,
    edit,
    encode,
    snapshot,
    with_judged_queries,
)


@dataclass(frozen=True)
class Subset:
    judged: Judgements
    old_q: np.ndarray
    old_d: np.ndarray
    new_q: np.ndarray
    new_d: np.ndarray


@pytest.fixture
def project(project: Path) -> Path:
    """The shared project with the default bootstrap (100 replicates): these specs judge how well
    a forecast's intervals cover what the upgrade then measures."""
    ini = project / "embedmig.ini"
    edit(ini, FEW_RESAMPLES, "")
    return project


@pytest.fixture(scope="module")
def scifact_subset(tmp_path_factory: pytest.TempPathFactory) -> Subset:
    """The demo's 1,000 SciFact abstracts and 300 judged claims under two real static models
    (a lexical one and a noisy variant of it), every document embedded: the truth to forecast."""
    docs = [json.loads(line) for line in (DEMO_DATA / "corpus.jsonl").open()]
    texts = [f"{d['title']} {d['text']}" for d in docs]
    claims = {q["_id"]: q["text"] for q in map(json.loads, (DEMO_DATA / "queries.jsonl").open())}
    position = {d["_id"]: i for i, d in enumerate(docs)}
    rows = [line.rstrip("\n").split("\t") for line in (DEMO_DATA / "qrels.tsv").open()][1:]
    qids = sorted({q for q, d, _ in rows if d in position and q in claims})
    row_of = {q: i for i, q in enumerate(qids)}
    judged = Judgements(
        *(
            np.array(column, dtype=np.int64)
            for column in zip(
                *[(row_of[q], position[d], int(g)) for q, d, g in rows if q in row_of],
                strict=True,
            )
        )
    )
    root = tmp_path_factory.mktemp("forecast-models")
    old = build_static_model(root / "old", texts, 48, seed=3)
    new = build_static_model(root / "new", texts, 48, seed=4, base=old, noise=0.6)
    queries = [claims[q] for q in qids]
    return Subset(
        judged, encode(old, queries), encode(old, texts), encode(new, queries), encode(new, texts)
    )


def _search(queries: np.ndarray, docs: np.ndarray, depth: int) -> rpt.Results:
    scores = queries @ docs.T
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
    return rpt.Results(ids=ids, scores=np.take_along_axis(scores, ids, axis=1))


def _forecast(data: Subset, fraction: float, seed: int) -> dict[str, float]:
    estimate = _forecaster(data, fraction, seed).estimate()
    return {name: float(values.mean()) for name, values in estimate.per_query.items()}


def _forecaster(data: Subset, fraction: float, seed: int) -> fc.Forecaster:
    judged, old_q, old_d, new_q, new_d = data.judged, data.old_q, data.old_d, data.new_q, data.new_d
    n = len(new_d)
    rng = np.random.default_rng(seed)
    certain_ids = np.unique(judged.docs)
    rest = np.setdiff1d(np.arange(n), certain_ids)
    uniform = rng.choice(rest, int(fraction * len(rest)), replace=False)
    columns = np.concatenate([uniform, certain_ids])
    column_of = np.full(n, -1)
    column_of[columns] = np.arange(len(columns))
    sampled = SampledScores(
        new_q @ new_d[columns].T,
        np.isin(columns, certain_ids),
        len(uniform) / len(rest),
        len(rest),
    )
    old_top = _search(old_q, old_d, 100).ids
    return fc.Forecaster(
        fc.ForecastInput(
            sampled,
            k=10,
            rbo_p=0.9,
            judged=Judgements(judged.rows, column_of[judged.docs], judged.grades),
            old_top=column_of[old_top],
        )
    )


def _realized(data: Subset) -> dict[str, float]:
    metrics = rpt.compute(
        _search(data.old_q, data.old_d, 100),
        _search(data.new_q, data.new_d, 100),
        candidates=len(data.new_d),
        settings=rpt.Settings(),
        judged=data.judged,
    ).metrics
    return {name: value for name, value in metrics.items() if value is not None}


def _sample_only(data: Subset, fraction: float, seed: int) -> float:
    """What a dry run used to report: recall@10 of the sample ranked as if it were the corpus."""
    judged, new_q, new_d = data.judged, data.new_q, data.new_d
    rng = np.random.default_rng(seed)
    certain_ids = np.unique(judged.docs)
    rest = np.setdiff1d(np.arange(len(new_d)), certain_ids)
    kept = np.concatenate([rng.choice(rest, int(fraction * len(rest)), replace=False), certain_ids])
    results = _search(new_q, new_d[kept], 100)
    results = rpt.Results(ids=kept[results.ids], scores=results.scores)
    metrics = rpt.compute(
        results, results, candidates=len(kept), settings=rpt.Settings(), judged=judged
    ).metrics
    value = metrics["recall_at_10_new"]
    assert value is not None
    return value


def test_a_forecast_from_a_fifth_of_the_corpus_lands_near_the_full_corpus_figures(
    scifact_subset: Subset,
) -> None:
    realized = _realized(scifact_subset)
    forecasts = [_forecast(scifact_subset, 0.2, seed) for seed in range(5)]
    for name, tolerance in (
        ("recall_at_10", 0.04),
        ("ndcg_at_10", 0.04),
        ("recall_at_100", 0.04),
    ):
        mean = np.mean([f[name] for f in forecasts])
        assert abs(mean - realized[f"{name}_new"]) <= tolerance, (name, mean, realized)
    mean_overlap = np.mean([f["overlap_at_10"] for f in forecasts])
    assert abs(mean_overlap - realized["overlap_at_10"]) <= 0.05


def test_the_sample_alone_would_overstate_recall_which_the_correction_removes(
    scifact_subset: Subset,
) -> None:
    realized = _realized(scifact_subset)["recall_at_10_new"]
    assert realized is not None
    naive = np.mean([_sample_only(scifact_subset, 0.2, seed) for seed in range(5)])
    corrected = np.mean([_forecast(scifact_subset, 0.2, seed)["recall_at_10"] for seed in range(5)])
    # Fewer distractors pull the sample's own figure up; the forecast is much nearer the truth.
    assert naive - realized > 0.05
    assert abs(corrected - realized) < (naive - realized) / 3


def test_rank_interpolation_matches_a_per_row_reference() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        width = int(rng.integers(1, 8))
        values = -np.sort(-rng.random((5, width)), axis=1)
        weights = rng.choice([1.0, 5.0, 0.0], (5, width))
        order = np.argsort(weights == 0, axis=1, kind="stable")  # the valid points first
        values = np.take_along_axis(values, order, 1)
        weights = np.take_along_axis(weights, order, 1)
        position = np.cumsum(weights, axis=1) - (weights - 1) / 2
        got = fc._interpolate_ranks(values, position, weights > 0, 10)
        ranks = np.arange(1, 11.0)
        for row in range(5):
            x, y = position[row][weights[row] > 0], values[row][weights[row] > 0]
            if len(x) == 0:
                assert np.isnan(got[row]).all()
                continue
            want = np.interp(ranks, x, y)
            if len(x) > 1:
                above = ranks < x[0]
                want[above] = y[0] + (y[0] - y[1]) / (x[1] - x[0]) * (x[0] - ranks[above])
            assert np.allclose(got[row], want)


def test_rank_posterior_is_exact_when_the_sample_is_the_corpus() -> None:
    grid = np.arange(10)
    posterior, _ = rank_posterior(np.array([0, 3, 9]), 1.0, grid)
    assert posterior.argmax(axis=1).tolist() == [0, 3, 9]
    assert np.allclose(posterior.sum(axis=1), 1.0)


def test_a_conservative_gate_judges_the_pessimistic_end_of_the_interval() -> None:
    metrics = {"recall_ratio": 0.85, "recall_ratio_ci_low": 0.78, "recall_ratio_ci_high": 0.9}
    assert Gates(min_recall_ratio=0.8).check(metrics).passed
    verdict = Gates(min_recall_ratio=0.8, conservative=True).check(metrics)
    assert not verdict.passed and verdict.checks[0].value == 0.78
    assert "low end of its interval" in verdict.checks[0].describe()
    shift = {"score_shift": 0.1, "score_shift_ci_high": 0.2}
    assert not Gates(max_score_shift=0.15, conservative=True).check(shift).passed
    # Without an interval (an upgrade's measured figure) a conservative gate reads the value.
    assert Gates(max_score_shift=0.15, conservative=True).check({"score_shift": 0.1}).passed


def test_a_dry_run_embeds_no_document_with_the_old_model_and_reports_a_forecast(
    project: Path, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from embedmig.embedders import LoadedEmbedder

    config = with_judged_queries(project, 40, words=12)
    command.revision(config, "first", alias="docs", new=str(models["a"]), rev_id="r1")
    command.revision(config, "second", alias="docs", new=str(models["near"]), rev_id="r2")
    command.upgrade(config, "r1")
    encoded: list[tuple[str, int]] = []
    original = LoadedEmbedder.encode_documents

    def counting(self: LoadedEmbedder, texts: list[str]) -> np.ndarray:
        encoded.append((self.spec.model, len(texts)))
        return original(self, texts)

    monkeypatch.setattr(LoadedEmbedder, "encode_documents", counting)
    (report,) = command.upgrade(config, "head", dry_run=True, sample=60)
    assert {model for model, _ in encoded} == {str(models["near"])}
    assert sum(count for _, count in encoded) == 60 + 40  # the sample and the judged documents
    assert report.kind == "dry-run" and report.corpus_size == 300 and report.sample_size == 100
    for name in ("recall_at_10_new", "overlap_at_10", "score_delta_mean"):
        low, high = report.metrics[f"{name}_ci_low"], report.metrics[f"{name}_ci_high"]
        assert low is not None and high is not None and low <= report.metrics[name] <= high  # type: ignore[operator]
    assert "forecast for 300 documents from a sample of 100" in render_text(report, styled=False)
    # Where the dry run's time went: each phase timed once, together no more than its wall time.
    phases = ("load", "read", "encode_sample", "encode_judged", "encode_queries", "search")
    split = {f"{name}_s" for name in (*phases, "forecast")}
    assert set(report.timings) == split | {"total_s"}
    assert sum(report.timings[name] for name in split) <= report.timings["total_s"]
    assert report.timings["load_s"] > 0 and report.timings["forecast_s"] > 0
    page = render_html(rpt.Report.from_dict(json.loads(report.to_json())))
    assert "forecast for the full corpus" in page and "from a sample of 100" in page
    monkeypatch.undo()
    (upgraded,) = command.upgrade(config, "head")
    # The real upgrade measures inside the forecast's interval. (Not asserted for overlap here:
    # with 40 queries and near-identical models the overlap forecast runs low; see the README.)
    for name in ("recall_at_10_new", "recall_at_10_old", "ndcg_at_10_new"):
        realized = upgraded.metrics[name]
        low, high = report.metrics[f"{name}_ci_low"], report.metrics[f"{name}_ci_high"]
        assert realized is not None and low is not None and high is not None
        assert low - 1e-9 <= realized <= high + 1e-9, (name, low, realized, high)


def test_a_first_revision_forecasts_from_the_sample_alone(
    project: Path, models: dict[str, Path]
) -> None:
    config = with_judged_queries(project, 40, words=12)
    command.revision(config, "first", alias="docs", new=str(models["a"]), rev_id="r1")
    (report,) = command.upgrade(config, "head", dry_run=True, sample=100)
    assert report.kind == "dry-run" and report.old_model is None
    assert report.metrics["recall_at_10_new"] is not None
    assert report.metrics.get("overlap_at_10") is None
    (upgraded,) = command.upgrade(config, "head")
    realized = upgraded.metrics["recall_at_10_new"]
    low, high = (
        report.metrics["recall_at_10_new_ci_low"],
        report.metrics["recall_at_10_new_ci_high"],
    )
    assert realized is not None and low is not None and high is not None
    assert low - 1e-9 <= realized <= high + 1e-9


def test_a_sample_can_be_a_share_of_the_corpus(
    project: Path, models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from embedmig.cli import main

    config = with_judged_queries(project, 20, words=12)
    command.revision(config, "first", alias="docs", new=str(models["a"]), rev_id="r1")
    command.revision(config, "second", alias="docs", new=str(models["near"]), rev_id="r2")
    command.upgrade(config, "r1")
    (report,) = command.upgrade(config, "head", dry_run=True, sample=0.25)
    # A Bernoulli sample of the 280 unjudged documents at 25%, plus the 20 judged ones.
    assert report.kind == "dry-run" and 40 <= (report.sample_size or 0) - 20 <= 100
    assert main(["upgrade", "--dry-run", "--sample", "25%", "--report", "r.json"]) == 0
    assert json.loads((project / "r.json").read_text())["sample_size"] == report.sample_size
    capsys.readouterr()
    for bad in ("0%", "150%", "ten"):
        assert main(["upgrade", "--dry-run", "--sample", bad]) == 1
        assert "--sample must be a number of documents (1 or more) or a share" in (
            capsys.readouterr().err
        )
    with pytest.raises(ConfigError, match=r"above 0%, at most 100%\), got 1.5"):
        command.upgrade(config, "head", dry_run=True, sample=1.5)
    with pytest.raises(ConfigError, match="drew none of the 280 unjudged documents"):
        command.upgrade(config, "head", dry_run=True, sample=1e-9)


def _lost_queries(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A synthetic migration with a known heavy tail: 3,000 documents, 200 queries; the new
    model moves every vector a little, and a fifth of the queries (`lost`) lose their whole
    neighbourhood: their new vectors point elsewhere."""
    rng = np.random.default_rng(seed)

    def unit(x: np.ndarray) -> np.ndarray:
        out: np.ndarray = x / np.linalg.norm(x, axis=-1, keepdims=True)
        return out

    docs_old = unit(rng.standard_normal((3000, 24)))
    docs_new = unit(docs_old + 0.04 * rng.standard_normal(docs_old.shape))
    queries_old = unit(docs_old[rng.choice(3000, 200)] + 0.3 * rng.standard_normal((200, 24)))
    queries_new = unit(queries_old + 0.03 * rng.standard_normal(queries_old.shape))
    lost = rng.random(200) < 0.2
    queries_new[lost] = unit(rng.standard_normal((int(lost.sum()), 24)))
    return docs_old, docs_new, queries_old, queries_new, lost


def _tail_forecast(
    seed: int,
) -> tuple[dict[str, Interval], dict[str, float | None], fc.Estimate]:
    from embedmig.migrate import forecast as dry

    docs_old, docs_new, queries_old, queries_new, _ = _lost_queries(7)
    old, new = _search(queries_old, docs_old, 100), _search(queries_new, docs_new, 100)
    realized = rpt.compute(old, new, candidates=3000, settings=rpt.Settings()).metrics
    columns = np.sort(np.random.default_rng(seed).choice(3000, 300, replace=False))
    column_of = np.full(3000, -1)
    column_of[columns] = np.arange(len(columns))
    sampled = SampledScores(
        (queries_new @ docs_new[columns].T).astype(np.float32),
        np.zeros(len(columns), bool),
        0.1,
        3000,
    )
    old_top = column_of[old.ids]
    forecaster = fc.Forecaster(fc.ForecastInput(sampled, k=10, rbo_p=0.9, old_top=old_top))
    exact = dry._Exact(old_top, old.scores[:, :10], {})
    estimate, intervals = with_intervals(
        forecaster, lambda e, w: dry._figures(e, w, exact, 10, [0.5]), 20, seed
    )
    return intervals, realized, estimate


def test_the_tail_is_forecast_from_draws_and_its_identities_hold() -> None:
    intervals, realized, estimate = _tail_forecast(0)
    # The known tail: a fifth of the queries keep nothing of their top 10 or top 100.
    assert realized["overlap_at_10_p5"] == 0.0
    for name in ("overlap_at_10_p5", "overlap_at_100_below_half", "overlap_at_10_below_half"):
        value = realized[name]
        assert value is not None
        low, high = intervals[name].low, intervals[name].high
        assert low - 1e-9 <= value <= high + 1e-9, (name, value, intervals[name])
    # Expectations would have squeezed the tail toward the mean (p5 of 0.4 and more).
    assert intervals["overlap_at_10_p5"].value < intervals["overlap_at_10"].value / 4
    # One draw feeds every figure: a query's overlap@1 is 0 or 1, and Jaccard@1 equals it.
    assert set(np.unique(estimate.drawn["overlap_at_1"])) <= {0.0, 1.0}
    np.testing.assert_array_equal(estimate.drawn["jaccard_at_1"], estimate.drawn["overlap_at_1"])
    assert intervals["jaccard_at_1"] == intervals["overlap_at_1"]
    for k in (1, 10, 100):
        p50, below = intervals[f"overlap_at_{k}_p50"].value, intervals[f"overlap_at_{k}_below_half"]
        assert (p50 < 0.5) == (below.value > 0.5), (k, p50, below)


def test_judged_figures_are_drawn_too_so_each_draw_is_a_ranking_the_upgrade_could_see(
    scifact_subset: Subset,
) -> None:
    estimate = _forecaster(scifact_subset, 0.1, 0).estimate()
    judged = scifact_subset.judged
    n_queries = len(scifact_subset.new_q)
    mrr = estimate.drawn["mrr_at_10"]
    assert mrr.shape == (n_queries, fc.DRAWS)
    # In a draw a query's MRR@10 is a reciprocal rank or 0, never an expectation like 0.6.
    reciprocal = np.r_[0.0, 1.0 / np.arange(1, 11)]
    assert np.isclose(mrr[..., None], reciprocal).any(axis=-1).all()
    relevant = np.bincount(judged.rows[judged.grades > 0], minlength=n_queries)
    found = estimate.drawn["recall_at_10"] * relevant[:, None]
    np.testing.assert_allclose(found, np.round(found), atol=1e-9)  # whole documents found
    # The draws' mean is the expectation, up to the draws' own noise.
    assert abs(mrr.mean() - estimate.per_query["mrr_at_10"].mean()) < 0.03
    assert abs(estimate.drawn["ndcg_at_10"].mean() - estimate.per_query["ndcg_at_10"].mean()) < 0.03


def test_what_a_sample_cannot_see_is_reported_as_not_forecast_and_cannot_be_gated(
    project: Path, models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from embedmig.cli import main
    from embedmig.migrate.forecast import NOT_FORECAST

    config = with_judged_queries(project, 40, words=12)
    command.revision(config, "first", alias="docs", new=str(models["a"]), rev_id="r1")
    rev = command.revision(config, "second", alias="docs", new=str(models["near"]), rev_id="r2")
    command.upgrade(config, "r1")
    (report,) = command.upgrade(config, "head", dry_run=True, sample=100)
    for name in NOT_FORECAST:
        assert name in report.metrics, name  # the figure is there, as a dry run cannot see it
        assert report.metrics[name] is None and report.metrics[f"{name}_ci_low"] is None
    assert any(note.startswith("not forecast") for note in report.notes)
    assert "not forecast" in render_text(report, styled=False)
    assert "1" not in report.distributions["overlap"]  # no histogram of overlap@1 either
    # A gate on one of them: one line before anything is embedded, nothing recorded.
    edit(Path(str(rev.path)), "Gates(", "Gates(max_overlap_at_1_below_half=0.5, ")
    before = snapshot(config)
    capsys.readouterr()
    assert main(["upgrade", "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("embedmig: error: revision r2: a dry run does not forecast what ")
    assert "max_overlap_at_1_below_half" in err and len(err.strip().splitlines()) == 1
    assert snapshot(config) == before
    # The upgrade measures it and judges the gate.
    (upgraded,) = command.upgrade(config, "head", force=True)
    assert upgraded.metrics["overlap_at_1_below_half"] is not None
    assert any(c.metric == "overlap_at_1_below_half" for c in upgraded.verdict.checks)  # type: ignore[union-attr]
