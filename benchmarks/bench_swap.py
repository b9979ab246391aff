"""Alias swap and rollback do not load or copy an index: their time does not grow with its size.

Two aliases, one with 10k documents and one with 1M, each migrated between two tiny real static
sentence-transformers models (the vectors' content is irrelevant here, only the index size).
The revision scripts time `ctx.swap()` and `ctx.rollback()` themselves; then the swap's SQL
transaction alone (`catalog.point_alias` plus its history row) is repeated 50 times per alias.
Prints medians and the 1M/10k ratios (target: about 1).

    python benchmarks/bench_swap.py [--large 1000000]

Measured 2026-11-26 (10k vs 1M vectors): ctx.swap() 3.0 vs 4.0 ms (two samples each, dominated
by SQLite's commit fsync), ctx.rollback() 6.6 vs 6.9 ms (1.05), swap transaction x50 median
1.52 vs 1.45 ms (0.95).
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TIMED_SCRIPT = """
import json, time
from pathlib import Path

def _log(ctx, what, seconds):
    with Path(ctx.config.root, "timings.jsonl").open("a") as fh:
        fh.write(json.dumps({"alias": ctx.alias, "what": what, "seconds": seconds}) + "\\n")

def upgrade(ctx):
    ctx.backfill()
    ctx.evaluate()
    started = time.perf_counter()
    ctx.swap()
    _log(ctx, "swap", time.perf_counter() - started)

def downgrade(ctx):
    started = time.perf_counter()
    ctx.rollback()
    _log(ctx, "rollback", time.perf_counter() - started)
"""


def write_corpus(path: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(2000)])
    picks = rng.integers(0, len(words), size=(n, 6))
    with path.open("w") as fh:
        for i, row in enumerate(picks):
            fh.write(json.dumps({"id": f"d{i}", "text": " ".join(words[row])}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    from embedmig import Config, command
    from embedmig.environment import Environment
    from embedmig.store import catalog, clock, events
    from tests.support import build_static_model

    work = Path(tempfile.mkdtemp(prefix="bench-swap-"))
    os.chdir(work)
    command.init("migrations")
    vocabulary = [" ".join(f"w{i}" for i in range(j, j + 50)) for j in range(0, 2000, 50)]
    build_static_model(work / "a", vocabulary, 16, seed=0)
    build_static_model(work / "b", vocabulary, 16, seed=1)
    sizes = {"small": args.small, "large": args.large}
    ini = work / "embedmig.ini"
    ini.write_text(ini.read_text().replace("eval.sample = 500", "eval.sample = 50"))
    (work / "migrations" / "env.py").write_text(
        "from embedmig import sources\n"
        "def corpus(config, alias):\n"
        "    return sources.JsonlSource(config.root / f'{alias}.jsonl')\n"
    )
    config = Config(ini)
    for alias, n in sizes.items():
        write_corpus(work / f"{alias}.jsonl", n, seed=n)
        for rev, model in ((f"{alias}1", "a"), (f"{alias}2", "b")):
            script = command.revision(config, rev, alias=alias, new=model, rev_id=rev)
            text = script.path.read_text()
            text = text[: text.index("def upgrade(ctx):")] + TIMED_SCRIPT
            script.path.write_text(
                text.replace(
                    "gates = Gates(min_overlap_at_10=0.5, max_score_shift=0.2)", "gates = Gates()"
                )
            )
        started = time.perf_counter()
        command.upgrade(config, f"{alias}@head")
        print(
            f"{alias}: {n} documents migrated twice in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
        command.downgrade(config, f"{alias}@-1")

    timings = [json.loads(line) for line in (work / "timings.jsonl").read_text().splitlines()]
    env = Environment(config)
    repeated: dict[str, list[float]] = {}
    for alias in sizes:
        with env.engine.connect() as conn:
            ids = [i.id for i in catalog.indexes(conn, alias) if i.state in ("live", "retired")]
        runs = []
        for turn in range(50):
            started = time.perf_counter()
            with env.engine.begin() as conn:
                catalog.point_alias(conn, alias, f"{alias}{1 + turn % 2}", ids[turn % 2])
                events.record(
                    conn,
                    alias=alias,
                    revision=None,
                    action="bench",
                    status="ok",
                    started_at=clock.now(),
                )
            runs.append(time.perf_counter() - started)
        repeated[alias] = runs

    def ms(values: list[float]) -> float:
        return statistics.median(values) * 1000

    print(f"\n{'':<22}{args.small:>12,}{args.large:>12,}   ratio")
    for what in ("swap", "rollback"):
        small = [t["seconds"] for t in timings if t["alias"] == "small" and t["what"] == what]
        large = [t["seconds"] for t in timings if t["alias"] == "large" and t["what"] == what]
        print(
            f"ctx.{what + '()':<18}{ms(small):>10.2f}ms{ms(large):>10.2f}ms   {ms(large) / ms(small):.2f}"
        )
    print(
        f"{'swap transaction x50':<22}{ms(repeated['small']):>10.2f}ms{ms(repeated['large']):>10.2f}ms"
        f"   {ms(repeated['large']) / ms(repeated['small']):.2f}"
    )


if __name__ == "__main__":
    main()
