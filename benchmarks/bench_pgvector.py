"""The pgvector store against the FAISS store: the same corpus, model and machine, in one run.

Two projects with their history on the same PostgreSQL server (one database each): one keeps its
index in a FAISS file (`HNSW32`), the other in a pgvector table (`hnsw`, m 16, ef_construction
64). The static model, so the stores are what differ. Measures:
- the first upgrade of each, alternated (cache off, so both embed): the backfill's time (embed
  and write every row; target: pgvector's throughput >= 0.7x FAISS's) and the index build's
  (target <= 3x FAISS HNSW32); the store alone too: COPY of the vectors into a table against the
  FAISS spool plus a Flat index;
- `Searcher.search(q, 10)` p50 of each, interleaved query by query, with recall@10 against exact
  search of the same vectors (target: pgvector p50 <= 2x FAISS HNSW at recall >= 0.95);
- a swap and a rollback while 8 SQL readers run the documented query (README) in a loop: reader
  errors (target 0) and the slowest reader query during them against the readers' p50 (target:
  blocked <= 100 ms).

    python benchmarks/bench_pgvector.py [--docs 100000] [--rounds 2]
        [--pgvector-index hnsw,m=16,ef_construction=64,ef_search=64]

The server: EMBEDMIG_TEST_POSTGRES (an admin URL), else one started for the run
(tests/postgres_server.py) with shared_buffers at 1 GB. Results: benchmarks/README.md, "Indexes in PostgreSQL".
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_floor import SCIFACT, corpus  # noqa: E402

from demo.models import distilled  # noqa: E402

K = 10


def server_url(work: Path) -> str:
    """EMBEDMIG_TEST_POSTGRES, else a server of the run's own with shared_buffers at 1 GB, so a
    100k index and its table fit in PostgreSQL's cache, as pgvector advises for serving."""
    url = os.environ.get("EMBEDMIG_TEST_POSTGRES")
    if url:
        return url
    import sqlalchemy as sa

    from tests.postgres_server import start

    server, url = start(work / "pg", "stop")
    with sa.create_engine(url, isolation_level="AUTOCOMMIT").connect() as conn:
        conn.exec_driver_sql("ALTER SYSTEM SET shared_buffers = '1GB'")
    server.cleanup()
    _, url = start(work / "pg", "delete")
    return url


def database(admin: str) -> str:
    import sqlalchemy as sa

    name = f"embedmig_bench_{uuid.uuid4().hex[:8]}"
    with sa.create_engine(admin, isolation_level="AUTOCOMMIT").connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(admin).set(database=name).render_as_string(hide_password=False)
    with sa.create_engine(url).begin() as conn:
        conn.exec_driver_sql("CREATE EXTENSION vector")
    return url


def project(work: Path, admin: str, store: str, model: str, args: argparse.Namespace) -> Any:
    from embedmig import Config, command

    work.mkdir(parents=True)
    command.init(work / "migrations", work / "embedmig.ini")
    ini = work / "embedmig.ini"
    text = ini.read_text().replace("corpus = corpus.jsonl", f"corpus = {args.corpus}")
    text = re.sub(r"(?m)^sqlalchemy\.url = .*$", f"sqlalchemy.url = {database(admin)}", text)
    options = {"cache": "false", "checkpoint_every": "8192", "eval.sample": "200"}
    for key, value in options.items():
        text = re.sub(rf"(?m)^{re.escape(key)} = .*\n", "", text) + f"{key} = {value}\n"
    ini.write_text(text)
    config = Config(ini)
    for rev in ("r1", "r2"):
        made = command.revision(
            config,
            rev,
            alias="docs",
            new=model,
            rev_id=rev,
            index_factory="HNSW32",
            index_store=store,
            pgvector_index=args.pgvector_index,
        )
        path = Path(str(made.path))  # r2 swaps whatever it measures: no gates
        path.write_text(path.read_text().replace("gates = Gates(", "gates = Gates() or Gates("))
    return config


def first_upgrade(config: Any) -> dict[str, float]:
    from embedmig import command

    command.upgrade(config, "r1")
    report = command.report(config, "r1")
    return dict(report.timings)


