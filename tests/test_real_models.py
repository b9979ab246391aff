"""The engine on real models: all-MiniLM-L6-v2 (from its PyPI wheel) and a static model distilled
from it. Marked `minilm`; skipped with the reason when the wheel is not installed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from embedmig import Config, command
from embedmig.metrics.report import Report
from tests.support import (
    copy_project,
    corpus_rows,
    edit,
    new_project,
    with_judged_queries,
)

pytestmark = pytest.mark.minilm


def real_project_at(project: Path, real_models: dict[str, Path]) -> Config:
    for name, path in real_models.items():
        (project / "models" / name).symlink_to(path)
    ini = project / "embedmig.ini"
    edit(ini, "eval.sample = 500", "eval.sample = 100")
    return Config(ini)


@pytest.fixture(scope="session")
def on_minilm(
    tmp_path_factory: pytest.TempPathFactory,
    models: dict[str, Path],
    real_models: dict[str, Path],
) -> tuple[Path, Report]:
    """A project whose alias `papers` is live on MiniLM (m1), with m2 (static) pending: built
    once, since embedding 300 abstracts with MiniLM is most of these specs' time."""
    project = new_project(tmp_path_factory.mktemp("on-minilm"), models)
    config = real_project_at(project, real_models)
    command.revision(config, "first", alias="papers", new="models/minilm", rev_id="m1")
    command.revision(config, "static", alias="papers", new="models/static", rev_id="m2")
    (report,) = command.upgrade(config, "m1")
    return project, report


@pytest.fixture
def minilm_project(on_minilm: tuple[Path, Report], tmp_path: Path) -> tuple[Config, Report]:
    project = copy_project(on_minilm[0], tmp_path / "project")
    return Config(project / "embedmig.ini"), on_minilm[1]


def test_minilm_builds_an_index_that_finds_a_document_by_its_title(
    minilm_project: tuple[Config, Report],
) -> None:
    config, report = minilm_project
    (state,) = command.current(config)
    assert state.live is not None and state.live.dim == 384 and state.live.ntotal == 300
    # SciFact abstracts often exceed MiniLM's 256 tokens: the report counts the truncated ones.
    assert any(
        re.match(r"\d+ document\(s\) reached the model's 256 tokens", n) for n in report.notes
    )
    row = corpus_rows(300)[123]
    title = row["text"].split(". ")[0]
    assert command.search(config, "papers", title, k=3)[0].key == row["id"]


