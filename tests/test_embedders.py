"""Embedders behind an endpoint or an import path: a real OpenAI-compatible server on 127.0.0.1
(tests/embedding_server.py, around the test models), its faults, probe fingerprints, the
embedding cache and cost."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np
import pytest

from embedmig import (
    Config,
    Embedder,
    EmbedderError,
    StateError,
    command,
    open_searcher,
    open_writer,
)
from embedmig.config import EmbedderSettings, EnvSettings
from embedmig.embedders import load, probes
from embedmig.environment import Environment
from embedmig.store import catalog, checkpoints
from tests.embedding_server import EmbeddingServer, Fault, token_ids
from tests.support import (
    CrashRunner,
    assert_serves,
    build_static_model,
    corpus_rows,
    edit_revision,
    embedmig,
    first_index,
    indexed,
    refused,
    snapshot,
)

SECRET = "sk-embedmig-test-7f3a9c1e5b"
KEY_ENV = "EMBEDMIG_TEST_API_KEY"
# Short budgets, so a fault that persists fails in about a second.
FAST = "embedder.retry_seconds = 2\nembedder.timeout = 1\n"


@pytest.fixture(scope="module")
def drifted(tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path]) -> Path:
    """Model `a` with its weights moved a little: what a server upgrade does to a model's
    vectors while its name stays the same."""
    texts = [row["text"] for row in corpus_rows(300)]
    root = tmp_path_factory.mktemp("drifted")
    return build_static_model(root / "a2", texts, 32, seed=7, base=models["a"], noise=0.3)


@pytest.fixture(scope="module")
def server(models: dict[str, Path]) -> Iterator[EmbeddingServer]:
    served = EmbeddingServer({"tiny": models["a"]}, api_key=SECRET).start()
    yield served
    served.stop()


@pytest.fixture(autouse=True)
def _clean_server(
    request: pytest.FixtureRequest, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    monkeypatch.setenv(KEY_ENV, SECRET)
    yield
    if "server" in request.fixturenames:
        served: EmbeddingServer = request.getfixturevalue("server")
        served.serve("tiny", models["a"])
        served.reset()


def remote(server: EmbeddingServer, **options: object) -> Embedder:
    return Embedder("tiny", backend="openai", base_url=server.url, api_key_env=KEY_ENV, **options)  # type: ignore[arg-type]


def settings(**overrides: Any) -> EmbedderSettings:
    base = EnvSettings.of(Config(None, options={"embedder.timeout": "1"})).embedder
    return dataclasses.replace(base, **overrides)


def configure(project: Path, options: str) -> Config:
    """``options`` (ini lines) set in the project's embedmig.ini, replacing any already there."""
    ini = project / "embedmig.ini"
    text = ini.read_text()
    for line in options.strip().splitlines():
        key = line.split("=")[0].strip()
        text = re.sub(rf"(?m)^{re.escape(key)} *=.*\n", "", text) + line + "\n"
    ini.write_text(text)
    return Config(ini)


def texts(n: int) -> list[str]:
    return [row["text"] for row in corpus_rows(n)]


def corpus_requested(server: EmbeddingServer) -> set[str]:
    """The texts the server was asked for, without the probes."""
    return set(server.requested) - set(probes.PROBES) - {"dimension"}


# ---- the protocol's three backends -----------------------------------------------------------


def test_a_local_model_counts_tokens_from_its_own_encode_tokenizing_each_text_once(
    models: dict[str, Path],
) -> None:
    local = load(Embedder(str(models["a"])), Path("."), settings())
    tokenizer = local.backend.model[0].tokenizer  # type: ignore[attr-defined]
    sample = texts(40)
    expected = sum(len(e.ids) for e in tokenizer.encode_batch(sample, add_special_tokens=False))
    calls = []
    encode_batch = tokenizer.encode_batch

    def counted(batch: list[str], *args: Any, **kwargs: Any) -> Any:
        calls.append(len(batch))
        return encode_batch(batch, *args, **kwargs)

    tokenizer.encode_batch = counted
    try:
        before = local.usage.tokens
        local.encode_documents(sample)
    finally:
        tokenizer.encode_batch = encode_batch
    assert local.usage.tokens - before == expected and not local.usage.estimated
    assert sum(calls) == len(sample)  # each text tokenized once: by the encode, counted there


