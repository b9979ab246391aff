"""A service process searching alias `docs` (for tests/test_canary.py).

    python tests/live_searcher.py PROJECT QUERIES_FILE [--wait-canary] [--forever]

Searches each line of QUERIES_FILE (``--forever``: over and over, until killed). With
``--wait-canary`` it first serves one warm-up query, then waits until its searcher mirrors to the
open canary.
Prints its traffic counts as JSON when done.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from embedmig import Config, open_searcher


def main(project: Path, queries: Path, wait_canary: bool, forever: bool) -> None:
    texts = [line for line in queries.read_text().splitlines() if line.strip()]
    with open_searcher(Config(project / "embedmig.ini"), "docs") as searcher:
        if wait_canary:
            searcher.search("warm up", k=3)  # starts its worker, which polls for the canary
            deadline = time.monotonic() + 60
            while not searcher.mirroring:  # no search meanwhile: none but ours is mirrored
                if time.monotonic() > deadline:
                    raise SystemExit("the searcher never started mirroring to the canary")
                time.sleep(0.05)
        print("ready", flush=True)
        while True:
            for text in texts:
                searcher.search(text, k=10)
            if not forever:
                break
    print(json.dumps(asdict(searcher.traffic)), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), "--wait-canary" in sys.argv, "--forever" in sys.argv)
