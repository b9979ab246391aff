"""Indexes in PostgreSQL with pgvector: a table per index, the alias a view.

Each index is a table ``embedmig.index_<id>`` (document id, key, vector) in the history database,
so its rows, the catalog and the history commit in the same transactions: a backfill's batch with
its checkpoint, a write with its journal row, a swap with its history row. The alias is a view
(``search.<alias>`` by default) over the live table, replaced inside the swap's transaction, so an
SQL client reads the old index or the new one, never a mix. The ANN index is built once, after the
rows; an index becomes ``ready`` only once PostgreSQL says it is valid and the reader's query uses
it (EXPLAIN).

Scores are inner products, as in the FAISS store (``<#>`` is the negative inner product): equal to
the cosine for a normalizing embedder.
"""

from __future__ import annotations

import functools
import json
import math
import re
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sqlalchemy as sa

from embedmig.config import Config
from embedmig.errors import ConfigError, StoreError
from embedmig.history.db import safe_url
from embedmig.store import catalog, docids, journal, manifest
from embedmig.store.catalog import IndexRecord
from embedmig.store.journal import Tail
from embedmig.store.stores import PGVECTOR, Encode, Host, Searchable

SCHEMA = "embedmig"  # the tables of indexes
_METHODS: dict[str, dict[str, tuple[int | None, int, int]]] = {
    # method: {parameter: (default, low, high)}; None: sized from the rows at build time
    "hnsw": {"m": (16, 2, 100), "ef_construction": (64, 4, 1000), "ef_search": (40, 1, 1000)},
    "ivfflat": {"lists": (None, 1, 32768), "probes": (None, 1, 32768)},
    "exact": {},
}
_TYPES = {"vector": (4, 2000, "<f4"), "halfvec": (2, 4000, "<f2")}  # bytes, max ANN dims, dtype
_MAX_DIM = 16000  # pgvector's limit for a column
_COPY_HEADER = b"PGCOPY\n\xff\r\n\0" + b"\0" * 8
_COPY_TRAILER = b"\xff\xff"


