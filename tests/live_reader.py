"""A service process reading alias `docs` on command (for tests/test_readers.py).

    python tests/live_reader.py PROJECT

Reads commands from stdin, one per line: ``search`` serves one query and prints ``served #ID``
(the index it served); ``loop`` serves queries back to back until ``stop``. At the end of input
it closes its searcher (which removes its heartbeat) and exits.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from embedmig import Config, open_searcher


def main(project: Path) -> None:
    with open_searcher(Config(project / "embedmig.ini"), "docs") as searcher:
        stop = threading.Event()
        looping: threading.Thread | None = None

        def loop() -> None:
            while not stop.is_set():
                searcher.search("tumor cells in the lung", k=5)

        for line in sys.stdin:
            command = line.strip()
            if command == "search":
                searcher.search("tumor cells in the lung", k=5)
                print(f"served #{searcher.index_record.id}", flush=True)
            elif command == "loop":
                stop.clear()
                looping = threading.Thread(target=loop)
                looping.start()
                print("looping", flush=True)
            elif command == "stop" and looping is not None:
                stop.set()
                looping.join()
                print("stopped", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