def test_vectors_through_the_http_backend_equal_the_in_process_ones(
    server: EmbeddingServer, models: dict[str, Path]
) -> None:
    local = load(Embedder(str(models["a"])), Path("."), settings())
    http = load(remote(server), Path("."), settings(batch_size=7, concurrency=3))
    sample = texts(60)
    np.testing.assert_allclose(
        http.encode_documents(sample), local.encode_documents(sample), atol=1e-5
    )
    np.testing.assert_allclose(http.encode_queries(sample), local.encode_queries(sample), atol=1e-5)
    assert http.fingerprint != local.fingerprint  # another backend is another embedder
    usage = http.usage
    # 60 texts in batches of 7, twice; the fingerprint's probes: 8 texts in batches of 7.
    assert usage.requests == 2 * 9 + 2
    assert usage.tokens > 0 and not usage.estimated  # the endpoint's own count
    http.close()


def test_batches_are_bounded_by_count_and_by_an_estimate_of_their_tokens(
    server: EmbeddingServer,
) -> None:
    http = load(remote(server, dimensions=32), Path("."), settings(max_batch_tokens=400))
    sample = texts(40)
    http.encode_documents(sample)
    backend = http.backend
    longest_first = sorted(sample, key=len, reverse=True)  # as the backend sends them
    batches = list(backend._batches(longest_first))  # type: ignore[attr-defined]
    assert sum(map(len, batches)) == 40 and http.usage.requests == len(batches) > 40 // 32
    from embedmig.embedders.base import estimate_tokens

    for batch in batches:
        assert len(batch) == 1 or sum(map(estimate_tokens, batch)) <= 400
    http.close()


def test_a_python_import_path_is_an_embedder(config: Config, models: dict[str, Path]) -> None:
    (config.root / "house_encoders.py").write_text(
        "from sentence_transformers import SentenceTransformer\n\n"
        "class Encoder:\n"
        "    def __init__(self, path):\n"
        "        self.model = SentenceTransformer(path, device='cpu')\n"
        "        self.dimension = self.model.get_embedding_dimension()\n"
        "    def encode_documents(self, texts):\n"
        "        return self.model.encode(texts)\n"
        "    encode_queries = encode_documents\n"
        "    def fingerprint(self):\n"
        "        return 'house-v1'\n\n"
        "def make(path):\n"
        "    return Encoder(path)\n"
    )
    spec = Embedder("house_encoders:make", backend="python", params={"path": "models/a"})
    command.revision(config, "in-house", alias="docs", new=spec, rev_id="r1")
    assert (
        "params={'path': 'models/a'}"
        in (config.script_location / "versions").joinpath("r1_in_house.py").read_text()
    )
    assert embedmig(config.root, "upgrade").returncode == 0
    hits = command.search(config, "docs", corpus_rows(3)[2]["text"], k=1)
    assert hits[0].key == corpus_rows(3)[2]["id"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("house_encoders_missing:make", "cannot import 'house_encoders_missing'"),
        ("json:loads", "failed: TypeError"),
        ("collections:OrderedDict", "lacks encode_documents, encode_queries, dimension"),
    ],
)
def test_a_python_embedder_that_cannot_be_made_is_one_line(
    config: Config, spec: str, message: str
) -> None:
    command.revision(config, "in-house", alias="docs", new=Embedder(spec, backend="python"))
    before = snapshot(config)
    ran = embedmig(config.root, "upgrade")
    assert ran.returncode == 1 and message in ran.stderr and "Traceback" not in ran.stderr
    assert len(ran.stderr.strip().splitlines()) == 1
    assert snapshot(config) == before


