"""A searcher against the floor: the same work on the same index file by hand.

The floor of a single query is `model.encode([q])` plus `index.search(v, 10)` on one FAISS
thread; of a batch, `model.encode(batch)` plus one `index.search` on FAISS's threads. Both read
the file embedmig built and serve queries from SciFact's claims. A corpus larger than SciFact's
5,183 abstracts is filled up with their sentences, alone and two or three in a row.

Measures, in one process, variants interleaved query by query (A, B, B, A, ...):
- `Searcher.search(q, 10)` p50 / p99 against the floor's (target p50 <= 1.2x, static model);
- SQL statements per search, the refresher's included (target <= 0.05);
- `Searcher.search_many` of 256 queries against the batch floor, as throughput (target >= 0.9x);
- queries per second of 8 threads sharing one searcher against one thread;
- from a swap's (then a rollback's) commit until 4 open searchers all serve it.

    python benchmarks/bench_floor.py [--model static|minilm] [--docs 5183] [--factory Flat]
        [--rounds 3] [--history sqlite|postgres]

`--history postgres` keeps the history on a fresh database of the server EMBEDMIG_TEST_POSTGRES
names (an admin URL). Results: benchmarks/README.md, "Readers at the floor".
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from demo.models import distilled, minilm  # noqa: E402

SCIFACT = ROOT.parent / "shared" / "data" / "scifact"
K = 10
BATCH = 256


def corpus(path: Path, docs: int) -> None:
    """SciFact's abstracts, then their sentences (one, two, three in a row), until ``docs``."""
    rows = [json.loads(line) for line in (SCIFACT / "corpus.jsonl").open()]
    written = 0
    with path.open("w") as out:
        for row in rows:
            if written == docs:
                return
            out.write(json.dumps({"id": row["_id"], "text": f"{row['title']} {row['text']}"}))
            out.write("\n")
            written += 1
        for width in (1, 2, 3):  # sentences, then pairs and triples of consecutive ones
            for row in rows:
                sentences = re.split(r"(?<=[.!?])\s+", row["text"])
                for n in range(len(sentences) - width + 1):
                    if written == docs:
                        return
                    text = " ".join(sentences[n : n + width])
                    if len(text) > 20:
                        key = f"{row['_id']}-{width}s{n}"
                        out.write(json.dumps({"id": key, "text": text}) + "\n")
                        written += 1
    raise SystemExit(f"SciFact yields {written} documents, fewer than {docs}")


def project(work: Path, args: argparse.Namespace, model: str) -> Any:
    from embedmig import Config, command

    command.init(work / "migrations", work / "embedmig.ini")
    corpus(work / "corpus.jsonl", args.docs)
    ini = work / "embedmig.ini"
    text = ini.read_text().replace("corpus = corpus.jsonl", f"corpus = {work / 'corpus.jsonl'}")
    if args.history == "postgres":
        import sqlalchemy as sa

        admin = os.environ["EMBEDMIG_TEST_POSTGRES"]
        name = f"embedmig_bench_{uuid.uuid4().hex[:8]}"
        with sa.create_engine(admin, isolation_level="AUTOCOMMIT").connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        url = sa.make_url(admin).set(database=name).render_as_string(hide_password=False)
        text = re.sub(r"(?m)^sqlalchemy\.url = .*$", f"sqlalchemy.url = {url}", text)
    ini.write_text(text)
    config = Config(ini)
    for rev in ("r1", "r2"):
        made = command.revision(
            config, rev, alias="docs", new=model, rev_id=rev, index_factory=args.factory
        )
        path = Path(str(made.path))  # r2 swaps whatever it measures: no gates
        path.write_text(path.read_text().replace("gates = Gates(", "gates = Gates() or Gates("))
    started = time.perf_counter()
    command.upgrade(config, "r1")
    print(f"built r1: {args.docs} documents in {time.perf_counter() - started:.1f} s", flush=True)
    command.upgrade(config, "r2")  # the same model again: from the cache, a swap to measure
    command.downgrade(config, "-1")
    return config


