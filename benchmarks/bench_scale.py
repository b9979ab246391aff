"""Does embedmig's own bookkeeping stay flat from 100k to 1M documents?

For each size, a corpus of synthetic documents (3 to 8 sentences resampled from SciFact's
abstracts, so lengths and vocabulary are realistic) is written as JSONL, and alias `docs` is built
with a static model distilled from MiniLM (model2vec, 256-d). Two upgrades are measured, each an
`embedmig upgrade` process of its own (its wall time and peak RSS from ``wait4``):

- Flat: the alias's first index, ``Flat``;
- IVF: a migration to the same model truncated to 128 dimensions (another space) on
  ``IVF1024,Flat``, evaluated against the Flat index (300 sampled documents as queries).

After each, a searcher process times 300 searches (SciFact claims, k = 10: p50 and p99); after the
migration, a writer process upserts 10,000 documents and `embedmig compact` is timed. The table
gives each figure at both sizes and the 1M / 100k ratio. Targets: time ratio <= 11 (linear), peak
RSS beyond the index's own vectors <= 2x (streaming: nothing else grows with the corpus), search
p99 with IVF <= 5 ms at 1M.

    python benchmarks/bench_scale.py [--sizes 100000,1000000] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from demo import scifact  # noqa: E402
from demo.models import distilled  # noqa: E402

CLI = [sys.executable, "-c", "from embedmig.cli import main; raise SystemExit(main())"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def sentences() -> list[str]:
    found: list[str] = []
    for line in (scifact.SCIFACT / "corpus.jsonl").read_text().splitlines():
        row = json.loads(line)
        found += [s.strip() for s in re.split(r"(?<=[.!?])\s+", row["text"]) if len(s) > 20]
    return found


def write_corpus(path: Path, n: int) -> None:
    pool = sentences()
    rng = random.Random(n)
    with path.open("w") as fh:
        for i in range(n):
            text = " ".join(rng.choices(pool, k=rng.randint(3, 8)))
            fh.write(json.dumps({"id": f"d{i}", "text": text}) + "\n")


def timed(args: list[str], cwd: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one process."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        args, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        assert proc.stderr is not None
        raise SystemExit(f"{' '.join(args[3:])} failed: {proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss * 1024


def project(work: Path, n: int, model: Path) -> Path:
    folder = work / f"n{n}"
    if (folder / "embedmig.ini").exists():
        return folder
    folder.mkdir(parents=True)
    write_corpus(folder / "corpus.jsonl", n)
    run([*CLI, "init", "migrations"], folder)
    ini = folder / "embedmig.ini"
    text = re.sub(r"^#? ?eval\.sample = .*$", "", ini.read_text(), flags=re.M)
    ini.write_text(text + "eval.sample = 300\n")
    revisions = [
        ("r1", f'Embedder("{model}")', "Flat", None),
        ("r2", f'Embedder("{model}", truncate_dim=128)', "IVF1024,Flat", f'Embedder("{model}")'),
    ]
    for rev, _, factory, _ in revisions:
        run(
            [
                *CLI,
                "revision",
                "-m",
                rev,
                "--alias",
                "docs",
                "--new",
                str(model),
                "--rev-id",
                rev,
                "--index-factory",
                factory,
            ],
            folder,
        )
    for path in (folder / "migrations" / "versions").glob("*.py"):
        rev, new, _, old = next(r for r in revisions if path.name.startswith(r[0] + "_"))
        text = re.sub(r"^new = .*$", f"new = {new}", path.read_text(), flags=re.M)
        text = re.sub(r"^old = .*$", f"old = {old}", text, flags=re.M)
        text = re.sub(r"^gates = .*$", "gates = Gates()", text, flags=re.M)
        path.write_text(text)
    return folder


def run(args: list[str], cwd: Path) -> None:
    done = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[3:])} failed: {done.stderr[-2000:]}")


def measure(folder: Path, n: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for rev, name in (("r1", "flat"), ("r2", "ivf")):
        wall, rss = timed([*CLI, "-q", "upgrade", rev, "--report", f"{rev}.json"], folder)
        report = json.loads((folder / f"{rev}.json").read_text())
        timings = report["timings"]
        dim = 256 if rev == "r1" else 128
        # A migration's evaluation also loads the live index (the 256-d Flat one).
        held = report["corpus_size"] * (dim + (256 if rev == "r2" else 0)) * 4
        result[name] = {
            "wall_s": wall,
            "docs_per_s": n / timings["backfill_s"],
            "peak_rss": rss,
            "index_bytes": held,
            "build_s": timings["build_s"],
            "evaluate_s": timings["total_s"],
            "sql_bytes": sum(p.stat().st_size for p in folder.glob("embedmig.db*")),
            **search_latency(folder),
        }
    wall, _ = timed([sys.executable, __file__, "write", str(folder)], folder)
    started = time.perf_counter()
    run([*CLI, "-q", "compact", "docs"], folder)
    result["compact_s"] = time.perf_counter() - started
    return result


def search_latency(folder: Path) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "search", str(folder)],
        env=ENV,
        check=True,
        capture_output=True,
        text=True,
    )
    latency: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return latency


def search_child(folder: Path) -> None:
    """p50 / p99 of 1,000 searches after 200 to warm the caches (SciFact claims, in turn)."""
    from embedmig import Config, open_searcher

    claims = [
        json.loads(line)["text"]
        for line in (scifact.SCIFACT / "queries.jsonl").read_text().splitlines()
    ]
    with open_searcher(Config(folder / "embedmig.ini"), "docs") as searcher:
        for text in claims[:200]:
            searcher.search(text)
        times = []
        for i in range(1000):
            started = time.perf_counter()
            searcher.search(claims[(200 + i) % len(claims)], k=10)
            times.append(time.perf_counter() - started)
    times.sort()
    p50, p99 = statistics.median(times) * 1000, times[int(len(times) * 0.99) - 1] * 1000
    print(json.dumps({"p50_ms": p50, "p99_ms": p99}))


def write_child(folder: Path) -> None:
    from embedmig import Config, open_writer

    pool = sentences()
    rng = random.Random(7)
    with open_writer(Config(folder / "embedmig.ini"), "docs") as writer:
        for start in range(0, 10_000, 500):
            writer.upsert_many(
                (f"w{start + i}", " ".join(rng.choices(pool, k=5))) for i in range(500)
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    model = distilled(work / "static-256")
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {}
    for n in sizes:
        folder = project(work, n, model)
        results[n] = measure(folder, n)
        print(f"{n:,} documents: {json.dumps(results[n])}", flush=True)
    table(results, sizes)


def table(results: dict[int, dict[str, Any]], sizes: list[int]) -> None:
    small, large = sizes[0], sizes[-1]
    rows = []
    for name in ("flat", "ivf"):
        for key, label, scale in (
            ("wall_s", "upgrade wall time (s)", 1),
            ("docs_per_s", "backfill docs/s", 1),
            ("peak_rss", "peak RSS (MB)", 1e-6),
            ("index_bytes", "index vectors held (MB)", 1e-6),
            ("build_s", "index build (s)", 1),
            ("evaluate_s", "evaluate (s)", 1),
            ("sql_bytes", "SQL size (MB)", 1e-6),
            ("p50_ms", "search p50 (ms)", 1),
            ("p99_ms", "search p99 (ms)", 1),
        ):
            a, b = results[small][name][key], results[large][name][key]
            rows.append((f"{name}: {label}", a * scale, b * scale, b / a if a else float("nan")))
        a = results[small][name]["peak_rss"] - results[small][name]["index_bytes"]
        b = results[large][name]["peak_rss"] - results[large][name]["index_bytes"]
        rows.append((f"{name}: peak RSS beyond the indexes (MB)", a * 1e-6, b * 1e-6, b / a))
    a, b = results[small]["compact_s"], results[large]["compact_s"]
    rows.append(("compact after 10k writes (s)", a, b, b / a))
    print(f"\n{'':<42}{f'{small:,}':>12}{f'{large:,}':>12}{'ratio':>8}")
    for label, a, b, ratio in rows:
        print(f"{label:<42}{a:>12.2f}{b:>12.2f}{ratio:>8.2f}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "search":
        search_child(Path(sys.argv[2]))
    elif len(sys.argv) > 2 and sys.argv[1] == "write":
        write_child(Path(sys.argv[2]))
    else:
        main()