FAULTY_ENCODERS = """
import numpy as np

class Encoder:
    dimension = 8
    def encode_documents(self, texts):
        return np.ones((len(texts), 8))
    encode_queries = encode_documents

class NoFingerprint(Encoder):
    def fingerprint(self):
        raise ValueError("model registry unreachable")

class NoDimension(Encoder):
    @property
    def dimension(self):
        raise ValueError("config not loaded")

def no_fingerprint():
    return NoFingerprint()

def no_dimension():
    return NoDimension()
"""


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("no_fingerprint", "failed to report its fingerprint: ValueError: model registry"),
        ("no_dimension", "failed to report its dimension: ValueError: config not loaded"),
    ],
)
def test_an_encoder_that_cannot_say_what_it_is_is_its_own_error_not_the_revisions(
    config: Config, factory: str, message: str
) -> None:
    (config.root / "faulty_encoders.py").write_text(FAULTY_ENCODERS)
    spec = Embedder(f"faulty_encoders:{factory}", backend="python")
    command.revision(config, "in-house", alias="docs", new=spec, rev_id="r1")
    before = snapshot(config)
    ran = embedmig(config.root, "upgrade")
    assert ran.returncode == 1 and "Traceback" not in ran.stderr
    (line,) = ran.stderr.strip().splitlines()
    assert line.startswith(f"embedmig: error: python:faulty_encoders:{factory}")
    assert message in line and "revision" not in line
    assert snapshot(config) == before


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"backend": "cohere"}, "backend must be one of"),
        ({"backend": "openai", "base_url": "ftp://x/v1"}, "must be an http(s) URL"),
        ({"backend": "openai", "base_url": "https://me:sk-123@x/v1"}, "must not carry credentials"),
        ({"backend": "openai", "base_url": "https://x/v1?api_key=sk-9"}, "a query string or a"),
        ({"backend": "openai", "api_key_env": "sk-live-123"}, "names an environment variable"),
        ({"backend": "openai", "truncate_dim": 8}, "does not apply to backend='openai'"),
        ({"dimensions": 8}, "does not apply to backend='sentence-transformers'"),
        ({"backend": "python"}, "needs model='package.module:factory'"),
        ({"backend": "openai", "dimensions": 0}, "dimensions must be a positive integer"),
    ],
)
def test_an_embedder_declared_wrong_is_refused_when_the_revision_is_read(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(EmbedderError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Embedder("tiny", **options)  # type: ignore[arg-type]


def test_a_revision_for_an_endpoint_is_written_with_its_options(
    config: Config, server: EmbeddingServer
) -> None:
    ran = embedmig(
        config.root, "revision", "-m", "api", "--alias", "docs", "--new", "tiny",
        "--backend", "openai", "--base-url", server.url, "--api-key-env", KEY_ENV,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    command.revision(config, "back", alias="docs", new="models/a", rev_id="r2")
    second = (config.script_location / "versions" / "r2_back.py").read_text()
    assert f"old = Embedder('tiny', backend='openai', base_url='{server.url}'" in second


# ---- faults --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        Fault("429", retry_after=0.3),
        Fault("500"),
        Fault("timeout", seconds=1.0),
        "drop",
        "truncate",
    ],
    ids=["429", "500", "timeout", "drop", "truncate"],
)
def test_a_transient_fault_is_retried_to_success(
    server: EmbeddingServer, models: dict[str, Path], fault: Fault | str
) -> None:
    http = load(remote(server, dimensions=32), Path("."), settings(timeout=0.3))
    expected = load(Embedder(str(models["a"])), Path("."), settings()).encode_documents(texts(5))
    server.inject(fault)
    np.testing.assert_allclose(http.encode_documents(texts(5)), expected, atol=1e-5)
    assert server.requests == 2
    http.close()


def test_retry_after_is_honoured_in_seconds_and_as_a_date(server: EmbeddingServer) -> None:
    from embedmig.embedders.http import _retry_after

    http = load(remote(server, dimensions=32), Path("."), settings())
    server.inject(Fault("429", retry_after=0.6))
    started = time.monotonic()
    http.encode_documents(texts(2))
    assert time.monotonic() - started >= 0.6
    http.close()

    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30))
    answer = httpx.Response(429, headers={"Retry-After": later})
    assert 28 <= (_retry_after(answer) or 0) <= 30


def test_a_fault_that_persists_fails_in_one_line_naming_status_and_endpoint(
    server: EmbeddingServer,
) -> None:
    http = load(remote(server, dimensions=32), Path("."), settings(retry_seconds=1.0))
    server.inject(*["500"] * 100)
    with pytest.raises(EmbedderError) as raised:
        http.encode_documents(texts(2))
    message = str(raised.value)
    assert "500 Internal Server Error" in message and f"{server.url}/embeddings" in message
    assert SECRET not in message and "\n" not in message
    http.close()


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("dimension", "returned vectors of 31 dimensions, not 32"),
        ("nan", "returned NaN or infinite values"),
        ("count", "returned 31 embedding(s) for 32 text(s)"),
    ],
)
def test_a_malformed_answer_stops_the_backfill_in_one_line_keeping_its_checkpoints(
    project: Path, server: EmbeddingServer, fault: str, message: str
) -> None:
    # One request at a time, so the fault meets a known request: the first of the second chunk.
    config = configure(project, "checkpoint_every = 100\ncache = false\nembedder.concurrency = 1")
    command.revision(config, "api", alias="docs", new=remote(server), rev_id="r1")
    # The probes (they tell the dimension too), the 100 documents of the first checkpoint and
    # the probes again before it commits.
    server.inject(fault, after=1 + 4 + 1)
    ran = embedmig(project, "--verbose", "upgrade")
    assert (
        ran.returncode == 1 and f"embedmig: error: {server.url}/embeddings {message}" in ran.stderr
    )
    assert SECRET not in ran.stdout + ran.stderr
    assert [(s.revision, s.live) for s in command.current(config)] == [(None, None)]
    (building,) = records(config)
    env = Environment(config)
    with env.engine.connect() as conn:
        assert checkpoints.checkpoint(conn, building.id).docs_consumed == 100
    env.dispose()