@dataclass(frozen=True)
class Spec:
    """A revision's ``pgvector_index``: the column type, the ANN method and its parameters, in
    one string such as ``"hnsw"``, ``"halfvec,hnsw,m=32,ef_search=100"``, ``"ivfflat,lists=1000,
    probes=32"`` or ``"exact"`` (no ANN index: every search scans the table)."""

    method: str
    type: str = "vector"
    params: dict[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Spec:
        parts = [part.strip() for part in str(text).split(",") if part.strip()]
        kind = "vector"
        if parts and parts[0] in _TYPES:
            kind = parts.pop(0)
        if not parts or parts[0] not in _METHODS:
            raise ConfigError(
                f"pgvector index {text!r}: name a method first, one of "
                f"{', '.join(_METHODS)} (optionally after the type: vector or halfvec)"
            )
        method = parts.pop(0)
        allowed = _METHODS[method]
        params: dict[str, int] = {}
        for part in parts:
            name, eq, value = part.partition("=")
            name = name.strip()
            if not eq or name not in allowed:
                known = ", ".join(allowed) or "none"
                raise ConfigError(
                    f"pgvector index {text!r}: {part!r} is not a parameter of {method} "
                    f"(its parameters: {known}, as name=integer)"
                )
            _, low, high = allowed[name]
            if not re.fullmatch(r"\d+", value.strip()) or not low <= int(value) <= high:
                raise ConfigError(
                    f"pgvector index {text!r}: {name} must be an integer from {low} to {high}"
                )
            params[name] = int(value)
        return cls(method, kind, params)

    def __str__(self) -> str:
        head = [self.type] if self.type != "vector" else []
        return ",".join([*head, self.method, *(f"{k}={v}" for k, v in self.params.items())])

    def value(self, name: str, rows: int = 0) -> int:
        """A parameter, given or defaulted; IVF's are sized from the rows as pgvector advises
        (lists: rows / 1000 up to a million rows, their square root beyond; probes: the square
        root of the lists)."""
        if name in self.params:
            return self.params[name]
        default = _METHODS[self.method][name][0]
        if default is not None:
            return int(default)
        lists = self.params.get("lists") or max(
            1, rows // 1000 if rows <= 1_000_000 else math.isqrt(rows)
        )
        return lists if name == "lists" else max(1, math.isqrt(lists))

    def check_dim(self, dim: int) -> None:
        limit = _TYPES[self.type][1] if self.method != "exact" else _MAX_DIM
        if dim > limit:
            hint = " (halfvec indexes up to 4,000)" if self.type == "vector" else ""
            raise ConfigError(
                f"pgvector cannot index {dim}-dimensional {self.type} columns with {self.method}: "
                f"at most {limit:,}{hint}"
            )

    @property
    def ops(self) -> str:
        return f"{self.type}_ip_ops"


@dataclass(frozen=True)
class Table:
    """One index's table."""

    index_id: int
    dim: int
    spec: Spec

    @property
    def name(self) -> str:
        return f"index_{self.index_id:06d}"

    @property
    def qualified(self) -> str:
        return f'"{SCHEMA}"."{self.name}"'

    @property
    def path(self) -> str:
        """How the catalog records where the index lives."""
        return f"{SCHEMA}.{self.name}"


# ---- the database -----------------------------------------------------------------------------


def check_database(conn: sa.Connection, url: str) -> None:
    """Refuse a history database that cannot hold indexes: not PostgreSQL through psycopg, or
    without the vector extension."""
    if conn.dialect.name != "postgresql":
        raise ConfigError(
            f"index_store = pgvector keeps indexes in the history database, which must then be "
            f"PostgreSQL with pgvector (CREATE EXTENSION vector); {url} is {conn.dialect.name}"
        )
    if conn.dialect.driver != "psycopg":
        raise ConfigError(
            f"index_store = pgvector loads rows with psycopg 3's COPY: write the history URL as "
            f"postgresql+psycopg://... (it is {conn.dialect.driver})"
        )
    version = conn.exec_driver_sql(
        "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
    ).scalar()
    if version is None:
        raise ConfigError(
            "the history database has no vector extension: run CREATE EXTENSION vector; in it "
            "(as a superuser, once) for index_store = pgvector"
        )
    if tuple(int(p) for p in re.findall(r"\d+", str(version))[:2]) < (0, 7):
        raise ConfigError(f"pgvector {version} is too old for embedmig: 0.7 or later is needed")


def create(conn: sa.Connection, table: Table) -> None:
    """The empty table of an index being built (replacing any left by an abandoned build)."""
    conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{SCHEMA}"')
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table.qualified}")
    conn.exec_driver_sql(
        f"CREATE TABLE {table.qualified} (id bigint PRIMARY KEY, key text NOT NULL, "
        f"embedding {table.spec.type}({table.dim}) NOT NULL)"
    )


def drop(conn: sa.Connection, table_path: str) -> None:
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {_quoted(table_path)}")


def exists(conn: sa.Connection, table_path: str) -> bool:
    return (
        conn.exec_driver_sql("SELECT to_regclass(%s)", (_quoted(table_path),)).scalar() is not None
    )


def put(
    conn: sa.Connection, table: Table, ids: np.ndarray, keys: Sequence[str], vectors: np.ndarray
) -> None:
    """Insert or replace rows, in the caller's transaction: for a repeated id the last row wins.

    Rows are deleted by id, then written with COPY (binary), which is several times faster than
    INSERT and needs no staging table for the upsert."""
    if len(ids) == 0:
        return
    if vectors.shape != (len(ids), table.dim):
        raise StoreError(f"vectors of shape {vectors.shape} do not match dimension {table.dim}")
    keep = docids.last_occurrence(np.asarray(ids, dtype=np.int64))
    ids = np.asarray(ids, dtype=np.int64)[keep]
    keys = [key for key, kept in zip(keys, keep, strict=True) if kept]
    remove(conn, table.path, ids)
    cursor = _raw(conn).cursor()
    with cursor.copy(
        f"COPY {table.qualified} (id, key, embedding) FROM STDIN (FORMAT BINARY)"
    ) as copy:
        copy.write(_copy_rows(ids, keys, vectors[keep], table.spec.type))


