"""Opening the history database, and keeping its schema at this embedmig's version."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from embedmig.errors import HistoryError

# Not alembic_version: the user's own alembic migrations may share this database.
VERSION_TABLE = "embedmig_schema_version"
# The head of migrations/ (a spec checks it against alembic's graph). A database already there
# opens without importing alembic, a third of a read-only command's start-up.
SCHEMA_HEAD = "0011"
_MIGRATIONS = Path(__file__).parent / "migrations"
_VERSIONS = sa.table(VERSION_TABLE, sa.column("version_num"))


def connect(url: str, *, create: bool = True) -> sa.Engine:
    """An engine on ``url`` whose schema is current.

    With ``create`` (an upgrade, a stamp), a missing database is created and an older schema
    upgraded. Without it (searchers, writers, every other command) the database must be there
    at this schema, and a SQLite file must stay the one opened: one deleted or replaced under
    an open engine is refused at the next connection, never silently recreated empty.
    """
    path = sqlite_file(url)
    if path is not None and not create and not path.exists():
        raise HistoryError(
            f"history database {path} does not exist (an `embedmig upgrade` creates it)"
        )
    try:
        engine = sa.create_engine(url, **_engine_options(url, path, create))
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
        raise HistoryError(f"invalid history database URL {safe_url(url)}: {exc}") from None
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    try:
        _ensure_schema(engine, create)
    except sa.exc.DBAPIError as exc:  # unreachable, not a database, read-only, ...
        engine.dispose()
        raise HistoryError(f"cannot open history database {safe_url(url)}: {reason(exc)}") from None
    if path is not None:
        _keep_identity(engine, path)
    return engine


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None for another database, memory or a ``file:`` URI)."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        return None
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    return None if database.startswith("file:") else Path(database)


def _keep_identity(engine: sa.Engine, path: Path) -> None:
    """Refuse a connection once ``path`` is no longer the file the engine opened: deleted,
    replaced or moved away. SQLite would otherwise go on with the unlinked file, or create an
    empty one, and writes acknowledged there would be lost to everyone else."""
    opened = _identity(path)

    def check(*_args: Any) -> None:
        if _identity(path) != opened:
            raise _gone(path)

    sa.event.listen(engine, "checkout", check)


def _gone(path: Path) -> HistoryError:
    """A file that is no longer the one opened: refused, whether a pooled connection is checked
    out (``_keep_identity``) or a new one is made (the pool's creator)."""
    return HistoryError(
        f"history database {path} was deleted or replaced while in use; "
        "reopen it (nothing was written)"
    )


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_dev, found.st_ino


def reason(exc: sa.exc.DBAPIError) -> str:
    """The database's own words, on one line."""
    return str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc).splitlines()[0]


def _engine_options(url: str, path: Path | None, create: bool) -> dict[str, Any]:
    if path is not None and not create:
        # Opened read-write only: SQLite then never creates a missing file.
        uri = f"file:{path.resolve().as_posix()}?mode=rw"

        def connect_rw() -> sqlite3.Connection:
            if not path.exists():  # it was there when the engine opened (``connect``)
                raise _gone(path)
            return sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False)

        return {"creator": connect_rw}
    if url.startswith("sqlite"):
        # Writers, searchers and the runner share the file; wait for a lock instead of failing.
        return {"connect_args": {"timeout": 30}}
    return {"pool_pre_ping": True}


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # A writer's acknowledgement is its commit: it must survive a power cut, not just a crash.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _ensure_schema(engine: sa.Engine, create: bool) -> None:
    if _at_head(engine):
        return
    from alembic import command as alembic_command
    from alembic.config import Config as AlembicConfig
    from alembic.runtime.migration import MigrationContext as AlembicMigrationContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(_MIGRATIONS))
    known = set(script.get_heads())
    with engine.connect() as conn:
        current = set(
            AlembicMigrationContext.configure(
                conn, opts={"version_table": VERSION_TABLE}
            ).get_current_heads()
        )
    if current == known:
        return
    unknown = [rev for rev in current if rev not in {s.revision for s in script.walk_revisions()}]
    if unknown:
        raise HistoryError(
            f"history schema {', '.join(unknown)} is newer than this embedmig knows; "
            "upgrade embedmig to use this database"
        )
    if not create:
        raise HistoryError(
            f"history database {safe_url(str(engine.url))} has no embedmig schema at "
            f"{SCHEMA_HEAD} (an `embedmig upgrade` creates or upgrades it)"
        )
    with engine.begin() as conn:
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(_MIGRATIONS))
        cfg.attributes["connection"] = conn
        alembic_command.upgrade(cfg, "heads")


def _at_head(engine: sa.Engine) -> bool:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(VERSION_TABLE):
            return False
        found = {row[0] for row in conn.execute(sa.select(_VERSIONS.c.version_num))}
    return found == {SCHEMA_HEAD}


def safe_url(url: str) -> str:
    """``url`` as messages print it: the password as ``***``."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "(unparseable URL)"
