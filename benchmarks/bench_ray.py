"""The Ray executor against the in-process one: the same backfill of 5,000 SciFact abstracts with
all-MiniLM-L6-v2, on this machine (2 cores: 2 actors of one thread each, against one process
with torch's two threads).

Each run is a fresh project and one `embedmig -q upgrade` process, so Ray's start (a local
`ray.init()`, two actors loading the model) is inside the Ray figure. The executors run in turn
(in-process, Ray, in-process, Ray, ...) for ``--rounds`` rounds; medians. Target: Ray / in-process
wall time <= 1.25.

    python benchmarks/bench_ray.py [--rounds 2] [--docs 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from demo import scifact  # noqa: E402
from demo.models import minilm  # noqa: E402

CLI = [sys.executable, "-c", "from embedmig.cli import main; raise SystemExit(main())"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def fresh(work: Path, name: str, docs: int) -> Path:
    folder = work / name
    folder.mkdir()
    rows = (scifact.SCIFACT / "corpus.jsonl").read_text().splitlines()[:docs]
    with (folder / "corpus.jsonl").open("w") as fh:
        for line in rows:
            row = json.loads(line)
            fh.write(json.dumps({"id": row["_id"], "text": f"{row['title']} {row['text']}"}) + "\n")
    subprocess.run([*CLI, "init", "migrations"], cwd=folder, env=ENV, check=True)
    ini = folder / "embedmig.ini"
    ini.write_text(ini.read_text() + "ray.num_actors = 2\nray.batch_size = 64\n")
    subprocess.run(
        [
            *CLI,
            "revision",
            "-m",
            "first",
            "--alias",
            "docs",
            "--new",
            str(minilm()),
            "--rev-id",
            "r1",
        ],
        cwd=folder,
        env=ENV,
        check=True,
        capture_output=True,
    )
    return folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--docs", type=int, default=5000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    seconds: dict[str, list[float]] = {"inprocess": [], "ray": []}
    for round_ in range(args.rounds):
        for executor in seconds:
            folder = fresh(work, f"{executor}-{round_}", args.docs)
            started = time.perf_counter()
            subprocess.run(
                [*CLI, "-q", "upgrade", "r1", "--executor", executor],
                cwd=folder,
                env=ENV,
                check=True,
                capture_output=True,
            )
            seconds[executor].append(time.perf_counter() - started)
            print(f"round {round_ + 1}: {executor} {seconds[executor][-1]:.1f} s", flush=True)
    local, ray = statistics.median(seconds["inprocess"]), statistics.median(seconds["ray"])
    print(
        f"\n{args.docs:,} abstracts, MiniLM, {args.rounds} interleaved rounds: in-process "
        f"{local:.1f} s ({args.docs / local:.0f} docs/s), Ray {ray:.1f} s "
        f"({args.docs / ray:.0f} docs/s); Ray / in-process = {ray / local:.3f}"
    )


if __name__ == "__main__":
    main()