def test_a_searcher_opened_from_python_prints_no_benign_load_report(
    minilm_project: tuple[Config, Report],
) -> None:
    config, _ = minilm_project
    app = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.WARNING)  # an application's own logging\n"
        "from embedmig import Config, open_searcher\n"
        "with open_searcher(Config(sys.argv[1]), 'papers') as searcher:\n"
        "    print(searcher.search('vitamin D', k=1)[0].key)\n"
        "logging.getLogger('transformers.modeling_utils').warning('still mine')\n"
    )
    # As an application starts: transformers at its default verbosity (the CLI, which other
    # specs run in this process, quiets it through the environment).
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_VERBOSITY"}
    ran = subprocess.run(
        [sys.executable, "-c", app, str(config.path)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    assert ran.stdout.strip() and "LOAD REPORT" not in ran.stdout + ran.stderr
    assert "still mine" in ran.stderr  # their logging is as they set it


def test_minilm_to_distilled_static_measures_a_real_shift(
    minilm_project: tuple[Config, Report],
) -> None:
    config, _ = minilm_project
    (report,) = command.upgrade(config, "head", force=True)
    overlap = report.metrics["overlap_at_10"]
    assert overlap is not None and 0.1 < overlap < 0.9  # related spaces, clearly not the same
    assert report.metrics["score_ks"] is not None and report.metrics["score_ks"] > 0.1
    (state,) = command.current(config)
    assert state.live is not None and state.live.dim == 256
    command.downgrade(config, "-1")
    (state,) = command.current(config)
    assert state.live is not None and state.live.dim == 384


def test_minilm_through_an_openai_compatible_endpoint_equals_minilm_in_process(
    real_models: dict[str, Path],
) -> None:
    """The same model behind tests/embedding_server.py: vectors within 1e-5, and the probes of
    one are the probes of the other (no drift is seen where there is none)."""
    import numpy as np

    from embedmig import Embedder
    from embedmig.config import Config, EnvSettings
    from embedmig.embedders import load, probes
    from tests.embedding_server import EmbeddingServer

    settings = EnvSettings.of(Config(None)).embedder
    server = EmbeddingServer({"all-MiniLM-L6-v2": real_models["minilm"]}).start()
    try:
        local = load(Embedder(str(real_models["minilm"])), Path("."), settings)
        http = load(
            Embedder("all-MiniLM-L6-v2", backend="openai", base_url=server.url), Path("."), settings
        )
        texts = [row["text"] for row in corpus_rows(16)]
        np.testing.assert_allclose(
            http.encode_documents(texts), local.encode_documents(texts), atol=1e-5
        )
        # The probes, as queries and as documents: no drift is seen where there is none.
        assert probes.lowest_cosine(probes.of(local), probes.of(http)) > 0.99999
        http.close()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def on_static(
    tmp_path_factory: pytest.TempPathFactory,
    models: dict[str, Path],
    real_models: dict[str, Path],
) -> Path:
    """A project whose alias `papers` is live on the static model (s1), with MiniLM (s2) pending."""
    project = new_project(tmp_path_factory.mktemp("on-static"), models)
    config = real_project_at(project, real_models)
    command.revision(config, "first", alias="papers", new="models/static", rev_id="s1")
    command.revision(config, "minilm", alias="papers", new="models/minilm", rev_id="s2")
    command.upgrade(config, "s1")
    return project


@pytest.mark.parametrize("old", ["minilm", "static"])
def test_a_map_into_the_old_index_is_measured_against_the_real_re_embed(
    old: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The adapter revision's forecast of the full re-embed it stands in for holds the re-embed's
    real recall@10, and the map brings the new model's queries to the old model's documents."""
    built = (
        request.getfixturevalue("on_minilm")[0]
        if old == "minilm"
        else request.getfixturevalue("on_static")
    )
    project = copy_project(built, tmp_path / "adapted")
    other = copy_project(built, tmp_path / "re-embedded")
    # One cache: the re-embed embeds only what the fit and its forecast did not.
    shutil.rmtree(other / "embedding-cache")
    (other / "embedding-cache").symlink_to(project / "embedding-cache")
    config = with_judged_queries(project, 120, words=5)
    with_judged_queries(other, 120, words=5)
    ini = project / "embedmig.ini"
    # The map is fitted on half the corpus, so the forecast is one, not a reading of it all.
    ini.write_text(ini.read_text() + "\nadapter.pairs = 150\n")
    (revision,) = (project / "migrations" / "versions").glob("[ms]2_*.py")
    edit(revision, "ctx.backfill()", "ctx.adapt('procrustes')")
    (adapted,) = command.upgrade(config, "head", force=True)
    (reembedded,) = command.upgrade(Config(other / "embedmig.ini"), "head", force=True)
    real = reembedded.metrics["recall_at_10_new"]
    low, high = (adapted.metrics[f"reembed_recall_at_10_ci_{e}"] for e in ("low", "high"))
    assert real is not None and low is not None and high is not None
    assert low <= real <= high, (low, real, high)
    via_map = adapted.metrics["recall_at_10_new"]  # exact: every query on the whole live index
    assert via_map is not None and via_map > 0.5 * real  # a real map, not noise
    ratio = adapted.metrics["adapter_recall_ratio"]
    assert ratio is not None and ratio == pytest.approx(via_map / real, abs=0.1)
    (state,) = command.current(config)
    assert state.adapter is not None and state.live is not None
    assert state.live.dim == {"minilm": 384, "static": 256}[old]
    command.downgrade(config, "-1")  # the alias serves the old model's queries again
    (state,) = command.current(config)
    assert state.adapter is None and state.revision == f"{old[0]}1"
