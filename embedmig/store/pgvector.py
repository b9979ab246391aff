"""Indexes in PostgreSQL with pgvector: a table per index, the alias a view.

Each index is a table ``embedmig.index_<id>`` (document id, key, vector) in the history database,
so its rows, the catalog and the history commit in the same transactions: a backfill's batch with
its checkpoint, a write with its journal row, a swap with its history row. The alias is a view
(``search.<alias>`` by default) over the live table, replaced inside the swap's transaction, so an
SQL client reads the old index or the new one, never a mix. The ANN index is built once, after the
rows; an index becomes ``ready`` only once PostgreSQL says it is valid and the reader's query uses
it (EXPLAIN).

Scores are inner products, as in the FAISS store (``<#>`` is the negative inner product): equal to
the cosine for a normalizing embedder. The tables are ``store.pgtables``, their search
``store.pgsearch``; this module is the view and the store that ties them to the catalog.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import numpy as np
import psycopg.sql
import sqlalchemy as sa

from embedmig.config import Config
from embedmig.errors import ConfigError, StoreError
from embedmig.history.db import safe_url
from embedmig.store import catalog, docids, journal, manifest
from embedmig.store.catalog import IndexRecord
from embedmig.store.pgsearch import Opened, check_index
from embedmig.store.pgtables import (
    SCHEMA,
    Spec,
    Table,
    apply,
    build_index,
    check_database,
    count,
    create,
    dbapi,
    drop,
    ids_of,
    keys_of,
    put,
    remove,
    savepoint,
    table_of,
)
from embedmig.store.stores import PGVECTOR, Encode, Host, Searchable

# ---- the alias's view -------------------------------------------------------------------------


def point_view(
    conn: sa.Connection,
    schema: str,
    alias: str,
    table: Table | None,
    served: dict[str, str],
    lock_timeout_ms: int,
    attempts: int,
) -> None:
    """Make the view ``schema.alias`` show ``table`` (None: drop it), in the caller's transaction.

    Call it first in the transaction, before any catalog row is locked: replacing a view waits
    for readers whose transactions read it. Each attempt waits ``lock_timeout_ms``; between
    attempts the waiting stops, so readers queued behind the swap go on. ``served`` (revision,
    fingerprint, model) becomes constant columns and the view's comment: what a reader embeds
    its query with."""
    sql = psycopg.sql
    view = sql.Identifier(schema, alias)
    statements = [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)),
        sql.SQL("DROP VIEW IF EXISTS {}").format(view),
    ]
    if table is not None:
        statements += [
            sql.SQL(
                "CREATE VIEW {} AS SELECT id, key, embedding, {}::text AS revision, "
                "{}::text AS fingerprint FROM {}"
            ).format(
                view,
                sql.Literal(served["revision"]),
                sql.Literal(served["fingerprint"]),
                sql.Identifier(SCHEMA, table.name),
            ),
            sql.SQL("COMMENT ON VIEW {} IS {}").format(view, sql.Literal(served["model"])),
        ]
    texts = [statement.as_string(dbapi(conn)) for statement in statements]
    blocked = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(min(1.0, 0.05 * 2**attempt))
        try:
            with savepoint(conn):
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
                for text in texts:
                    conn.exec_driver_sql(text)
                conn.exec_driver_sql("SET LOCAL lock_timeout = DEFAULT")
            return
        except sa.exc.OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) != "55P03":  # lock_not_available
                raise
            blocked = _blockers(conn, schema, alias)
    raise StoreError(
        f"the view {schema}.{alias} stayed locked through {attempts} attempts of "
        f"{lock_timeout_ms} ms (held by {blocked}); the alias is unchanged: end that "
        "transaction, or raise pgvector.lock_attempts"
    )


def _blockers(conn: sa.Connection, schema: str, alias: str) -> str:
    """Who holds a lock on the view: each backend's pid, user, application and state."""
    rows = conn.exec_driver_sql(
        "SELECT a.pid, a.usename, a.application_name, a.state, "
        "extract(epoch FROM now() - a.xact_start) FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.relation = to_regclass(%s) AND l.granted AND a.pid <> pg_backend_pid()",
        (psycopg.sql.Identifier(schema, alias).as_string(dbapi(conn)),),
    ).all()
    if not rows:
        return "a transaction that has since ended"
    return ", ".join(
        f"pid {pid} ({user}{' ' + app if app else ''}, {state}, transaction open {age:.0f} s)"
        for pid, user, app, state, age in rows
    )


# ---- the store ----------------------------------------------------------------------------------


def view_schema(config: Config) -> str:
    """``pgvector.view_schema``, a plain SQL name (it is written into DDL)."""
    schema = config.require("pgvector.view_schema")
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
        raise ConfigError(
            f"option 'pgvector.view_schema' must be a lowercase SQL name (letters, digits, _), "
            f"got {schema!r}"
        )
    return schema