def apply(conn: sa.Connection, table: Table, alias: str, tail: Tail) -> None:
    """A journal tail (its vectors filled) into the table, in the caller's transaction."""
    remove(conn, table.path, tail.deleted_ids)
    put(conn, table, tail.upsert_ids, keys_of(conn, alias, tail.upsert_ids), tail.vectors)


def keys_of(conn: sa.Connection, alias: str, ids: np.ndarray) -> list[str]:
    """The document keys of ``ids``, in order."""
    described = docids.describe_ids(conn, alias, [int(i) for i in ids])
    return [described[int(i)].key for i in ids]


def remove(conn: sa.Connection, table_path: str, ids: np.ndarray) -> None:
    if len(ids):
        conn.exec_driver_sql(
            f"DELETE FROM {_quoted(table_path)} WHERE id = ANY(%s)",
            ([int(i) for i in ids],),
        )


def count(conn: sa.Connection, table_path: str) -> int:
    return int(conn.exec_driver_sql(f"SELECT count(*) FROM {_quoted(table_path)}").scalar() or 0)


def ids_of(conn: sa.Connection, table_path: str) -> np.ndarray:
    rows = conn.exec_driver_sql(f"SELECT id FROM {_quoted(table_path)} ORDER BY id").all()
    return np.array([row[0] for row in rows], dtype=np.int64)


