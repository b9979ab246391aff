"""The Ray executor: the same backfill, its embedding on an actor pool of Ray Data, on a local Ray
instance (CI installs the `ray` extra)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from embedmig import Config, ConfigError, command, open_searcher
from embedmig.history import schema
from embedmig.migrate import executors
from tests.support import (
    CLI,
    assert_serves,
    copy_project,
    corpus_rows,
    count_encodes,
    edit,
    embedmig,
    encode,
    indexed,
    new_project,
    snapshot,
)

pytest.importorskip("ray.data", reason='the Ray executor needs pip install "embedmig[ray]"')
pytestmark = pytest.mark.ray

RAY_OPTIONS = "ray.num_actors = 2\nray.batch_size = 32\nray.window = 100\n"


@pytest.fixture(scope="module", autouse=True)
def one_ray() -> Iterator[None]:
    """One local Ray instance for the module (it takes seconds to start); the executor uses a
    running instance rather than starting its own."""
    import ray

    ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield
    ray.shutdown()


def on_ray(config: Config, alias: str = "docs", rev: str = "r1") -> Config:
    ini = config.root / "embedmig.ini"
    edit(ini, "checkpoint_every = 1024", "checkpoint_every = 40")
    ini.write_text(ini.read_text() + RAY_OPTIONS)
    command.revision(config, "first", alias=alias, new="models/a", rev_id=rev)
    return Config(ini)


def windows_sent(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of texts of every window the Ray executor sends out."""
    sent: list[int] = []
    real = executors.RayExecutor._run

    def counting(self, window):  # type: ignore[no-untyped-def]
        sent.append(sum(len(texts) for _, texts in window))
        return real(self, window)

    monkeypatch.setattr(executors.RayExecutor, "_run", counting)
    return sent


def test_a_ray_backfill_equals_the_in_process_backfill(config: Config) -> None:
    config = on_ray(config)
    command.revision(config, "copy", alias="copy", new="models/a", rev_id="c1")
    command.upgrade(config, "c1")  # in-process
    command.upgrade(config, "r1", executor="ray")
    on_ray_, in_process = indexed(config, "docs"), indexed(config, "copy")
    assert sorted(on_ray_) == sorted(in_process) and len(on_ray_) == 300
    keys = sorted(on_ray_)
    np.testing.assert_allclose(
        np.stack([on_ray_[k] for k in keys]), np.stack([in_process[k] for k in keys]), atol=1e-6
    )
    env_ids = {}
    engine = sa.create_engine(config.url)
    with engine.connect() as conn:
        for alias in ("docs", "copy"):
            rows = conn.execute(
                sa.select(schema.doc.c.key, schema.doc.c.id).where(schema.doc.c.alias == alias)
            )
            env_ids[alias] = dict(rows.all())
    engine.dispose()
    assert env_ids["docs"] == env_ids["copy"]
    with open_searcher(config, "docs") as ray_side, open_searcher(config, "copy") as local:
        for row in corpus_rows(20):
            query = " ".join(row["text"].split()[:6])
            a, b = ray_side.search(query), local.search(query)
            assert [h.key for h in a] == [h.key for h in b]
            np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-6)


def test_a_ray_backfill_loads_a_pgvector_table(
    pgvector_config: Config, models: dict[str, Path]
) -> None:
    config = on_ray(pgvector_config)
    command.upgrade(config, "r1", executor="ray")  # the driver loads the rows, by COPY
    served = indexed(config, "docs")
    rows = corpus_rows(300)
    assert sorted(served) == sorted(row["id"] for row in rows)
    expected = encode(models["a"], [row["text"] for row in rows[:20]])
    got = np.stack([served[row["id"]] for row in rows[:20]])
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.fixture(scope="module")
def killed_on_ray(
    tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path]
) -> tuple[Path, int]:
    """A project whose Ray backfill's driver was SIGKILLed after at least 120 checkpointed
    documents (windows of 60), with how many it checkpointed: built once, copied per rerun."""
    project = new_project(tmp_path_factory.mktemp("killed-on-ray"), models)
    config = on_ray(Config(project / "embedmig.ini"))
    ini = project / "embedmig.ini"
    edit(ini, "ray.window = 100", "ray.window = 60")
    driver = subprocess.Popen(
        [*CLI, "upgrade", "r1", "--executor", "ray"],
        cwd=project,
        start_new_session=True,  # its Ray processes too, to clean up after the kill
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    engine = sa.create_engine(config.url)
    consumed = 0
    deadline = time.monotonic() + 300
    try:
        while consumed < 120 and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.05)
            try:
                with engine.connect() as conn:
                    consumed = (
                        conn.execute(
                            sa.select(sa.func.max(schema.checkpoint.c.docs_consumed))
                        ).scalar()
                        or 0
                    )
            except sa.exc.OperationalError:
                pass  # the database is being created
        assert driver.poll() is None, "the backfill ended before it could be killed"
        driver.send_signal(signal.SIGKILL)  # the driver alone, as when its machine dies
        driver.wait()
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # then its orphaned Ray processes
    with engine.connect() as conn:
        kept = conn.execute(sa.select(schema.checkpoint.c.docs_consumed)).scalar()
    engine.dispose()
    assert kept is not None and 120 <= kept < 300
    return project, kept