def store_alone(dim: int, vectors: np.ndarray, admin: str, work: Path) -> dict[str, float]:
    """COPY into a table (batches of 8,192, one transaction each) against the FAISS spool's
    appends plus its Flat index: the stores' own write paths, no model."""
    import sqlalchemy as sa

    from embedmig.store import files, pgtables

    engine = sa.create_engine(database(admin))
    ids = np.arange(1, len(vectors) + 1, dtype=np.int64)
    keys = [str(i) for i in ids]
    times: dict[str, list[float]] = {"faiss": [], "pgvector": []}
    for turn in range(3):
        for variant in ("faiss", "pgvector") if turn % 2 == 0 else ("pgvector", "faiss"):
            began = time.perf_counter()
            if variant == "faiss":
                spool = files.Spool(work / f"spool-{turn}", dim)
                for start in range(0, len(ids), 8192):
                    spool.append(ids[start : start + 8192], vectors[start : start + 8192])
                files.save(spool.build("Flat"), work / f"flat-{turn}.faiss")
                spool.remove()
            else:
                table = pgtables.Table(turn + 1, dim, pgtables.Spec.parse("exact"))
                with engine.begin() as conn:
                    pgtables.create(conn, table)
                for start in range(0, len(ids), 8192):
                    with engine.begin() as conn:
                        pgtables.put(
                            conn,
                            table,
                            ids[start : start + 8192],
                            keys[start : start + 8192],
                            vectors[start : start + 8192],
                        )
            times[variant].append(time.perf_counter() - began)
    engine.dispose()
    return {variant: statistics.median(t) for variant, t in times.items()}


def searches(configs: dict[str, Any], queries: list[str]) -> dict[str, Any]:
    import faiss

    from embedmig import open_searcher

    searchers = {name: open_searcher(config, "docs") for name, config in configs.items()}
    # Exact neighbours of each query, from the same vectors (the model is the same).
    ids, vectors = searchers["faiss"].view.contents()
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    embedder = searchers["faiss"].view.embedder
    _, rows = exact.search(embedder.encode_queries(queries), K)
    truth = [set(ids[r].tolist()) for r in rows]
    keys: dict[int, str] = {}
    from embedmig.store import docids

    with searchers["faiss"].env.engine.connect() as conn:
        keys = {i: d.key for i, d in docids.describe_ids(conn, "docs", ids.tolist()).items()}
    wanted = [{keys[i] for i in row} for row in truth]
    for text in queries[:50]:
        for searcher in searchers.values():
            searcher.search(text, K)
    times: dict[str, list[int]] = {name: [] for name in searchers}
    recall: dict[str, list[float]] = {name: [] for name in searchers}
    for n, text in enumerate(queries):
        names = list(searchers) if n % 2 == 0 else list(reversed(searchers))
        for name in names:
            t0 = time.perf_counter_ns()
            hits = searchers[name].search(text, K)
            times[name].append(time.perf_counter_ns() - t0)
            recall[name].append(len({h.key for h in hits} & wanted[n]) / K)
    for searcher in searchers.values():
        searcher.close()
    return {
        name: {
            "p50_ms": float(np.percentile(np.asarray(t) / 1e6, 50)),
            "p99_ms": float(np.percentile(np.asarray(t) / 1e6, 99)),
            "recall_at_10": float(np.mean(recall[name])),
        }
        for name, t in times.items()
    }