def contents(conn: sa.Connection, table: Table) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of every row, ids ascending."""
    rows = conn.exec_driver_sql(
        f"SELECT id, embedding::text FROM {table.qualified} ORDER BY id"
    ).all()
    return np.array([row[0] for row in rows], dtype=np.int64), _parse(
        [row[1] for row in rows], table.dim
    )


def _parse(texts: Sequence[str], dim: int) -> np.ndarray:
    """Vectors from their text form (``[1,2,3]``): one parse for all of them."""
    if not texts:
        return np.empty((0, dim), np.float32)
    joined = ",".join(text[1:-1] for text in texts)
    return np.array(joined.split(","), dtype=np.float32).reshape(len(texts), dim)


# ---- the ANN index ------------------------------------------------------------------------------


def build_index(conn: sa.Connection, table: Table, rows: int, memory_cap: int) -> None:
    """Build the ANN index once, after the rows, with ``maintenance_work_mem`` sized so the graph
    fits in memory (pgvector builds far slower once it does not), capped by ``memory_cap``."""
    spec = table.spec
    if spec.method == "exact":
        return
    needed = _build_memory(spec, table.dim, rows)
    memory_mb = max(64, min(memory_cap, needed) // (1 << 20))
    conn.exec_driver_sql(f"SET LOCAL maintenance_work_mem = '{memory_mb}MB'")
    # A resumed build may find the index a killed run built before it was marked ready.
    conn.exec_driver_sql(f'DROP INDEX IF EXISTS "{SCHEMA}"."{table.name}_ann"')
    if spec.method == "hnsw":
        options = f"m = {spec.value('m')}, ef_construction = {spec.value('ef_construction')}"
    else:
        options = f"lists = {spec.value('lists', rows)}"
    conn.exec_driver_sql(
        f'CREATE INDEX "{table.name}_ann" ON {table.qualified} USING {spec.method} '
        f"(embedding {spec.ops}) WITH ({options})"
    )


def check_index(conn: sa.Connection, table: Table, *, present: bool = False) -> None:
    """Refuse an index PostgreSQL does not consider valid, or that the readers' query would not
    use (an operator class that does not match the operator skips it, silently); with
    ``present``, first a missing table."""
    if present and not exists(conn, table.path):
        raise StoreError(f"the table {table.path} of index #{table.index_id} is missing")
    if table.spec.method == "exact":
        return
    valid = conn.exec_driver_sql(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
        (SCHEMA, f"{table.name}_ann"),
    ).scalar()
    if valid is None:
        raise StoreError(f"the {table.spec.method} index of {table.path} is missing")
    if not valid:
        raise StoreError(
            f"the {table.spec.method} index of {table.path} is not valid (pg_index.indisvalid "
            "is false: a build failed or was interrupted); rebuild it with the upgrade"
        )
    with _savepoint(conn):
        # Whether the index can serve the query at all, whatever the table's size: a tiny
        # table is cheaper to scan, which is no fault of the index.
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        raw = _typed(_raw(conn), table.spec.type)
        plan = raw.execute(
            f"EXPLAIN (FORMAT JSON) {_knn_sql(table.qualified)}",
            {"q": _Query.of(np.zeros(table.dim), table.spec.type), "k": 10},
        ).fetchone()
    if f"{table.name}_ann" not in str(plan):
        raise StoreError(
            f"the readers' query does not use the {table.spec.method} index of {table.path} "
            f"(EXPLAIN shows no scan of {table.name}_ann); its operator class must be "
            f"{table.spec.ops}"
        )


def _build_memory(spec: Spec, dim: int, rows: int) -> int:
    """Bytes the index takes while it is built: pgvector's in-memory graph holds each vector and,
    for HNSW, up to 2m neighbours on layer 0 (plus the upper layers, a small share)."""
    vector = _TYPES[spec.type][0] * dim + 8
    per_row = vector + (2 * spec.value("m") * 10 + 96 if spec.method == "hnsw" else 16)
    return int(rows * per_row * 1.2)


# ---- searching ----------------------------------------------------------------------------------


def search(
    raw: Any,
    table: Table,
    queries: np.ndarray,
    k: int,
    alias: str | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[int, docids.DocInfo]]:
    """Top-``k`` scores and ids per query, like ``files.search``: as many columns as the longest
    answer (at most the rows the table holds now: writers change it), rows shorter than that
    padded with id -1 and score -inf; one statement per query on the psycopg connection ``raw``
    (autocommit: one round trip), the query vector sent in binary, with the search parameters of
    the revision's index. With ``alias``, the documents found too (key, snippet, metadata),
    joined in the same statement."""
    if len(queries) == 0 or k < 1:
        empty = np.empty((len(queries), 0), np.int64)
        return np.empty((len(queries), max(k, 0)), np.float32), empty, {}
    _search_settings(raw, table.spec, k)
    statement = _statement(table.qualified, alias is not None)
    cursor = raw.cursor()
    answers = []
    for query in np.asarray(queries, dtype=np.float32):
        params = {"q": _Query.of(query, table.spec.type), "k": k, "alias": alias}
        answers.append(cursor.execute(statement, params).fetchall())
    width = max(1, max(len(rows) for rows in answers))
    scores = np.full((len(queries), width), -np.inf, dtype=np.float32)
    ids = np.full((len(queries), width), -1, dtype=np.int64)
    found: dict[int, docids.DocInfo] = {}
    for row, rows in enumerate(answers):
        if rows:
            ids[row, : len(rows)] = [r[0] for r in rows]
            scores[row, : len(rows)] = [r[1] for r in rows]
        for doc_id, _, *doc in rows:
            if doc and doc[0] is not None:
                found[doc_id] = docids.DocInfo(
                    doc[0], doc[1], json.loads(doc[2]) if doc[2] else None
                )
    return scores, ids, found


@functools.lru_cache(maxsize=256)
def _statement(relation: str, with_documents: bool) -> str:
    statement = _knn_sql(relation)
    if not with_documents:
        return statement
    return (
        f"SELECT n.id, n.score, d.key, d.snippet, d.meta FROM ({statement}) AS n "
        "LEFT JOIN embedmig_doc d ON d.alias = %(alias)s AND d.id = n.id ORDER BY n.score DESC"
    )


class _Query:
    """A query vector in the binary form of its column type (``vector``: float4; ``halfvec``:
    float2), so neither side formats or parses text."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    @classmethod
    def of(cls, vector: np.ndarray, kind: str) -> _Query:
        dtype = _TYPES[kind][2].replace("<", ">")
        head = struct.pack(">HH", len(vector), 0)
        return cls(head + np.ascontiguousarray(vector).astype(dtype).tobytes())


