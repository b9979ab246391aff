"""Helpers of the specs: real-text corpora, tiny real models, snapshots of everything embedmig owns."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from demo.models import static_embedding_class
from embedmig import Config
from embedmig.serve.searcher import Searcher

ROOT = Path(__file__).resolve().parents[1]
DEMO_DATA = ROOT / "demo" / "data"


def postgres_admin_url() -> str | None:
    """The admin URL of the specs' PostgreSQL server: .ci/run's, or the one the session started
    (tests/conftest.py), or none."""
    return os.environ.get("EMBEDMIG_TEST_POSTGRES")


CLI = (sys.executable, "-c", "from embedmig.cli import main; raise SystemExit(main())")
CRASH_RUNNER = Path(__file__).with_name("crash_runner.py")
FEW_RESAMPLES = "eval.forecast_resamples = 20\n"


@dataclass(frozen=True)
class Ran:
    """What a run of the ``embedmig`` command gave: its exit code and what it printed."""

    returncode: int
    stdout: str
    stderr: str


def embedmig(project: Path, *args: str) -> Ran:
    """``embedmig ARGS`` in ``project``, run by this process through the CLI's one entry point
    (``main``: the same parsing, error boundary, exit codes and output as the console script)."""
    from embedmig.cli import main

    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(project)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        os.chdir(cwd)
    return Ran(code, out.getvalue(), err.getvalue())


def embedmig_process(project: Path, *args: str) -> Ran:
    """``embedmig ARGS`` as a process of its own, in ``project``: for the specs about processes."""
    done = subprocess.run(
        [*CLI, *args], cwd=project, capture_output=True, text=True, timeout=600, check=False
    )
    return Ran(done.returncode, done.stdout, done.stderr)


def new_project(folder: Path, models: dict[str, Path]) -> Path:
    """A project in ``folder``: an environment, a 300-document JSONL corpus, the test models."""
    from embedmig import command

    folder.mkdir(parents=True, exist_ok=True)
    command.init(folder / "migrations", folder / "embedmig.ini")
    with (folder / "corpus.jsonl").open("w") as fh:
        for row in corpus_rows(300):
            fh.write(json.dumps(row) + "\n")
    (folder / "models").mkdir()
    for name, path in models.items():
        (folder / "models" / name).symlink_to(path)
    return folder


def copy_project(built: Path, folder: Path) -> Path:
    """A copy of a project a session fixture built once: its history database, index files and
    revisions (paths in a project are relative, and the models stay links)."""
    shutil.copytree(built, folder, symlinks=True, dirs_exist_ok=True)
    return folder


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

    static_embedding = static_embedding_class()
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
            cast(Any, SentenceTransformer(str(base), device="cpu"))[0]
            .embedding.weight.detach()
            .numpy()
            .copy()
        )
        weights += noise * rng.standard_normal(weights.shape).astype(np.float32)
    else:
        weights = rng.standard_normal((vocab, dim)).astype(np.float32)
    model = SentenceTransformer(
        modules=[static_embedding(tokenizer, embedding_weights=weights)], device="cpu"
    )
    model.save(str(path))
    return path


def shared_models(tmp_path_factory: Any) -> Path:
    """Where the real models a spec builds (the distilled static one) are kept: the folder
    ``make test`` shares between its two lanes (EMBEDMIG_TEST_MODELS), else this session's."""
    shared = os.environ.get("EMBEDMIG_TEST_MODELS")
    return Path(shared) if shared else tmp_path_factory.getbasetemp() / "models"


def edit(path: Path, old: str, new: str) -> None:
    """Replace ``old`` with ``new`` in the file at ``path`` (a revision script, a config); fails
    the spec when ``old`` is not there, rather than running it on an unedited file."""
    text = path.read_text()
    assert old in text, f"{old!r} is not in {path}"
    path.write_text(text.replace(old, new))


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