def swap_under_readers(config: Any, model: str, queries: list[str]) -> dict[str, Any]:
    """8 SQL readers, each running the documented query (README) every 5 ms, while r2 is built
    and swapped in, then rolled back. Blocked: the slowest reader query that started within a
    second before a swap's commit (the first answer from the other revision) or after it."""
    from sentence_transformers import SentenceTransformer

    from embedmig import command
    from tests.postgres_server import connect

    encoder = SentenceTransformer(model, local_files_only=True)
    vectors = encoder.encode(queries[:64], normalize_embeddings=True)
    literals = ["[" + ",".join(map(str, v.tolist())) + "]" for v in vectors]
    stop = threading.Event()
    seen: list[list[tuple[float, float, str]]] = [[] for _ in range(8)]  # start, seconds, revision
    errors: list[str] = []
    refetched = [0]
    mixed = [0]  # answers whose rows came from two revisions (a half-swapped alias)
    learn = "SELECT fingerprint FROM search.docs LIMIT 1"

    def reader(n: int) -> None:
        conn = connect(config.url)
        row = conn.execute(learn).fetchone()
        fingerprint = row[0] if row else ""
        i = n
        while not stop.wait(0.005):
            began = time.perf_counter()
            revision = ""
            try:
                rows = conn.execute(
                    "SELECT key, revision FROM search.docs WHERE fingerprint = %s "
                    "ORDER BY embedding <#> %s::vector LIMIT 10",
                    (fingerprint, literals[i % len(literals)]),
                ).fetchall()
                if rows:
                    revision = rows[0][1]
                    mixed[0] += len({r[1] for r in rows}) > 1
                else:  # the alias moved on: learn its fingerprint, ask again next time
                    refetched[0] += 1
                    row = conn.execute(learn).fetchone()
                    fingerprint = row[0] if row else ""
            except Exception as exc:  # every reader error counts
                errors.append(f"{type(exc).__name__}: {exc}")
            seen[n].append((began, time.perf_counter() - began, revision))
            i += 1
        conn.close()

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(2)
    command.upgrade(config, "r2")
    time.sleep(1)
    command.downgrade(config, "-1")
    time.sleep(1)
    stop.set()
    for thread in threads:
        thread.join()
    answers = sorted(entry for run in seen for entry in run)
    swaps = [
        later[0]
        for earlier, later in itertools.pairwise(answers)
        if earlier[2] and later[2] and earlier[2] != later[2]
    ]
    # The first answer from the other revision after each change, and what started around it.
    commits = [t for i, t in enumerate(swaps) if i == 0 or t - swaps[i - 1] > 1.0]
    around = [d for start, d, _ in answers for c in commits if c - 1.0 <= start <= c + 0.2]
    calm = [d for start, d, _ in answers if start < answers[0][0] + 2.0]
    return {
        "reader_queries": len(answers),
        "reader_errors": len(errors),
        "first_errors": errors[:3],
        "answers_mixing_revisions": mixed[0],
        "refetched_fingerprint": refetched[0],
        "swaps_seen": len(commits),
        "p50_calm_ms": statistics.median(calm) * 1000,
        "max_calm_ms": max(calm) * 1000,
        "max_around_swaps_ms": max(around) * 1000 if around else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pgvector-index", default="hnsw,m=16,ef_construction=64,ef_search=64")
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    work = Path(tempfile.mkdtemp(prefix="bench-pgvector-"))
    args.corpus = work / "corpus.jsonl"
    corpus(args.corpus, args.docs)
    model = str(distilled(Path(tempfile.gettempdir()) / "embedmig-bench" / "static-256"))
    admin = server_url(work)
    queries = [json.loads(line)["text"] for line in (SCIFACT / "queries.jsonl").open()]

    builds: dict[str, list[dict[str, float]]] = {"faiss": [], "pgvector": []}
    configs: dict[str, Any] = {}
    for turn in range(args.rounds):
        for store in ("faiss", "pgvector") if turn % 2 == 0 else ("pgvector", "faiss"):
            config = project(work / f"{store}-{turn}", admin, store, model, args)
            builds[store].append(first_upgrade(config))
            configs[store] = config
    timing = {
        store: {
            part: statistics.median(run[part] for run in runs) for part in ("backfill_s", "build_s")
        }
        for store, runs in builds.items()
    }
    print(json.dumps({"upgrade": timing}, indent=1), flush=True)
    from embedmig import open_searcher

    with open_searcher(configs["faiss"], "docs") as searcher:
        _, vectors = searcher.view.contents()
    alone = store_alone(vectors.shape[1], vectors, admin, work)
    print(json.dumps({"store_alone_s": alone}, indent=1), flush=True)
    found = searches(configs, queries)
    print(json.dumps({"search": found}, indent=1), flush=True)
    swap = swap_under_readers(configs["pgvector"], model, queries)
    print(json.dumps({"swap_with_8_readers": swap}, indent=1), flush=True)
    docs = args.docs
    print(
        json.dumps(
            {
                "loading_throughput_ratio": timing["faiss"]["backfill_s"]
                / timing["pgvector"]["backfill_s"],
                "loading_docs_per_s": {s: docs / t["backfill_s"] for s, t in timing.items()},
                "store_alone_ratio": alone["faiss"] / alone["pgvector"],
                "build_ratio": timing["pgvector"]["build_s"] / timing["faiss"]["build_s"],
                "search_p50_ratio": found["pgvector"]["p50_ms"] / found["faiss"]["p50_ms"],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
