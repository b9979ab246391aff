"""What `embedmig verify` and `embedmig watch` take on a real alias.

On BEIR SciFact (../shared/data/scifact: 5,183 abstracts) live on all-MiniLM-L6-v2:

- verify: 500 golden queries (SciFact claims; the cited abstracts as `must_contain` within the top
  10 and as ratings), `command.verify` from a cold start of the command (the model loads in it);
  target <= 60 s;
- watch: 100,000 logged queries since the swap (the 1,109 claims, each served about 90 times),
  `command.watch` searching its `watch.sample` (2,000) of them, with and without the golden
  queries; target <= 30 s.

Each is run ``--runs`` times, alternating (verify, watch, watch with contracts, ...), and reported
as medians with the parts of a watch (the log read, the encoding) timed apart.

    python benchmarks/bench_watch.py [--runs 3] [--work DIR]

``--work``: a folder with SciFact live on MiniLM (bench_searcher.py's, say); without it one is
built (a MiniLM backfill of 5,183 abstracts: minutes).

Measured 2026-12-05 (2 cores), medians of 3: verify 2.1 s (7.2 s the first time, the model
loading cold); watch 4.4 s (log read 0.12 s, embedding and search of the sample's 1,109 distinct
texts 4.3 s); watch with the golden queries 6.4 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from demo import scifact  # noqa: E402
from demo.models import minilm  # noqa: E402

LOGGED = 100_000
CONTRACTS = 500


def setup(work: Path) -> None:
    from embedmig import Config, command

    scifact.project(work)
    config = Config(work / "embedmig.ini")
    command.revision(config, "live", alias="docs", new=str(minilm()), rev_id="r1")
    command.upgrade(config, "r1")


def golden_queries(path: Path) -> None:
    """500 claims with the abstracts they cite (train and test judgements)."""
    cited: dict[str, list[str]] = {}
    for split in ("train", "test"):
        lines = (scifact.SCIFACT / "qrels" / f"{split}.tsv").read_text().splitlines()[1:]
        for line in lines:
            query, doc, _ = line.split("\t")
            cited.setdefault(query, []).append(doc)
    claims = {
        row["_id"]: row["text"]
        for row in map(json.loads, (scifact.SCIFACT / "queries.jsonl").read_text().splitlines())
    }
    rows = [
        {
            "id": query,
            "query": claims[query],
            "must_contain": docs,
            "ratings": [{"_id": d, "rating": 1} for d in docs],
        }
        for query, docs in cited.items()
        if query in claims
    ][:CONTRACTS]
    assert len(rows) == CONTRACTS, len(rows)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def log_traffic(work: Path) -> None:
    """100,000 logged queries, served after the swap."""
    from embedmig import Config
    from embedmig.environment import Environment
    from embedmig.history import schema
    from embedmig.store import clock, manifest, traffic

    claims = [
        json.loads(line)["text"]
        for line in (scifact.SCIFACT / "queries.jsonl").read_text().splitlines()
    ]
    env = Environment(Config(work / "embedmig.ini"))
    with env.engine.begin() as conn:
        conn.execute(schema.query_log.delete())
        served = [
            traffic.Served(clock.now(), manifest.content_hash(text), text, 10)
            for text in (claims[i % len(claims)] for i in range(LOGGED))
        ]
        traffic.log(conn, "docs", served, LOGGED)
    env.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    from embedmig import Config, GateFailed, command

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-watch-"))
    if not (work / "embedmig.ini").exists():
        setup(work)
    golden_queries(work / "golden.jsonl")
    log_traffic(work)
    plain = Config(work / "embedmig.ini")
    golden = Config(work / "embedmig.ini", options={"contracts": str(work / "golden.jsonl")})
    times: dict[str, list[float]] = {"verify": [], "watch": [], "watch + contracts": []}
    parts: dict[str, dict[str, float]] = {}
    for _ in range(args.runs):
        begun = time.perf_counter()
        command.verify(golden, "docs")
        times["verify"].append(time.perf_counter() - begun)
        for name, config in (("watch", plain), ("watch + contracts", golden)):
            begun = time.perf_counter()
            try:
                (report,) = command.watch(config, "docs")
            except GateFailed as failed:  # golden SciFact claims do lose cited abstracts
                report = failed.report
            times[name].append(time.perf_counter() - begun)
            assert report.metrics["watch_queries"] == LOGGED, report.metrics
            parts[name] = report.timings
    print(
        f"SciFact on MiniLM; {CONTRACTS} golden queries; {LOGGED:,} logged queries; {args.runs} runs"
    )
    for name, seconds in times.items():
        shown = ", ".join(f"{s:.1f}" for s in seconds)
        print(f"{name:<20} median {statistics.median(seconds):6.1f} s  (runs: {shown})")
        if name in parts:
            print(
                " " * 20 + " last run: " + ", ".join(f"{k} {v:.2f}" for k, v in parts[name].items())
            )


if __name__ == "__main__":
    main()