def test_shuffled_answers_are_put_back_in_order_by_their_index(
    server: EmbeddingServer, models: dict[str, Path]
) -> None:
    http = load(remote(server, dimensions=32), Path("."), settings())
    local = load(Embedder(str(models["a"])), Path("."), settings())
    server.inject("shuffle")
    np.testing.assert_allclose(
        http.encode_documents(texts(9)), local.encode_documents(texts(9)), atol=1e-5
    )
    http.close()


def test_the_api_key_reaches_no_output_history_report_or_file(
    project: Path, server: EmbeddingServer
) -> None:
    config = configure(project, FAST)
    command.revision(config, "api", alias="docs", new=remote(server), rev_id="r1")
    command.revision(config, "local", alias="docs", new="models/near", rev_id="r2")
    runs = [
        embedmig(project, "--verbose", "upgrade", "r1"),
        embedmig(project, "--verbose", "upgrade", "--dry-run", "--report", "dry.html"),
        embedmig(project, "--verbose", "upgrade", "--report", "up.json"),
        embedmig(project, "--verbose", "downgrade", "-1"),
        embedmig(project, "--verbose", "probe"),
        embedmig(project, "--verbose", "history", "-v"),
        embedmig(project, "--verbose", "search", "docs", "vitamin"),
    ]
    assert [r.returncode for r in runs] == [0] * len(runs), [r.stderr for r in runs]
    assert all(SECRET not in r.stdout + r.stderr for r in runs)
    for path in project.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert SECRET.encode() not in path.read_bytes(), path