class PgvectorStore:
    """Indexes as tables in the history database; the alias a view (module docstring)."""

    name = PGVECTOR

    def __init__(self, host: Host) -> None:
        self.host = host

    def check(self) -> None:
        view_schema(self.host.config)
        with self.host.engine.connect() as conn:
            check_database(conn, safe_url(self.host.config.url))

    def check_spec(self, spec: str, dim: int) -> None:
        Spec.parse(spec).check_dim(dim)

    def create(self, conn: sa.Connection, record: IndexRecord) -> None:
        create(conn, table_of(record))

    def build(self, record: IndexRecord, seed: int) -> TableBuild:
        return TableBuild(self, record)

    def open(self, record: IndexRecord) -> Opened:
        return Opened(self.host.engine, table_of(record))

    def verify(self, record: IndexRecord) -> None:
        with self.host.engine.connect() as conn:
            check_index(conn, table_of(record), present=True)

    def written(self, conn: sa.Connection, record: IndexRecord) -> None:
        # A table being built gets its rows from the backfill, which replays the journal.
        if record.state != catalog.State.BUILDING:
            self.catch_up(conn, record)

    def point(
        self,
        conn: sa.Connection,
        alias: str,
        record: IndexRecord | None,
        before: IndexRecord | None,
    ) -> None:
        config = self.host.config
        mine = record if record is not None and record.store == PGVECTOR else None
        served = {}
        if mine is not None:
            served = {
                "revision": mine.revision,
                "fingerprint": mine.fingerprint,
                "model": mine.model,
            }
        point_view(
            conn,
            view_schema(config),
            alias,
            table_of(mine) if mine is not None else None,
            served,
            config.get_int("pgvector.lock_timeout_ms"),
            config.get_int("pgvector.lock_attempts"),
        )
        if mine is not None:  # writes it missed (retired past its holdover) go in first
            docids.lock_alias(conn, alias, create=False)
            self.catch_up(conn, catalog.get_index(conn, mine.id))

    def drop(self, record: IndexRecord) -> None:
        with self.host.engine.begin() as conn:
            drop(conn, table_of(record).path)

    def catch_up(
        self, conn: sa.Connection, record: IndexRecord, encode: Encode | None = None
    ) -> None:
        """Put into ``record``'s table the changes journaled since its ``base_seq``, embedding
        those journaled without its vectors (with ``encode``, default: its own model), and
        record what it holds then (its manifest), as a compaction does for a file. The caller
        holds the alias's lock."""
        tail = journal.tail(conn, record.alias, record.id, record.base_seq, record.dim)
        if not tail.changes:
            return
        tail.fill(encode or (lambda texts: self.host.embedder_of(record).encode_documents(texts)))
        apply(conn, table_of(record), record.alias, tail)
        hashes = [manifest.content_hash(text) for text in tail.texts]
        manifest.set_held(conn, record.id, tail.upsert_ids, hashes, tail.deleted_ids)
        catalog.set_base_seq(conn, record.id, tail.last_seq)


class TableBuild:
    """Rows into the index's table by COPY, in each checkpoint's transaction (nothing to drop
    after a kill: they roll back with it); the ANN index built once at the end, then checked."""

    def __init__(self, store: PgvectorStore, record: IndexRecord) -> None:
        self.store = store
        self.record = record
        self.table = table_of(record)

    def truncate(self, rows: int) -> None:
        pass

    def append(
        self, conn: sa.Connection, ids: np.ndarray, vectors: np.ndarray, keys: list[str] | None
    ) -> None:
        put(
            conn,
            self.table,
            ids,
            keys_of(conn, self.record.alias, ids) if keys is None else keys,
            vectors,
        )

    def distinct_ids(self, rows: int) -> int:
        # Asked once the stream is done: a repeated key replaced its row.
        with self.store.host.engine.connect() as conn:
            return count(conn, self.table.path)

    def remove(self, conn: sa.Connection) -> None:
        drop(conn, self.table.path)

    def finish(
        self,
        deleted_ids: np.ndarray,
        base_seq: int,
        encode: Encode,
        on_ready: Callable[[sa.Connection], None],
    ) -> tuple[Searchable, np.ndarray]:
        host, record = self.store.host, self.record
        cap = host.config.get_int("pgvector.build_memory_mb") << 20
        with host.begin() as conn:
            remove(conn, self.table.path, deleted_ids)
            build_index(conn, self.table, count(conn, self.table.path), cap)
            check_index(conn, self.table)
        with host.begin() as conn:
            # Writers journaled this shadow's vectors while its index was built: they go in
            # under the lock, so from the ready state on, the table itself is current.
            docids.lock_alias(conn, record.alias, create=False)
            on_ready(conn)
            catalog.set_base_seq(conn, record.id, base_seq)
            self.store.catch_up(conn, catalog.get_index(conn, record.id), encode)
            catalog.update_index(
                conn,
                record.id,
                state=catalog.State.READY,
                path=self.table.path,
                ntotal=count(conn, self.table.path),
            )
            ids = ids_of(conn, self.table.path)
        return self.store.open(record), ids
