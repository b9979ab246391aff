"""One pgvector index's table: its column type and ANN index (``Spec``), its rows, and the ANN
index built once after them.

Each index is a table ``embedmig.index_<id>`` (document id, key, vector) in the history database,
written in the callers' transactions: a backfill's batch with its checkpoint, a write with its
journal row. ``store.pgsearch`` searches it; ``store.pgvector`` is the store around both.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa

from embedmig.errors import ConfigError, StoreError
from embedmig.store import docids
from embedmig.store.catalog import IndexRecord

if TYPE_CHECKING:
    from embedmig.store.journal import Tail

SCHEMA = "embedmig"  # the tables of indexes
_METHODS: dict[str, dict[str, tuple[int | None, int, int]]] = {
    # method: {parameter: (default, low, high)}; None: sized from the rows at build time
    "hnsw": {"m": (16, 2, 100), "ef_construction": (64, 4, 1000), "ef_search": (40, 1, 1000)},
    "ivfflat": {"lists": (None, 1, 32768), "probes": (None, 1, 32768)},
    "exact": {},
}
TYPES = {"vector": (4, 2000, "<f4"), "halfvec": (2, 4000, "<f2")}  # bytes, max ANN dims, dtype
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
        if parts and parts[0] in TYPES:
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
        limit = TYPES[self.type][1] if self.method != "exact" else _MAX_DIM
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


def table_of(record: IndexRecord) -> Table:
    """The table of a pgvector index."""
    return Table(record.id, record.dim, Spec.parse(record.factory))


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
    cursor = dbapi(conn).cursor()
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
    return np.array([row[0] for row in rows], dtype=np.int64), parse_vectors(
        [row[1] for row in rows], table.dim
    )


def parse_vectors(texts: Sequence[str], dim: int) -> np.ndarray:
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


def _build_memory(spec: Spec, dim: int, rows: int) -> int:
    """Bytes the index takes while it is built: pgvector's in-memory graph holds each vector and,
    for HNSW, up to 2m neighbours on layer 0 (plus the upper layers, a small share)."""
    vector = TYPES[spec.type][0] * dim + 8
    per_row = vector + (2 * spec.value("m") * 10 + 96 if spec.method == "hnsw" else 16)
    return int(rows * per_row * 1.2)


# ---- helpers ------------------------------------------------------------------------------------


def dbapi(conn: sa.Connection) -> Any:
    """The psycopg connection under ``conn``, in the same transaction."""
    return conn.connection.dbapi_connection


@contextmanager
def savepoint(conn: sa.Connection) -> Iterator[None]:
    with conn.begin_nested():
        yield


def _quoted(table_path: str) -> str:
    schema, _, name = table_path.partition(".")
    if schema != SCHEMA or not re.fullmatch(r"index_\d+", name):
        raise StoreError(f"{table_path!r} is not a table of embedmig's pgvector store")
    return f'"{schema}"."{name}"'


def _copy_rows(ids: np.ndarray, keys: Sequence[str], vectors: np.ndarray, kind: str) -> bytes:
    """Rows in COPY's binary format: per row the field count, then each field's length and
    bytes (bigint; text; a vector is its dimension, a reserved int16, then the floats)."""
    dim = vectors.shape[1]
    width, _, dtype = TYPES[kind]
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
