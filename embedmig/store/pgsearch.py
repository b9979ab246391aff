"""Searching a pgvector index's table: the readers' query, and the check that its ANN index
serves it.

A search is one statement per query: ``ORDER BY embedding <#> q LIMIT k``, the query vector
sent in binary, on a connection per thread kept in autocommit, with the revision's search
parameters (``hnsw.ef_search``, ``ivfflat.probes``) set once.
"""

from __future__ import annotations

import functools
import json
import struct
import threading
import weakref
from typing import Any

import numpy as np
import sqlalchemy as sa

from embedmig.errors import StoreError
from embedmig.store import docids
from embedmig.store.pgtables import (
    SCHEMA,
    TYPES,
    Spec,
    Table,
    count,
    dbapi,
    exists,
    parse_vectors,
    savepoint,
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
    with savepoint(conn):
        # Whether the index can serve the query at all, whatever the table's size: a tiny
        # table is cheaper to scan, which is no fault of the index.
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        raw = _typed(dbapi(conn), table.spec.type)
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
        dtype = TYPES[kind][2].replace("<", ">")
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
        return parse_vectors([found[int(i)] for i in ids], self.table.dim)


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
