"""Runs `embedmig upgrade` and SIGKILLs itself at one named point (for tests/test_crashes.py).

    python tests/crash_runner.py POINT [embedmig args...]

Each point wraps a real function of embedmig, so the process dies exactly where a power cut or an
OOM kill could stop a production run.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from embedmig import cli
from embedmig.embedders import LoadedEmbedder
from embedmig.migrate import context, evaluate
from embedmig.store import catalog, files


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_on_call(
    owner: Any,
    name: str,
    call: int = 1,
    after: bool = False,
    when: Callable[..., bool] = lambda *a, **k: True,
) -> None:
    original = getattr(owner, name)
    seen = 0

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal seen
        if when(*args, **kwargs):
            seen += 1
            if seen == call and not after:
                die()
        result = original(*args, **kwargs)
        if when(*args, **kwargs) and seen == call and after:
            die()
        return result

    setattr(owner, name, wrapper)


POINTS: dict[str, Callable[[], None]] = {
    "during-encode": lambda: kill_on_call(LoadedEmbedder, "encode_documents", call=2),
    "after-spool-append": lambda: kill_on_call(files.Spool, "append", call=2, after=True),
    "before-checkpoint": lambda: kill_on_call(catalog, "save_checkpoint", call=3),
    "between-batches": lambda: kill_on_call(catalog, "assign_ids", call=3),
    "during-index-build": lambda: kill_on_call(files.Spool, "build"),
    "before-index-rename": lambda: kill_on_call(
        os, "replace", when=lambda src, dst: str(dst).endswith(".faiss")
    ),
    "after-index-rename": lambda: kill_on_call(files, "fsync_dir"),
    "before-ready-commit": lambda: kill_on_call(catalog, "clear_checkpoint"),
    "during-evaluate": lambda: kill_on_call(evaluate, "run"),
    "during-swap": lambda: kill_on_call(catalog, "point_alias"),
    "before-swap-commit": lambda: kill_on_call(
        catalog, "record", when=lambda conn, **kw: kw.get("action") == "upgrade"
    ),
    "after-swap-commit": lambda: kill_on_call(context.MigrationContext, "swap", after=True),
}
# Points of a downgrade (run with `downgrade TARGET`).
ROLLBACK_POINTS: dict[str, Callable[[], None]] = {
    "during-rollback": lambda: kill_on_call(catalog, "point_alias"),
    "before-rollback-commit": lambda: kill_on_call(
        catalog, "record", when=lambda conn, **kw: kw.get("action") == "downgrade"
    ),
    "after-rollback-commit": lambda: kill_on_call(context.MigrationContext, "rollback", after=True),
}

if __name__ == "__main__":
    {**POINTS, **ROLLBACK_POINTS}[sys.argv[1]]()
    sys.exit(cli.main(sys.argv[2:]))