def test_a_missing_or_refused_key_is_one_line_without_the_key(
    project: Path, server: EmbeddingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = configure(project, FAST)
    command.revision(config, "api", alias="docs", new=remote(server), rev_id="r1")
    before = snapshot(config)
    monkeypatch.delenv(KEY_ENV)
    ran = embedmig(project, "upgrade")
    assert ran.returncode == 1 and f"environment variable {KEY_ENV}, which is not set" in ran.stderr
    monkeypatch.setenv(KEY_ENV, SECRET[:-1])
    ran = embedmig(project, "upgrade")
    assert ran.returncode == 1 and f"401 Unauthorized: check the key in {KEY_ENV}" in ran.stderr
    assert SECRET[:-1] not in ran.stderr and len(ran.stderr.strip().splitlines()) == 1
    assert snapshot(config) == before


@pytest.mark.parametrize(
    "key", ["sk-clé-secrète", "sk-first\nsk-second"], ids=["accent", "newline"]
)
def test_a_key_no_http_header_can_carry_is_refused_at_once_without_the_key(
    project: Path, server: EmbeddingServer, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    config = configure(project, "embedder.retry_seconds = 30\n")
    command.revision(config, "api", alias="docs", new=remote(server), rev_id="r1")
    before = snapshot(config)
    monkeypatch.setenv(KEY_ENV, key)
    started = time.monotonic()
    ran = embedmig(project, "upgrade")
    assert time.monotonic() - started < 10  # refused, not retried for the 30 s budget
    assert ran.returncode == 1 and "Traceback" not in ran.stderr
    assert f"the API key in the environment variable {KEY_ENV}" in ran.stderr
    assert "an HTTP header cannot carry" in ran.stderr and len(ran.stderr.splitlines()) == 1
    assert all(part not in ran.stderr for part in key.split("\n"))
    assert server.requests == 0 and snapshot(config) == before


def test_a_trickling_answer_is_cut_at_the_timeout_and_the_budget_holds(
    server: EmbeddingServer,
) -> None:
    http = load(remote(server, dimensions=32), Path("."), settings(timeout=1.0, retry_seconds=2.0))
    server.inject(*[Fault("slow", seconds=30.0)] * 20)  # headers at once, then 64 bytes / 0.5 s
    started = time.monotonic()
    with pytest.raises(EmbedderError, match=r"no answer within 1 s \(timeout\)"):
        http.encode_documents(texts(2))
    # Each attempt is cut at 1 s and retrying stops at 2 s: not the 30 s the server trickles.
    assert time.monotonic() - started < 6
    http.close()


@pytest.mark.process
def test_a_killed_backfill_resumes_without_requesting_a_checkpointed_text(
    project: Path, server: EmbeddingServer, crash_runner: CrashRunner
) -> None:
    # No cache: what is not asked again is what the checkpoint kept.
    config = configure(project, "checkpoint_every = 100\ncache = false\n")
    command.revision(config, "api", alias="docs", new=remote(server), rev_id="r1")
    died = crash_runner.run(project, "during-encode", ("upgrade",), {KEY_ENV: SECRET})
    assert died.get("signal") == signal.SIGKILL, died
    checkpointed = set(texts(100))
    assert checkpointed <= corpus_requested(server)
    server.reset()
    assert embedmig(project, "upgrade").returncode == 0
    asked = corpus_requested(server)
    assert asked and not asked & checkpointed


# ---- drift ---------------------------------------------------------------------------------


def test_a_model_swapped_behind_the_same_name_is_caught_by_probe_upgrade_and_searcher(
    project: Path, server: EmbeddingServer, drifted: Path, models: dict[str, Path]
) -> None:
    config = configure(project, FAST)
    command.revision(config, "api", alias="docs", new=remote(server), rev_id="r1")
    command.revision(config, "local", alias="docs", new="models/near", rev_id="r2")
    assert embedmig(project, "upgrade", "r1").returncode == 0
    ran = embedmig(project, "probe")
    assert ran.returncode == 0 and "docs: index #1, lowest probe cosine 1.0" in ran.stdout
    assert ": ok; openai:tiny" in ran.stdout

    server.serve("tiny", drifted)
    server.reset()
    before = snapshot(config)
    ran = embedmig(project, "probe", "docs")
    assert ran.returncode == 1 and "DRIFTED" in ran.stdout
    assert "embedmig: error: 1 alias(es) drifted: docs (lowest probe cosine" in ran.stderr
    ran = embedmig(project, "upgrade")
    assert ran.returncode == 1 and "the embedder of index #1 of 'docs', drifted" in ran.stderr
    assert corpus_requested(server) == set()  # refused before embedding anything
    ran = embedmig(project, "search", "docs", "vitamin")
    assert ran.returncode == 1 and "drifted: lowest probe cosine" in ran.stderr
    with pytest.raises(EmbedderError, match="drifted"), open_searcher(config, "docs") as searcher:
        searcher.search("vitamin")
    assert snapshot(config) == before
    ran = embedmig(project, "watch", "docs")  # searches nothing, fails on the probes
    assert ran.returncode == 3 and "watch of docs failed: watch_probe_min_cosine = 0." in ran.stderr
    assert "the model the alias is queried with drifted: nothing was searched" in ran.stdout

    server.serve("tiny", models["a"])
    assert embedmig(project, "probe").returncode == 0


def test_a_model_changed_behind_the_endpoint_mid_backfill_is_never_swapped_in(
    project: Path, server: EmbeddingServer, drifted: Path, models: dict[str, Path]
) -> None:
    config = configure(project, FAST + "checkpoint_every = 100\nembedder.concurrency = 1\n")
    command.revision(config, "api", alias="docs", new=remote(server), rev_id="r1")
    # The probes, the first chunk's four requests and its probes again; then another model.
    server.inject(Fault("swap", model=drifted), after=1 + 4 + 1)
    ran = embedmig(project, "upgrade")
    assert ran.returncode == 1 and "Traceback" not in ran.stderr
    assert "changed during the backfill: lowest probe cosine" in ran.stderr
    assert [(s.revision, s.live) for s in command.current(config)] == [(None, None)]
    (building,) = records(config)
    assert building.state == catalog.State.BUILDING  # its first chunk, of the model it started with

    server.serve("tiny", models["a"])  # the endpoint goes back: the build resumes, all of `a`
    assert embedmig(project, "upgrade").returncode == 0
    assert_serves(config, models["a"], {row["id"]: row["text"] for row in corpus_rows(300)})


NOISY_ENCODER = """
import hashlib
import numpy as np

class Noisy:
    dimension = 32
    def encode_documents(self, texts):
        seeds = [int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little") for t in texts]
        base = np.stack([np.random.default_rng(s).standard_normal(32) for s in seeds])
        return base + np.random.default_rng().normal(0, 0.3 * np.sqrt(32), base.shape)
    encode_queries = encode_documents

def make():
    return Noisy()
"""


def test_an_encoder_that_is_not_deterministic_is_refused_before_it_serves(
    config: Config, project: Path
) -> None:
    (project / "noisy.py").write_text(NOISY_ENCODER)
    command.revision(
        config, "noisy", alias="docs", new=Embedder("noisy:make", backend="python"), rev_id="r1"
    )
    before = snapshot(config)
    ran = embedmig(project, "upgrade")
    assert ran.returncode == 1 and "is not deterministic" in ran.stderr
    assert "changed during the backfill" in ran.stderr
    assert command.current(config) == []  # nothing built from it: no alias, no index
    assert snapshot(config) == before


def test_a_local_model_keeps_its_file_hash_and_gains_a_probe(config: Config) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.upgrade(config)
    (result,) = command.probe(config)
    assert result.lowest is not None and result.lowest > 0.99999 and not result.drifted
    (live,) = records(config)
    assert live.state == catalog.State.LIVE and live.probe is not None
    assert probes.from_bytes(live.probe, live.dim).shape == (2 * len(probes.PROBES), live.dim)


# ---- the cache and cost ------------------------------------------------------------------


def test_an_upgrade_run_again_from_scratch_sends_no_text_again(
    project: Path, server: EmbeddingServer
) -> None:
    config = configure(project, FAST)
    command.revision(config, "api", alias="docs", new=remote(server), rev_id="r1")
    first = command.upgrade(config)[0]
    assert first.embedding["texts"] == 300 and first.embedding["cached"] == 0
    requests = first.embedding["requests"]
    assert requests == -(-300 // 32)
    shutil.rmtree(config.index_dir)
    (project / "embedmig.db").unlink()
    server.reset()
    again = command.upgrade(config)[0]
    assert corpus_requested(server) == set()
    # The probes, at the start, before the one chunk commits and before the swap: what drift
    # safety costs.
    assert server.requests == 3
    assert again.embedding["cached"] == 300 and again.embedding["requests"] == 0
    assert "300 from the cache" in embedmig(project, "report", "r1").stdout


def test_texts_answered_before_a_request_fails_for_good_are_not_paid_for_again(
    project: Path, server: EmbeddingServer
) -> None:
    # One chunk of 300 texts in requests of 32, one at a time: the fifth fails for good.
    config = configure(project, FAST + "embedder.concurrency = 1\n")
    command.revision(config, "api", alias="docs", new=remote(server), rev_id="r1")
    server.inject(*["429"] * 200, after=1 + 4)  # the probes, then four answered requests
    ran = embedmig(project, "upgrade")
    assert ran.returncode == 1 and "429 Too Many Requests" in ran.stderr
    answered = corpus_requested(server)
    assert len(answered) == 4 * 32
    server.reset()
    assert embedmig(project, "upgrade").returncode == 0
    asked = corpus_requested(server)
    assert len(asked) == 300 - 4 * 32 and not asked & answered


def test_an_upgrade_after_its_dry_run_embeds_only_what_the_dry_run_did_not(
    project: Path, server: EmbeddingServer
) -> None:
    config = configure(project, FAST + "embedder.price_per_million_tokens = 0.02\n")
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.revision(config, "api", alias="docs", new=remote(server), rev_id="r2")
    command.upgrade(config, "r1")
    (dry,) = command.upgrade(config, dry_run=True, sample=100)
    dry_run = corpus_requested(server)
    forecast = dry.embedding
    server.reset()
    (done,) = command.upgrade(config)
    assert not corpus_requested(server) & dry_run
    assert done.embedding["cached"] >= 100
    # The forecast, from 100 documents, against the tokens of the whole corpus.
    total = sum(len(ids) for ids in _tokens(server, project))
    assert abs(forecast["forecast_tokens"] - total) / total < 0.15, (forecast, total)
    assert forecast["forecast_cost"] == pytest.approx(forecast["forecast_tokens"] / 1e6 * 0.02)
    assert forecast["forecast_seconds"] > 0 and forecast["texts_per_second"] > 0
    text = embedmig(project, "report", "r2", "--event", "2").stdout
    assert "the upgrade: about" in text and "$" in text


def test_the_projects_price_is_an_endpoints_and_a_local_model_costs_only_its_own(
    project: Path,
) -> None:
    config = configure(project, "embedder.price_per_million_tokens = 0.02\n")
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    priced = Embedder("models/near", price_per_million_tokens=0.5)
    command.revision(config, "second", alias="docs", new=priced, rev_id="r2")
    assert (
        "price_per_million_tokens=0.5" in next(project.glob("migrations/versions/r2_*")).read_text()
    )
    (local,) = command.upgrade(config, "r1")
    assert local.embedding["price_per_million_tokens"] is None and local.embedding["cost"] is None
    (dry,) = command.upgrade(config, "r2", dry_run=True, sample=100)
    assert dry.embedding["forecast_cost"] == pytest.approx(dry.embedding["forecast_tokens"] / 2e6)
    (done,) = command.upgrade(config, "r2")
    assert done.embedding["cost"] == pytest.approx(done.embedding["tokens"] / 2e6)
    with pytest.raises(EmbedderError, match="price_per_million_tokens must be a number"):
        Embedder("models/a", price_per_million_tokens=-1)
    # A price changes no vector: the same space, the same fingerprint.
    assert (
        load(priced, project, settings()).fingerprint
        == load(Embedder("models/near"), project, settings()).fingerprint
    )


def _tokens(server: EmbeddingServer, project: Path) -> list[list[int]]:
    """The served model's tokens of every corpus document (what a full backfill is billed)."""
    rows = [json.loads(line)["text"] for line in (project / "corpus.jsonl").open()]
    return token_ids(server._models["tiny"], rows)


def test_prune_bounds_the_embedding_cache(project: Path, server: EmbeddingServer) -> None:
    config = configure(project, FAST + "cache.max_mb = 0\n")
    command.revision(config, "api", alias="docs", new=remote(server), rev_id="r1")
    command.upgrade(config)
    cache = project / "embedding-cache"
    assert list(cache.glob("*.sqlite"))
    ran = embedmig(project, "prune", "docs")
    assert ran.returncode == 0 and "embedding cache: 1 embedder(s) removed" in ran.stdout
    assert not list(cache.glob("*.sqlite"))


def test_a_damaged_cache_file_is_one_line_naming_it_and_what_to_do(
    config: Config, project: Path
) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.upgrade(config)
    (cached,) = (project / "embedding-cache").glob("*.sqlite")
    data = bytearray(cached.read_bytes())
    half = len(data) // 2
    data[half:] = np.random.default_rng(0).bytes(len(data) - half)
    cached.write_bytes(bytes(data))  # its header and schema intact, the vectors' pages not
    shutil.rmtree(config.index_dir)
    (project / "embedmig.db").unlink()
    ran = embedmig(project, "upgrade")
    assert ran.returncode == 1 and len(ran.stderr.splitlines()) == 1, ran.stderr
    assert f"the embedding cache {cached} is damaged" in ran.stderr
    assert "delete that file (it is only a cache" in ran.stderr and "revision" not in ran.stderr
    cached.unlink()
    assert embedmig(project, "upgrade").returncode == 0


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """``folder`` made read-only, for root too (which file modes do not stop): immutable."""
    folder.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(folder)], check=False).returncode != 0:
            pytest.skip("chattr +i is not supported here")
    else:
        folder.chmod(0o555)
    try:
        yield
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def test_a_cache_folder_that_cannot_be_written_is_gone_without_with_a_warning(
    config: Config, project: Path
) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    with read_only(project / "embedding-cache"):
        ran = embedmig(project, "upgrade")
    assert ran.returncode == 0, ran.stderr
    assert "cannot be written" in ran.stderr and "going on without it" in ran.stderr
    assert command.current(config)[0].revision == "r1"


def records(config: Config) -> list[catalog.IndexRecord]:
    env = Environment(config)
    try:
        with env.engine.connect() as conn:
            return catalog.indexes(conn, "docs")
    finally:
        env.dispose()


def test_an_endpoint_model_to_a_local_one_and_back_through_the_cli(
    project: Path, server: EmbeddingServer
) -> None:
    configure(project, FAST)
    url = server.url
    steps = [
        ("revision", "-m", "api", "--alias", "docs", "--new", "tiny", "--backend", "openai",
         "--base-url", url, "--api-key-env", KEY_ENV, "--rev-id", "r1"),
        ("upgrade",),
        ("revision", "-m", "local", "--alias", "docs", "--new", "models/near", "--rev-id", "r2"),
        ("upgrade", "--dry-run"),
        ("upgrade",),
        ("search", "docs", "vitamin D"),
        ("downgrade", "-1"),
        ("search", "docs", "vitamin D"),
        ("upgrade",),
        ("revision", "-m", "back", "--alias", "docs", "--new", "tiny", "--backend", "openai",
         "--base-url", url, "--api-key-env", KEY_ENV, "--rev-id", "r3"),
        ("upgrade",),
        ("probe",),
        ("current",),
    ]  # fmt: skip
    for step in steps:
        ran = embedmig(project, *step)
        assert ran.returncode == 0, (step, ran.stderr)
    assert "docs: r3 (head); index #" in ran.stdout
    # Back on the endpoint's model: every document came from the cache of r1's backfill.
    report = command.report(Config(project / "embedmig.ini"), "r3")
    assert report.embedding["cached"] == 300 and report.embedding["requests"] == 0


# ---- refused inputs (each found by a probe; each failed before its fix) --------------------


def test_an_old_embedder_with_other_options_than_the_live_index_is_refused(config: Config) -> None:
    first_index(config, "aaa111")
    command.revision(config, "second", alias="docs", new="models/near", rev_id="bbb222")
    edit_revision(
        config,
        "bbb222",
        r"^old = Embedder\('models/a'\)",
        "old = Embedder('models/a', normalize=False)",
    )
    refused(config, StateError, "does not match")


def test_truncate_dim_beyond_the_model_is_refused(config: Config) -> None:
    first_index(config, "aaa111")
    command.revision(config, "second", alias="docs", new="models/near", rev_id="bbb222")
    edit_revision(
        config,
        "bbb222",
        r"^new = Embedder\('models/near'\)",
        "new = Embedder('models/near', truncate_dim=999)",
    )
    refused(config, EmbedderError, "truncate_dim=999 is larger")


def test_nan_vectors_from_the_model_are_refused(
    config: Config, project: Path, corpus_texts: list[str]
) -> None:
    from sentence_transformers import SentenceTransformer

    broken = build_static_model(project / "models" / "broken-src", corpus_texts, 32, seed=3)
    model = SentenceTransformer(str(broken), device="cpu")
    weights = cast(Any, model[0]).embedding.weight.data
    weights[5:50] = float("nan")
    model.save(str(project / "models" / "nan"))
    command.revision(config, "first", alias="docs", new="models/nan", rev_id="aaa111")
    refused(config, EmbedderError, "NaN or inf")


def test_a_model_needing_remote_code_is_refused_unless_allowed(config: Config) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="aaa111")
    edit_revision(
        config,
        "aaa111",
        r"^new = Embedder\('models/a'\)",
        "new = Embedder('models/a', trust_remote_code=True)",
    )
    refused(config, EmbedderError, "trust_remote_code")
    allowed = Config(config.path, options={"allow_remote_code": "true"})
    command.upgrade(allowed)
    assert command.current(config)[0].revision == "aaa111"


@pytest.mark.parametrize("options", [{}, {"truncate_dim": 16}])
def test_every_vector_of_a_normalized_embedder_has_norm_one(
    models: dict[str, Path], options: dict[str, int]
) -> None:
    settings = EnvSettings.of(Config(None)).embedder
    embedder = load(Embedder(str(models["a"]), **options), Path("."), settings)  # type: ignore[arg-type]
    texts = [row["text"] for row in corpus_rows(100)]
    for vectors in (embedder.encode_documents(texts), embedder.encode_queries(texts)):
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_a_stored_vector_and_a_search_of_its_own_text_score_at_most_one(config: Config) -> None:
    first_index(config)
    with open_writer(config, "docs") as writer:
        writer.upsert("written", "Zebrafish fin regeneration depends on osteoblasts")
    stored = indexed(config, "docs")
    norms = np.linalg.norm(np.stack(list(stored.values())), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    for row in corpus_rows(20):
        (hit,) = command.search(config, "docs", row["text"], k=1)
        assert hit.score <= 1 + 1e-5