def quantiles(ns: list[int]) -> tuple[float, float]:
    ms = np.asarray(ns) / 1e6
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["static", "minilm"], default="static")
    parser.add_argument("--docs", type=int, default=5183)
    parser.add_argument("--factory", default="Flat")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--history", choices=["sqlite", "postgres"], default="sqlite")
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    import faiss
    import sqlalchemy as sa
    from sentence_transformers import SentenceTransformer

    from embedmig import command, open_searcher
    from embedmig.store import files

    work = Path(tempfile.mkdtemp(prefix="bench-floor-"))
    model = str(minilm() if args.model == "minilm" else distilled(work / "static-256"))
    config = project(work, args, model)
    queries = [json.loads(line)["text"] for line in (SCIFACT / "queries.jsonl").open()]

    searcher = open_searcher(config, "docs")
    record = searcher.index_record
    index = faiss.read_index(str(searcher.env.file_of(record)))
    floor_model = SentenceTransformer(model, local_files_only=True)
    statements = [0]
    sa.event.listen(
        searcher.env.engine,
        "before_cursor_execute",
        lambda *_: statements.__setitem__(0, statements[0] + 1),
    )

    def floor(text: str) -> Any:
        vector = floor_model.encode([text], normalize_embeddings=True)
        with files.faiss_threads(1):
            return index.search(vector, K)

    for text in queries[:50]:  # warm both
        floor(text)
        searcher.search(text, K)
    times: dict[str, list[int]] = {"floor": [], "embedmig": []}
    counted = statements[0]
    started = time.perf_counter()
    for turn in range(args.rounds):
        for n, text in enumerate(queries):
            order = ("floor", "embedmig") if (n + turn) % 2 == 0 else ("embedmig", "floor")
            for variant in order:
                t0 = time.perf_counter_ns()
                floor(text) if variant == "floor" else searcher.search(text, K)
                times[variant].append(time.perf_counter_ns() - t0)
    served = len(times["embedmig"])
    per_search = (statements[0] - counted) / served
    elapsed = time.perf_counter() - started
    (f50, f99), (e50, e99) = quantiles(times["floor"]), quantiles(times["embedmig"])

    batches = [queries[i : i + BATCH] for i in range(0, len(queries) - BATCH + 1, BATCH)]
    batch_times: dict[str, list[float]] = {"floor": [], "embedmig": []}
    for turn in range(args.rounds):
        for n, batch in enumerate(batches):
            order = ("floor", "embedmig") if (n + turn) % 2 == 0 else ("embedmig", "floor")
            for variant in order:
                began = time.perf_counter()
                if variant == "floor":
                    vectors = floor_model.encode(batch, batch_size=32, normalize_embeddings=True)
                    index.search(vectors, K)
                else:
                    searcher.search_many(batch, K)
                batch_times[variant].append(time.perf_counter() - began)
    batch_ratio = statistics.median(batch_times["floor"]) / statistics.median(
        batch_times["embedmig"]
    )

    def qps(threads: int, answer: Any) -> float:
        todo = queries[:600]
        began = time.perf_counter()
        if threads == 1:
            for text in todo:
                answer(text)
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(answer, todo))
        return len(todo) / (time.perf_counter() - began)

    def answered(text: str) -> Any:
        return searcher.search(text, K)

    runs = [
        [qps(1, answered), qps(8, answered), qps(1, floor), qps(8, floor)]
        for _ in range(args.rounds)
    ]
    one, eight, floor_one, floor_eight = (statistics.median(r[i] for r in runs) for i in range(4))

    readers = [open_searcher(config, "docs") for _ in range(4)]
    for reader in readers:
        reader.search(queries[0], K)
    converged: list[float] = []
    for step in range(2 * args.rounds):
        target = "r2" if step % 2 == 0 else "r1"
        (command.upgrade if target == "r2" else command.downgrade)(
            config, "r2" if target == "r2" else "-1"
        )
        returned = time.perf_counter()
        pending = set(range(len(readers)))
        while pending:
            pending = {i for i in pending if readers[i].search(queries[1], K)[0].revision != target}
            time.sleep(0.001)
        converged.append(time.perf_counter() - returned)
    for reader in readers:
        reader.close()
    from embedmig.store import docids

    described = []
    for _ in range(3):  # what a searcher reads when it opens a new file: every key and snippet
        began = time.perf_counter()
        with searcher.env.engine.connect() as conn:
            docids.describe_all(conn, "docs")
        described.append(time.perf_counter() - began)
    searcher.close()

    bound = float(config.get("searcher.refresh_ms") or 100)
    print(
        f"\n{args.docs} documents, {args.model}, {args.factory}, history on {args.history}, "
        f"{served} searches per variant ({elapsed:.0f} s), FAISS {faiss.__version__}, "
        f"{threading.active_count()} threads"
    )
    print(f"floor     p50 {f50:.3f} ms  p99 {f99:.3f} ms")
    print(f"embedmig  p50 {e50:.3f} ms  p99 {e99:.3f} ms  p50 ratio {e50 / f50:.3f} (<= 1.2)")
    print(f"SQL statements per search: {per_search:.4f} (<= 0.05)")
    print(
        f"search_many of {BATCH}: floor {statistics.median(batch_times['floor']) * 1e3:.1f} ms, "
        f"embedmig {statistics.median(batch_times['embedmig']) * 1e3:.1f} ms; "
        f"throughput ratio {batch_ratio:.3f} (>= 0.9)"
    )
    print(
        f"QPS: 1 thread {one:.0f}, 8 threads {eight:.0f} ({eight / one:.2f}x); the floor's "
        f"{floor_one:.0f} and {floor_eight:.0f} ({floor_eight / floor_one:.2f}x)"
    )
    print(
        "swap/rollback served by 4 open searchers after the command returned: median "
        f"{statistics.median(converged) * 1e3:.0f} ms, max {max(converged) * 1e3:.0f} ms "
        f"(refresh {bound:.0f} ms)"
    )
    print(f"keys and snippets of every document read at a new file: {min(described):.2f} s")


if __name__ == "__main__":
    main()