def snapshot(config: Config, *, with_history: bool = True) -> dict[str, object]:
    """Every durable thing embedmig owns: its tables' rows and the index folder's files."""
    import hashlib

    import sqlalchemy as sa

    from embedmig.history import schema

    # Searchers' heartbeats are not part of it: an open searcher writes them on its own clock,
    # whatever a command does meanwhile (tests/test_readers.py checks them).
    tables = [
        t
        for t in schema.metadata.sorted_tables
        if t is not schema.reader and (with_history or t is not schema.history)
    ]
    # A database not created yet holds the same as one with empty tables.
    state: dict[str, object] = {t.name: [] for t in tables}
    url = config.url
    if not url.startswith("sqlite:///") or Path(url.removeprefix("sqlite:///")).exists():
        engine = sa.create_engine(config.url)
        with engine.connect() as conn:
            present = set(sa.inspect(conn).get_table_names())
            for table in tables:
                if table.name in present:
                    rows = conn.execute(sa.select(table))
                    state[table.name] = sorted(map(tuple, rows), key=repr)
            if conn.dialect.name == "postgresql":
                state["pgvector"] = _pgvector_state(conn)
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


def _pgvector_state(conn: Any) -> dict[str, object]:
    """The pgvector store's tables (their rows) and views (their definitions)."""
    state: dict[str, object] = {}
    for (name,) in conn.exec_driver_sql(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'embedmig' ORDER BY 1"
    ):
        rows = conn.exec_driver_sql(f'SELECT id, key, embedding::text FROM embedmig."{name}"')
        state[name] = sorted(map(tuple, rows))
    for schema, name, definition in conn.exec_driver_sql(
        "SELECT schemaname, viewname, definition FROM pg_views "
        "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
    ):
        state[f"{schema}.{name}"] = definition
    return state


def index_file(config: Config, record: object) -> Path:
    """Where an index's file is (its recorded path is relative to the index folder)."""
    from embedmig.environment import Environment
    from embedmig.store.catalog import IndexRecord

    assert isinstance(record, IndexRecord)
    return Environment(config).file_of(record)


def indexed(config: Config, alias: str) -> dict[str, np.ndarray]:
    """key -> vector of every document a reader of ``alias`` sees now (file plus journal tail)."""
    from embedmig import open_searcher
    from embedmig.store import docids

    searcher = open_searcher(config, alias)
    try:
        ids, vectors = searcher.view.contents()
        with searcher.env.engine.connect() as conn:
            keys = docids.describe_ids(conn, alias, ids)
    finally:
        searcher.close()
    return {keys[int(i)].key: vector for i, vector in zip(ids, vectors, strict=True)}


def encode(model: Path, texts: list[str]) -> np.ndarray:
    """A fresh encoding of ``texts`` as embedmig's document path does it (normalized)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model), device="cpu").encode(
        texts, normalize_embeddings=True, convert_to_numpy=True
    )


# A corpus that fails after the number of documents in the project's `die-after` file, as a lost
# database connection would: the backfill stops there and a later run resumes.
FLAKY_ENV = """
from pathlib import Path
from embedmig import SourceError, sources

def corpus(config, alias):
    stop = Path(config.root, "die-after")
    limit = int(stop.read_text()) if stop.exists() else None
    for n, doc in enumerate(sources.corpus_from_config(config)):
        if limit is not None and n == limit:
            raise SourceError(f"corpus connection lost after {n} documents")
        yield doc
"""


def assert_serves(config: Config, model: Path, expected: dict[str, str]) -> None:
    """Alias `docs` serves exactly ``expected``'s keys, each as a fresh encoding of its text and
    with its text's start as the snippet searchers show."""
    from embedmig.environment import Environment
    from embedmig.store import docids

    seen = indexed(config, "docs")
    assert sorted(seen) == sorted(expected)
    keys = sorted(expected)
    fresh = encode(model, [expected[k] for k in keys])
    np.testing.assert_allclose(np.stack([seen[k] for k in keys]), fresh, atol=1e-5)
    env = Environment(config)
    with env.engine.connect() as conn:
        ids = docids.lookup_ids(conn, "docs", keys)
        described = docids.describe_ids(conn, "docs", ids.values())
    env.dispose()
    snippets = {doc.key: doc.snippet for doc in described.values()}
    wrong = [k for k in keys if snippets[k] != expected[k][: docids.SNIPPET_CHARS]]
    assert not wrong, f"{len(wrong)} snippets differ, e.g. {wrong[:3]}"


def count_encodes(monkeypatch: Any) -> list[int]:
    """The sizes of every later ``encode_documents`` call (the model still encodes)."""
    from embedmig.embedders import LoadedEmbedder

    encoded: list[int] = []
    real = LoadedEmbedder.encode_documents

    def counting(self: LoadedEmbedder, texts: list[str]) -> np.ndarray:
        encoded.append(len(texts))
        return real(self, texts)

    monkeypatch.setattr(LoadedEmbedder, "encode_documents", counting)
    return encoded


