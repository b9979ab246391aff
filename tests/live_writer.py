"""An application process writing documents of alias `docs` (for tests/test_live_writes.py).

    python tests/live_writer.py churn PROJECT WORKER WORKERS OPS SEED   (stops early once the
                                                             file PROJECT/stop-writers exists)
    python tests/live_writer.py once PROJECT KEY TEXT
    python tests/live_writer.py once-then-die PROJECT KEY TEXT   (SIGKILLs itself after the ack)
    python tests/live_writer.py delete PROJECT KEY

Like a real application it updates its own table (`source.db`, the corpus embedmig backfills from)
and then tells embedmig's writer. Each worker owns the keys that hash to it, so every key's changes
come from one process, in order, as with an application sharded by key.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import sys
import time
import zlib
from pathlib import Path

from embedmig import Config, open_writer

WORDS = [
    *("cell", "protein", "tumor", "gene", "expression", "patient", "cohort", "mouse"),
    *("receptor", "signal", "pathway", "therapy", "dose", "response", "risk", "vaccine"),
    *("infection", "brain", "neuron", "muscle", "bone", "blood"),
]


def owns(key: str, worker: int, workers: int) -> bool:
    return zlib.crc32(key.encode()) % workers == worker


def churn(project: Path, worker: int, workers: int, ops: int, seed: int) -> None:
    rng = random.Random(seed)
    source = sqlite3.connect(project / "source.db", timeout=60, isolation_level=None)
    corpus = [row[0] for row in source.execute("SELECT id FROM docs ORDER BY id")]
    mine = [key for key in corpus if owns(key, worker, workers)]
    fresh = [f"w{worker}-{seed}-{i}" for i in range(ops // 10)]
    pool = mine + fresh
    # Keys at the end of the corpus order: deleted before a backfill can have reached them.
    early_deletes = mine[-20:]
    done = 0
    stop = project / "stop-writers"
    with open_writer(Config(project / "embedmig.ini"), "docs") as writer:
        while done < ops and not stop.exists():
            if early_deletes:
                keys = [early_deletes.pop()]
                delete = True
            else:
                keys = rng.sample(pool, k=min(len(pool), rng.choice((1, 1, 1, 2, 5))))
                delete = rng.random() < 0.4
            if delete:
                source.executemany("DELETE FROM docs WHERE id = ?", [(k,) for k in keys])
                if len(keys) == 1:
                    writer.delete(keys[0])
                else:
                    writer.delete_many(keys)
            else:
                docs = [(k, " ".join(rng.choices(WORDS, k=rng.randint(3, 12)))) for k in keys]
                source.executemany("INSERT OR REPLACE INTO docs (id, text) VALUES (?, ?)", docs)
                if len(docs) == 1:
                    writer.upsert(*docs[0])
                else:
                    writer.upsert_many(docs)
            done += len(keys)
    source.close()


def once(project: Path, key: str, text: str | None, die: bool = False) -> None:
    """Upsert ``key`` (delete it when ``text`` is None) and print when that was acknowledged."""
    with open_writer(Config(project / "embedmig.ini"), "docs") as writer:
        if text is None:
            writer.delete(key)
        else:
            writer.upsert(key, text)
        print(time.time(), flush=True)
        if die:  # no close, no interpreter shutdown: as a power cut would stop the process
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    mode, project, *rest = sys.argv[1:]
    if mode == "churn":
        worker, workers, ops, seed = map(int, rest)
        churn(Path(project), worker, workers, ops, seed)
    elif mode == "delete":
        once(Path(project), rest[0], None)
    else:
        key, text = rest
        once(Path(project), key, text, die=mode == "once-then-die")