def _typed(raw: Any, kind: str) -> Any:
    """``raw``, able to send ``_Query`` parameters as ``kind`` (its type's oid, looked up once)."""
    registered = raw.__dict__.setdefault("_embedmig_types", set())
    if kind not in registered:
        import psycopg
        from psycopg.adapt import Dumper
        from psycopg.types import TypeInfo

        info = TypeInfo.fetch(raw, kind)
        if info is None:
            raise StoreError(f"the database has no type {kind}: is the vector extension there?")

        class QueryDumper(Dumper):
            format = psycopg.pq.Format.BINARY
            oid = info.oid

            def dump(self, obj: _Query) -> bytes:
                return obj.data

        raw.adapters.register_dumper(_Query, QueryDumper)
        registered.add(kind)
    return raw


class Opened:
    """An index table opened for searching, as evaluation, forecasts and readers search a FAISS
    index (``store.stores.Searchable``). Each thread searches on a connection of its own, kept
    open in autocommit with the index's search parameters set once: one round trip a query."""

    def __init__(self, engine: sa.Engine, table: Table) -> None:
        self.engine = engine
        self.table = table
        with engine.connect() as conn:
            if not exists(conn, table.path):
                raise StoreError(f"the table {table.path} of index #{table.index_id} is missing")
            self.ntotal = count(conn, table.path)
        self._local = threading.local()
        self._connections: list[Any] = []
        weakref.finalize(self, _close_all, self._connections)

    def search(
        self, queries: np.ndarray, k: int, threads: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        scores, ids, _ = self.search_documents(queries, k, None)
        return scores, ids

    def search_documents(
        self, queries: np.ndarray, k: int, alias: str | None
    ) -> tuple[np.ndarray, np.ndarray, dict[int, docids.DocInfo]]:
        """``search``, with ``alias``'s documents found (see ``search``)."""
        import psycopg

        raw = self._connection()
        try:
            return search(_typed(raw, self.table.spec.type), self.table, queries, k, alias)
        except psycopg.Error as exc:
            self._local.raw = None  # the next search connects again
            raw.close()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreError(f"searching {self.table.path} failed: {first}") from None

    def _connection(self) -> Any:
        raw = getattr(self._local, "raw", None)
        if raw is None or raw.closed:
            import psycopg

            args, options = self.engine.dialect.create_connect_args(self.engine.url)
            # Unprepared: a prepared statement's generic plan joins the documents more slowly
            # than a plan made for each query (measured: 1.51 against 1.38 ms at 100k).
            raw = psycopg.connect(*args, **options, autocommit=True, prepare_threshold=None)
            self._local.raw = raw
            self._connections.append(raw)
        return raw

    def reconstruct_batch(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids``, in order (each must be in the table)."""
        with self.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                f"SELECT id, embedding::text FROM {self.table.qualified} WHERE id = ANY(%s)",
                ([int(i) for i in ids],),
            ).all()
        found = {int(doc_id): text for doc_id, text in rows}
        missing = [int(i) for i in ids if int(i) not in found]
        if missing:
            raise StoreError(f"{self.table.path} holds no document #{missing[0]}")
        return _parse([found[int(i)] for i in ids], self.table.dim)


def _close_all(connections: list[Any]) -> None:
    for raw in connections:
        raw.close()


def _search_settings(raw: Any, spec: Spec, k: int) -> None:
    """The index's search parameters on ``raw``, for the session, set only when they change."""
    if spec.method == "hnsw":
        # HNSW returns at most ef_search rows: a k above it would come back short.
        wanted = f"SET hnsw.ef_search = {max(spec.value('ef_search'), k)}"
    elif spec.method == "ivfflat":
        wanted = f"SET ivfflat.probes = {spec.value('probes')}"
    else:
        return
    if getattr(raw, "_embedmig_settings", None) != wanted:
        raw.execute(wanted)
        raw._embedmig_settings = wanted


def _knn_sql(relation: str) -> str:
    """The readers' query: ``ORDER BY`` the operator itself, which an index scan serves (ordering
    by an expression of it, such as ``1 - distance``, silently scans the whole table). The query
    vector is one parameter of the column's type, sent once."""
    return (
        f"SELECT id, -(embedding <#> %(q)s) AS score FROM {relation} "
        "ORDER BY embedding <#> %(q)s LIMIT %(k)s"
    )


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
    view = f'"{schema}"."{alias}"'
    statements = [f'CREATE SCHEMA IF NOT EXISTS "{schema}"', f"DROP VIEW IF EXISTS {view}"]
    if table is not None:
        columns = ", ".join(
            f"{_quote_literal(served[name])}::text AS {name}"
            for name in ("revision", "fingerprint")
        )
        statements += [
            f"CREATE VIEW {view} AS SELECT id, key, embedding, {columns} FROM {table.qualified}",
            f"COMMENT ON VIEW {view} IS {_quote_literal(served['model'])}",
        ]
    blocked = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(min(1.0, 0.05 * 2**attempt))
        try:
            with _savepoint(conn):
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
                for statement in statements:
                    conn.exec_driver_sql(statement)
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
        (f'"{schema}"."{alias}"',),
    ).all()
    if not rows:
        return "a transaction that has since ended"
    return ", ".join(
        f"pid {pid} ({user}{' ' + app if app else ''}, {state}, transaction open {age:.0f} s)"
        for pid, user, app, state, age in rows
    )


# ---- helpers ------------------------------------------------------------------------------------


def _raw(conn: sa.Connection) -> Any:
    """The psycopg connection under ``conn``, in the same transaction."""
    return conn.connection.dbapi_connection


@contextmanager
def _savepoint(conn: sa.Connection) -> Iterator[None]:
    with conn.begin_nested():
        yield


def _quoted(table_path: str) -> str:
    schema, _, name = table_path.partition(".")
    if schema != SCHEMA or not re.fullmatch(r"index_\d+", name):
        raise StoreError(f"{table_path!r} is not a table of embedmig's pgvector store")
    return f'"{schema}"."{name}"'


def _quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _copy_rows(ids: np.ndarray, keys: Sequence[str], vectors: np.ndarray, kind: str) -> bytes:
    """Rows in COPY's binary format: per row the field count, then each field's length and
    bytes (bigint; text; a vector is its dimension, a reserved int16, then the floats)."""
    dim = vectors.shape[1]
    width, _, dtype = _TYPES[kind]
    body = np.ascontiguousarray(vectors, dtype=np.float32).astype(dtype.replace("<", ">"))
    vector_head = struct.pack(">iHH", 4 + width * dim, dim, 0)
    parts = [_COPY_HEADER]
    for doc_id, key, row in zip(ids.tolist(), keys, body, strict=True):
        encoded = key.encode("utf-8")
        parts.append(struct.pack(">hiqi", 3, 8, doc_id, len(encoded)))
        parts.append(encoded)
        parts.append(vector_head)
        parts.append(row.tobytes())
    parts.append(_COPY_TRAILER)
    return b"".join(parts)


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


def table_of(record: IndexRecord) -> Table:
    """The table of a pgvector index."""
    return Table(record.id, record.dim, Spec.parse(record.factory))


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