class CrashRunner:
    """The fork server of tests/crash_runner.py: one interpreter start-up for every crash."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(CRASH_RUNNER), "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}

    def run(
        self,
        project: Path,
        point: str,
        args: tuple[str, ...],
        env: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        request = {"cwd": str(project), "point": point, "args": list(args), "env": env or {}}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return answer

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


# A new model that has nothing to do with any other: a seeded random unit vector per text (no map
# can carry it into another model's space). Written into a project as random_vectors.py.
RANDOM_ENCODER = """
import hashlib
import numpy as np

class Random:
    dimension = 32
    def encode_documents(self, texts):
        seeds = [int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little") for t in texts]
        return np.stack([np.random.default_rng(s).standard_normal(32) for s in seeds])
    encode_queries = encode_documents
    def fingerprint(self):
        return "random-vectors-v1"

def make():
    return Random()
"""


def random_model(project: Path) -> Any:
    """An Embedder of random vectors (``RANDOM_ENCODER``), importable from ``project``."""
    from embedmig import Embedder

    (project / "random_vectors.py").write_text(RANDOM_ENCODER)
    return Embedder("random_vectors:make", backend="python")


def first_index(config: Config, rev_id: str = "r1") -> None:
    """Alias ``docs``'s first revision on model ``a``, upgraded: a live index to refuse against."""
    from embedmig import command

    command.revision(config, "first", alias="docs", new="models/a", rev_id=rev_id)
    command.upgrade(config, rev_id)


def edit_revision(config: Config, rev_id: str, pattern: str, replacement: str) -> None:
    """``re.sub`` on revision ``rev_id``'s script (line by line); fails when nothing matched."""
    path = next((config.script_location / "versions").glob(f"{rev_id}_*.py"))
    text, count = re.subn(pattern, replacement, path.read_text(), flags=re.M)
    assert count, f"{pattern!r} matches nothing in {path}"
    path.write_text(text)


def refused(config: Config, error: type[Exception], match: str, target: str = "head") -> None:
    """``upgrade(target)`` raises ``error`` and leaves every table and index file as it was."""
    import pytest

    from embedmig import command

    before = snapshot(config)
    with pytest.raises(error, match=match):
        command.upgrade(config, target)
    assert snapshot(config) == before


def cli(capsys: Any, *args: str) -> tuple[int, str, str]:
    """``embedmig ARGS`` through ``main`` in this process: exit code, stdout, stderr."""
    from embedmig.cli import main

    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(config: Config, *args: str, match: str, code: int | None = None) -> None:
    """``embedmig -q ARGS`` fails (with exit code ``code``, if given) in one ``embedmig: error:``
    line naming ``match``, and leaves every table and index file as it was."""
    before = snapshot(config)
    done = embedmig(config.root, "-q", *args)
    assert done.returncode != 0 if code is None else done.returncode == code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("embedmig: error: ") and match in lines[0], lines[0]
    assert snapshot(config) == before


def with_options(config: Config, **options: object) -> Config:
    """The project's configuration with ``options`` (``a__b`` for ``a.b``) set in its ini file."""
    ini = config.root / "embedmig.ini"
    lines = ini.read_text().splitlines(True)
    for key, value in options.items():
        name = key.replace("__", ".")
        lines = [line for line in lines if not line.startswith(f"{name} =")]
        lines.append(f"{name} = {value}\n")
    ini.write_text("".join(lines))
    return Config(ini)


def seen(searcher: Searcher, condition: Callable[[], bool], what: str) -> None:
    """``condition`` (on the searcher's answers) holds at once when it reads its alias's clock on
    every search (``searcher.refresh_ms = 0``), else within its staleness bound: the refresh,
    plus following what changed (a new file and model, on a loaded machine)."""
    if searcher.refresh_seconds == 0:
        assert condition(), what
    else:
        wait_until(condition, what, timeout=searcher.refresh_seconds + 10)


def wait_until(
    condition: Callable[[], bool],
    what: str,
    timeout: float = 120.0,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` past ``timeout`` seconds, or as
    soon as ``alive`` (the process being waited on) says it is gone."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert alive is None or alive(), f"{what}: the process waited on ended first"
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(0.02)