@pytest.mark.process
@pytest.mark.parametrize("rerun", ["inprocess", "ray"])
def test_a_killed_driver_resumes_without_re_embedding_checkpointed_documents(
    killed_on_ray: tuple[Path, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rerun: str
) -> None:
    project = copy_project(killed_on_ray[0], tmp_path / "project")
    kept = killed_on_ray[1]
    ini = project / "embedmig.ini"
    # The rerun in one window: a window is an actor pool's start.
    edit(ini, "ray.window = 60", "ray.window = 300")
    config = Config(ini)
    if rerun == "ray":
        sent = windows_sent(monkeypatch)
        command.upgrade(config, "r1", executor="ray")
        assert sum(sent) == 300 - kept
    else:
        encoded = count_encodes(monkeypatch)
        command.upgrade(config, "r1")
        assert sum(encoded) == 300 - kept
    assert_serves(config, project / "models" / "a", {r["id"]: r["text"] for r in corpus_rows(300)})


def test_a_failing_worker_is_one_line_and_loses_no_checkpoint(config: Config) -> None:
    """Ray workers load the model themselves: one whose files changed under it (another
    machine's copy, say) refuses to encode, and the driver says so in one line."""
    config = on_ray(config)
    model = config.root / "models" / "a"
    copy = model.resolve()
    model.unlink()
    shutil.copytree(copy, model)  # this test's own copy, to change
    # After the first window the corpus changes a model file: the next actors see other files.
    (config.script_location / "env.py").write_text(
        f"""
from pathlib import Path
from embedmig import sources

def corpus(config, alias):
    for n, doc in enumerate(sources.corpus_from_config(config)):
        if n == 150:
            modules = Path("{model / "modules.json"}")
            modules.write_text(modules.read_text() + "\\n")
        yield doc
"""
    )
    failed = embedmig(config.root, "upgrade", "r1", "--executor", "ray")
    assert failed.returncode == 1
    line = failed.stderr.strip().splitlines()[-1]
    assert line.startswith("embedmig: error: a Ray worker failed to encode: ")
    assert "is not the driver's (fingerprints differ)" in line
    engine = sa.create_engine(config.url)
    with engine.connect() as conn:
        kept = conn.execute(sa.select(schema.checkpoint.c.docs_consumed)).scalar()
    engine.dispose()
    assert kept is not None and kept >= 100  # the first window's chunks were checkpointed


def test_executor_ray_without_ray_or_with_a_bad_option_is_one_line(config: Config) -> None:
    config = on_ray(config)
    before = snapshot(config)
    for args, message in (
        (("upgrade", "r1", "--executor", "spark"), "executor 'spark' is not one of inprocess, ray"),
    ):
        failed = embedmig(config.root, *args)
        assert failed.returncode == 1
        assert failed.stderr.strip().splitlines()[-1].endswith(message)
    ini = config.root / "embedmig.ini"
    edit(ini, "ray.num_actors = 2", "ray.num_actors = 0")
    failed = embedmig(config.root, "upgrade", "r1", "--executor", "ray")
    assert failed.returncode == 1 and "option 'ray.num_actors' must be at least 1" in failed.stderr
    assert snapshot(config) == before
    with pytest.raises(ConfigError, match="executor 'spark'"):
        executors.check(config, "spark")


def test_executor_ray_without_ray_installed_names_the_extra(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets without the extra
    with pytest.raises(ConfigError, match=r'needs Ray Data: pip install "embedmig\[ray\]"'):
        executors.check(config, "ray")


def test_the_ray_extra_is_declared() -> None:
    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert any(
        dep.startswith("ray[data]") for dep in project["project"]["optional-dependencies"]["ray"]
    )


def test_a_ray_backfill_through_an_endpoint_equals_the_in_process_one(
    config: Config, models: dict[str, Path]
) -> None:
    """Each actor is one more client of the endpoint; the driver keeps the cache, so a rerun
    from scratch sends the endpoint nothing but the probes."""
    from embedmig import Embedder
    from embedmig.embedders import probes
    from tests.embedding_server import EmbeddingServer

    server = EmbeddingServer({"tiny": models["a"]}).start()
    try:
        config = on_ray(config)
        ini = config.root / "embedmig.ini"  # one Ray Data dataset per upgrade: one pool start
        edit(ini, "ray.window = 100", "ray.window = 300")
        config = Config(ini)
        api = Embedder("tiny", backend="openai", base_url=server.url)
        command.revision(config, "api", alias="api", new=api, rev_id="h1")
        report = command.upgrade(config, "h1", executor="ray")[0]
        assert report.embedding["texts"] == 300 and report.embedding["requests"] >= 300 // 32
        command.upgrade(config, "r1")  # models/a, in-process
        through_ray, in_process = indexed(config, "api"), indexed(config, "docs")
        keys = sorted(in_process)
        assert sorted(through_ray) == keys
        np.testing.assert_allclose(
            np.stack([through_ray[k] for k in keys]),
            np.stack([in_process[k] for k in keys]),
            atol=1e-5,
        )
        command.downgrade(config, "api@base")
        server.reset()
        again = command.upgrade(config, "h1", executor="ray")[0]
        assert again.embedding["cached"] == 300 and again.embedding["requests"] == 0
        assert set(server.requested) <= set(probes.PROBES)
    finally:
        server.stop()
