"""The report's qrels path on BEIR SciFact reproduces all-MiniLM-L6-v2's published nDCG@10 (0.645).

Marked `scifact` (needs ../shared/data/scifact) and `minilm`; skipped with the reason otherwise.
Embeds the 5,183 abstracts with MiniLM on the CPU: a few minutes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from demo import scifact
from demo.models import ModelUnavailable, distilled, minilm
from embedmig import Config, command
from tests.support import shared_models

pytestmark = [pytest.mark.scifact, pytest.mark.minilm]
SCIFACT = scifact.SCIFACT
SHA256 = {
    "corpus.jsonl": "ae39e2b331413acd6c58c262e3d2c1bf2b4afb5407ccfa6d06dd3f06e5da1f28",
    "queries.jsonl": "8ff84a7c903f722981cd8d595c022660140c51867b27608a6d4910db86080313",
    "qrels/test.tsv": "5602d9f31c96d309a906692e1b722a9acfc4138c5d52e06d47bbb89a9c4ab7c3",
}


@pytest.fixture(scope="module")
def scifact_project(tmp_path_factory: pytest.TempPathFactory) -> Config:
    if not SCIFACT.is_dir():
        pytest.skip(f"{SCIFACT} not found (BEIR SciFact ships only beside the project)")
    for name, digest in SHA256.items():
        if hashlib.sha256((SCIFACT / name).read_bytes()).hexdigest() != digest:
            pytest.skip(f"{SCIFACT / name} is not the BEIR release (sha256 differs)")
    try:
        model = minilm()
    except ModelUnavailable as exc:
        pytest.skip(str(exc))
    root = tmp_path_factory.mktemp("scifact")
    (root / "models").mkdir()
    (root / "models" / "minilm").symlink_to(model)
    (root / "models" / "static").symlink_to(
        distilled(shared_models(tmp_path_factory) / "static-256")
    )
    config = scifact.project(root)
    command.revision(config, "papers on MiniLM", alias="papers", new="models/minilm", rev_id="s1")
    command.revision(config, "papers to static", alias="papers", new="models/static", rev_id="s2")
    return config


def test_minilm_reproduces_the_published_ndcg_at_10_on_scifact(scifact_project: Config) -> None:
    (report,) = command.upgrade(scifact_project, "s1")
    assert report.corpus_size == 5183 and report.n_queries == 300
    ndcg = report.metrics["ndcg_at_10_new"]
    print(f"\nSciFact test, all-MiniLM-L6-v2: nDCG@10 = {ndcg:.4f} (published 0.645)")
    assert ndcg == pytest.approx(0.645, abs=0.01)


def test_minilm_to_the_distilled_static_model_on_scifact(
    scifact_project: Config, tmp_path: Path
) -> None:
    (report,) = command.upgrade(scifact_project, "s2", force=True)
    command.write_report(report, tmp_path / "scifact.json")
    m = report.metrics
    print(
        "\nSciFact MiniLM -> static: "
        + ", ".join(
            f"{name} {m[name]:.4f}"
            for name in (
                "overlap_at_10",
                "rbo",
                "score_delta_mean",
                "score_ks",
                "ndcg_at_10_old",
                "ndcg_at_10_new",
                "ndcg_at_10_delta",
                "ndcg_at_10_delta_ci_low",
                "ndcg_at_10_delta_ci_high",
                "recall_ratio",
            )
        )
        + f"; evaluate timings {report.timings}"
    )
    assert m["ndcg_at_10_old"] == pytest.approx(0.645, abs=0.01)
    assert m["ndcg_at_10_delta_ci_high"] is not None and m["ndcg_at_10_delta_ci_high"] < 0
