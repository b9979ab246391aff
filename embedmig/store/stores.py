"""The one small protocol every index store speaks, and what a store may ask of its project.

A store keeps the indexes of aliases: FAISS files (``store.filestore`` over ``store.files``, the
default: embedded, no server) or tables in PostgreSQL with pgvector (``store.pgvector`` over
``store.pgtables`` and ``store.pgsearch``). Each has one ``Store`` class; the rest of embedmig
reaches a store only through this protocol (the readers' views aside: ``serve.view`` applies the
journal to a FAISS file in memory, ``store.overlay``, and searches a table directly). docs/stores.md says how another engine
(one with native atomic aliases: Qdrant, OpenSearch, Milvus) becomes one module.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import sqlalchemy as sa

from embedmig.config import Config
from embedmig.store.catalog import IndexRecord

FAISS, PGVECTOR = "faiss", "pgvector"
STORES = (FAISS, PGVECTOR)
METRIC = "ip"  # every store scores by inner product: the cosine for normalized vectors

Encode = Callable[[list[str]], np.ndarray]


class Searchable(Protocol):
    """An index opened for searching: what evaluation, forecasts and readers search."""

    @property
    def ntotal(self) -> int:
        """How many documents it holds."""
        ...

    def search(
        self, queries: np.ndarray, k: int, threads: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` inner-product scores and ids per query: at most ``ntotal`` columns, rows
        shorter than that padded with id -1 and score -inf."""
        ...

    def reconstruct_batch(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids``, in order."""
        ...


class Build(Protocol):
    """One index being built by a backfill: rows in, batch by batch, then the index."""

    def truncate(self, rows: int) -> None:
        """Drop rows put after the checkpoint of ``rows`` rows (a killed run's last batch)."""
        ...

    def append(
        self, conn: sa.Connection, ids: np.ndarray, vectors: np.ndarray, keys: list[str] | None
    ) -> None:
        """Rows, durable once ``conn``'s transaction (which commits their checkpoint) commits;
        for a repeated id the last row wins. ``keys`` None: looked up by id."""
        ...

    def distinct_ids(self, rows: int) -> int:
        """How many different documents the first ``rows`` rows hold."""
        ...

    def finish(
        self,
        deleted_ids: np.ndarray,
        base_seq: int,
        encode: Encode,
        on_ready: Callable[[sa.Connection], None],
    ) -> tuple[Searchable, np.ndarray]:
        """Make the rows, less ``deleted_ids``, the index; mark it ready at journal position
        ``base_seq`` in a transaction that also runs ``on_ready``; return it opened, with the
        ids it holds. ``encode`` embeds changes journaled without this index's vectors."""
        ...

    def remove(self, conn: sa.Connection) -> None:
        """What an abandoned build put (``conn``: the transaction that unregisters it)."""
        ...


class Store(Protocol):
    """Where indexes live."""

    name: str

    def check(self) -> None:
        """Refuse (ConfigError) a project that cannot hold indexes here, before any work."""
        ...

    def check_spec(self, spec: str, dim: int) -> None:
        """Refuse a revision's index description for ``dim``-dimensional vectors, before any
        vector is computed."""
        ...

    def create(self, conn: sa.Connection, record: IndexRecord) -> None:
        """What a new index needs before its first rows, in the transaction registering it."""
        ...

    def build(self, record: IndexRecord, seed: int) -> Build:
        """The build of a registered index (resumed, if it was killed)."""
        ...

    def open(self, record: IndexRecord) -> Searchable: ...

    def verify(self, record: IndexRecord) -> None:
        """Refuse (StoreError) an index readers could not use, before an alias points at it."""
        ...

    def written(self, conn: sa.Connection, record: IndexRecord) -> None:
        """A write was journaled in ``conn``'s transaction, with vectors for ``record``: a store
        its readers read directly changes with it (FAISS readers apply the journal themselves)."""
        ...

    def point(
        self,
        conn: sa.Connection,
        alias: str,
        record: IndexRecord | None,
        before: IndexRecord | None,
    ) -> None:
        """Make the store's own alias show ``record`` (None: nothing), first in the swap's
        transaction, before any catalog row is locked (a store without aliases of its own does
        nothing)."""
        ...

    def drop(self, record: IndexRecord) -> None:
        """Delete an index, after the catalog marked it dropped."""
        ...


class Host(Protocol):
    """What a store may ask of the project it serves (``embedmig.environment.Environment``)."""

    config: Config

    @property
    def engine(self) -> sa.Engine: ...

    def index_path(self, alias: str, index_id: int, revision: str, generation: int = 0) -> Path: ...

    def stored_path(self, path: Path) -> str: ...

    def file_of(self, record: Any) -> Path: ...

    def begin(self) -> Any: ...

    def embedder_of(self, record: IndexRecord) -> Any: ...
