"""Fixtures: tiny real sentence-transformers models, a real-text corpus, a fresh project."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from embedmig import Config, command

ROOT = Path(__file__).resolve().parents[1]
DEMO_DATA = ROOT / "demo" / "data"


def corpus_rows(n: int) -> list[dict[str, str]]:
    """The first ``n`` SciFact abstracts shipped with the demo (real text, not filler)."""
    rows = []
    with (DEMO_DATA / "corpus.jsonl").open() as fh:
        for line in fh:
            doc = json.loads(line)
            rows.append({"id": doc["_id"], "text": f"{doc['title']} {doc['text']}"})
            if len(rows) == n:
                break
    return rows


def build_static_model(
    path: Path, texts: list[str], dim: int, seed: int, base: Path | None = None, noise: float = 0.0
) -> Path:
    """A real StaticEmbedding sentence-transformers model over a word-level tokenizer.

    With ``base``, the weights are the base model's plus ``noise``: a nearby vector space, as when
    a model is fine-tuned or distilled; without it, an unrelated random space.
    """
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.models import StaticEmbedding
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(
        texts, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]"], vocab_size=4000)
    )
    rng = np.random.default_rng(seed)
    vocab = tokenizer.get_vocab_size()
    if base is not None:
        weights = (
            SentenceTransformer(str(base), device="cpu")[0].embedding.weight.detach().numpy().copy()
        )
        weights += noise * rng.standard_normal(weights.shape).astype(np.float32)
    else:
        weights = rng.standard_normal((vocab, dim)).astype(np.float32)
    model = SentenceTransformer(
        modules=[StaticEmbedding(tokenizer, embedding_weights=weights)], device="cpu"
    )
    model.save(str(path))
    return path


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


@pytest.fixture
def project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, models: dict[str, Path]
) -> Iterator[Path]:
    """A fresh project folder with an environment and a 300-document JSONL corpus."""
    monkeypatch.chdir(tmp_path)
    command.init("migrations")
    with (tmp_path / "corpus.jsonl").open("w") as fh:
        for row in corpus_rows(300):
            fh.write(json.dumps(row) + "\n")
    for name, path in models.items():
        (tmp_path / "models").mkdir(exist_ok=True)
        (tmp_path / "models" / name).symlink_to(path)
    yield tmp_path


@pytest.fixture
def config(project: Path) -> Config:
    return Config(project / "embedmig.ini")


def with_judged_queries(project: Path, n: int, words: int | None = None) -> Config:
    """Queries made from the first ``n`` documents (their first ``words`` words), each judged
    relevant to its document, configured in the project's embedmig.ini."""
    rows = corpus_rows(n)
    with (project / "queries.jsonl").open("w") as fh:
        for i, row in enumerate(rows):
            text = " ".join(row["text"].split()[:words]) if words else row["text"]
            fh.write(json.dumps({"_id": f"q{i}", "text": text}) + "\n")
    with (project / "qrels.tsv").open("w") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        fh.writelines(f"q{i}\t{row['id']}\t1\n" for i, row in enumerate(rows))
    ini = project / "embedmig.ini"
    text = ini.read_text().replace("# queries = queries.jsonl", "queries = queries.jsonl")
    ini.write_text(text.replace("# qrels = qrels.tsv", "qrels = qrels.tsv"))
    return Config(ini)


POSTGRES_ADMIN_URL = os.environ.get("EMBEDMIG_TEST_POSTGRES")


@pytest.fixture
def postgres_config(project: Path) -> Iterator[Config]:
    """The project with its history on a fresh database of a real PostgreSQL server.

    EMBEDMIG_TEST_POSTGRES is an admin URL (.ci/run starts a server and sets it). Without one the
    tests skip, with the reason -- except under CI, where a missing server is a failure.
    """
    import uuid

    import sqlalchemy as sa

    if not POSTGRES_ADMIN_URL:
        if os.environ.get("CI"):
            pytest.fail("CI must provide a PostgreSQL server (EMBEDMIG_TEST_POSTGRES)")
        pytest.skip("no PostgreSQL server: set EMBEDMIG_TEST_POSTGRES to an admin URL")
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"embedmig_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL at {POSTGRES_ADMIN_URL} is not reachable: {exc.orig}")
    url = sa.make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    ini = project / "embedmig.ini"
    ini.write_text(ini.read_text().replace("sqlite:///embedmig.db", url))
    yield Config(ini)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def snapshot(config: Config, *, with_history: bool = True) -> dict[str, object]:
    """Every durable thing embedmig owns: its tables' rows and the index folder's files."""
    import hashlib

    import sqlalchemy as sa

    from embedmig.history import schema

    # A database not created yet holds the same as one with empty tables.
    state: dict[str, object] = {
        t.name: [] for t in schema.metadata.sorted_tables if with_history or t is not schema.history
    }
    url = config.url
    if not url.startswith("sqlite:///") or Path(url.removeprefix("sqlite:///")).exists():
        engine = sa.create_engine(config.url)
        with engine.connect() as conn:
            for table in schema.metadata.sorted_tables:
                if table is schema.history and not with_history:
                    continue
                state[table.name] = sorted(map(tuple, conn.execute(sa.select(table))), key=repr)
        engine.dispose()
    index_dir = config.index_dir
    if index_dir.exists() and any(p.is_file() for p in index_dir.rglob("*")):
        state["files"] = {
            str(p.relative_to(index_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(index_dir.rglob("*"))
            if p.is_file()
        }
    state["versions"] = sorted(p.name for p in (config.script_location / "versions").iterdir())
    return state


def index_file(config: Config, record: object) -> Path:
    """Where an index's file is (its recorded path is relative to the index folder)."""
    from embedmig.runtime.environment import Environment
    from embedmig.store.catalog import IndexRecord

    assert isinstance(record, IndexRecord)
    return Environment(config).file_of(record)


def indexed(config: Config, alias: str) -> dict[str, np.ndarray]:
    """key -> vector of every document a reader of ``alias`` sees now (file plus journal tail)."""
    from embedmig import open_searcher
    from embedmig.store import catalog

    searcher = open_searcher(config, alias)
    try:
        ids, vectors = searcher.view.overlay.contents()
        with searcher.env.engine.connect() as conn:
            keys = catalog.describe_ids(conn, alias, ids)
    finally:
        searcher.close()
    return {keys[int(i)].key: vector for i, vector in zip(ids, vectors, strict=True)}


def encode(model: Path, texts: list[str]) -> np.ndarray:
    """A fresh encoding of ``texts`` as embedmig's document path does it (normalized)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model), device="cpu").encode(
        texts, normalize_embeddings=True, convert_to_numpy=True
    )
