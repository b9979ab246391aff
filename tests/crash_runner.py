"""Runs `embedmig` commands that SIGKILL themselves at one named point (for tests/test_crashes.py).

    python tests/crash_runner.py --serve

starts a server that has already imported embedmig, torch, sentence-transformers and FAISS, and
computed nothing with them. For each request line on stdin (JSON: ``cwd``, ``point``, ``args``)
it forks a child, which installs the point and runs ``embedmig ARGS`` in ``cwd``; the server
answers one JSON line: how the child ended (``signal`` or ``code``) and what it wrote to stderr.
Each child is a real process killed by a real SIGKILL, without paying for an interpreter's
start-up; the server itself never runs a model, so no thread pool is forked half-way.

Each point wraps a real function of embedmig, so the process dies exactly where a power cut or an
OOM kill could stop a production run.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from embedmig import cli
from embedmig.embedders import LoadedEmbedder
from embedmig.migrate import adapter, context, evaluate
from embedmig.store import catalog, checkpoints, docids, events, files, pgvector


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
    "before-checkpoint": lambda: kill_on_call(checkpoints, "save_checkpoint", call=3),
    "between-batches": lambda: kill_on_call(docids, "assign_ids", call=3),
    "during-index-build": lambda: kill_on_call(files.Spool, "build"),
    "before-index-rename": lambda: kill_on_call(
        os, "replace", when=lambda src, dst: str(dst).endswith(".faiss")
    ),
    "after-index-rename": lambda: kill_on_call(files, "fsync_dir"),
    "before-ready-commit": lambda: kill_on_call(checkpoints, "clear_checkpoint"),
    "during-evaluate": lambda: kill_on_call(evaluate, "run"),
    "during-swap": lambda: kill_on_call(catalog, "point_alias"),
    "before-swap-commit": lambda: kill_on_call(
        events, "record", when=lambda conn, **kw: kw.get("action") == "upgrade"
    ),
    "after-swap-commit": lambda: kill_on_call(context.MigrationContext, "swap", after=True),
}
# Points only an index in PostgreSQL passes (index_store = pgvector).
PGVECTOR_POINTS: dict[str, Callable[[], None]] = {
    "during-ann-build": lambda: kill_on_call(pgvector, "build_index"),
}
# Points of a downgrade (run with `downgrade TARGET`).
ROLLBACK_POINTS: dict[str, Callable[[], None]] = {
    "during-rollback": lambda: kill_on_call(catalog, "point_alias"),
    "before-rollback-commit": lambda: kill_on_call(
        events, "record", when=lambda conn, **kw: kw.get("action") == "downgrade"
    ),
    "after-rollback-commit": lambda: kill_on_call(context.MigrationContext, "rollback", after=True),
}

# Points of an adapter revision's upgrade (its upgrade() calls ctx.adapt()).
ADAPTER_POINTS: dict[str, Callable[[], None]] = {
    "during-fit": lambda: kill_on_call(adapter, "fit"),
    "after-map-write": lambda: kill_on_call(files, "save_bytes", after=True),
    "before-adapter-commit": lambda: kill_on_call(
        events, "record", when=lambda conn, **kw: kw.get("action") == "adapter"
    ),
}


def run_child(cwd: str, point: str, args: list[str], env: dict[str, str], stderr_path: str) -> None:
    """In the forked child: never returns. ``env`` is added to its environment (an API key)."""
    code = 70
    try:
        fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd, 2)
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115  # the process's own stderr
        os.chdir(cwd)
        os.environ.update(env)
        {**POINTS, **PGVECTOR_POINTS, **ROLLBACK_POINTS, **ADAPTER_POINTS}[point]()
        code = cli.main(args)
    except BaseException as exc:  # the child must never return into the server's loop
        print(f"crash runner child failed: {exc!r}", file=sys.stderr)
    finally:
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    import faiss  # noqa: F401
    import sentence_transformers  # noqa: F401

    from embedmig import command  # noqa: F401
    from embedmig.migrate import runner  # noqa: F401

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        stderr_path = os.path.join(request["cwd"], ".crash-runner-stderr")
        pid = os.fork()
        if pid == 0:
            env = request.get("env", {})
            run_child(request["cwd"], request["point"], request["args"], env, stderr_path)
        _, status = os.waitpid(pid, 0)
        with open(stderr_path, encoding="utf-8", errors="replace") as fh:
            stderr = fh.read()
        os.unlink(stderr_path)
        ended = (
            {"signal": os.WTERMSIG(status)}
            if os.WIFSIGNALED(status)
            else {"code": os.WEXITSTATUS(status)}
        )
        print(json.dumps({**ended, "stderr": stderr}), flush=True)


if __name__ == "__main__":
    serve()
