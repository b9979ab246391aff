"""Start-up time of the read-only commands, against `python -c pass` in the same run.

`embedmig --help`, `current`, `history`, `heads` and `show REV` in a fresh project with two
revisions and a history database, each a new process (as a user or a script runs them), the
variants interleaved round by round, medians reported. Then what `current` imports, by
`python -X importtime`: the modules that cost most, and whether FAISS, torch or
sentence-transformers were loaded at all. Target: each command <= 0.5 s on this machine.

    python benchmarks/bench_startup.py [--rounds 15]

Measured 2026-12-02 (2 cores, 9 rounds, medians): python -c pass 0.030 s; --help 0.078 s;
history 0.418 s; current 0.530 s; heads 0.553 s; show 0.556 s. None loads FAISS, torch or
sentence-transformers. The last three read revision scripts through alembic's ScriptDirectory:
importing SQLAlchemy (0.17 s) and alembic (0.14 s) is most of their time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = (sys.executable, "-X", "importtime", "-c", "from embedmig.cli import main; main()")
HEAVY = ("faiss", "torch", "sentence_transformers", "transformers", "matplotlib")


def run(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(args, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    embedmig = str(Path(sys.executable).with_name("embedmig"))
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        subprocess.run([embedmig, "init", "migrations"], cwd=project, check=True)
        for rev, extra in (("r1", []), ("r2", ["--old", "models/a"])):
            subprocess.run(
                [
                    embedmig,
                    "revision",
                    "-m",
                    rev,
                    "--alias",
                    "docs",
                    "--new",
                    "models/b",
                    "--rev-id",
                    rev,
                    *extra,
                ],
                cwd=project,
                check=True,
                stdout=subprocess.DEVNULL,
            )
        subprocess.run(
            [embedmig, "stamp", "r1"], cwd=project, check=True, stdout=subprocess.DEVNULL
        )
        variants = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "embedmig --help": [embedmig, "--help"],
            "embedmig current": [embedmig, "current"],
            "embedmig history": [embedmig, "history"],
            "embedmig heads": [embedmig, "heads"],
            "embedmig show r2": [embedmig, "show", "r2"],
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, command in variants.items():
                times[name].append(run(command, project))
        base = statistics.median(times["python -c pass"])
        print(f"{'command':<20}{'median s':>10}{'minus python':>14}")
        for name, samples in times.items():
            median = statistics.median(samples)
            print(f"{name:<20}{median:>10.3f}{median - base:>14.3f}")

        env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1")
        trace = subprocess.run(
            [*CLI, "current"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stderr
    rows = []
    for line in trace.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line.split("|")
            if cumulative.strip().isdigit():
                rows.append((int(cumulative), name.rstrip()))
    loaded = {name.strip() for _, name in rows}
    print("`current` loads:", ", ".join(h for h in HEAVY if h in loaded) or "none of", HEAVY)
    top_level = sorted(
        ((us, name.strip()) for us, name in rows if name.startswith("   ") is False), reverse=True
    )
    print("largest top-level imports of `current` (ms):")
    for us, name in top_level[:8]:
        print(f"  {us / 1000:8.1f}  {name}")


if __name__ == "__main__":
    main()
