"""An opened project: configuration, history database, revision scripts, env.py and models.

Opened once per command and passed explicitly to everything that needs it (no module globals).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from embedmig import embedders
from embedmig.config import Config, EnvSettings
from embedmig.contracts import Contract, of_alias, unmatched
from embedmig.contracts import read as read_contracts
from embedmig.embedders import Embedder, LoadedEmbedder
from embedmig.errors import (
    ConfigError,
    EmbedderDrift,
    ScriptError,
    SourceError,
    StateError,
    StoreError,
)
from embedmig.history import db
from embedmig.names import safe_component
from embedmig.sources import Corpus, Document, Qrels
from embedmig.store import catalog, locks
from embedmig.store.catalog import AdapterRecord, IndexRecord
from embedmig.store.stores import PGVECTOR, Searchable, Store

log = logging.getLogger("embedmig")

if TYPE_CHECKING:
    from embedmig.embedders.adapted import AdaptedEmbedder
    from embedmig.script import ScriptDir


class Environment:
    """``create``: this command may create or upgrade the history database (an upgrade, a
    stamp); every other one needs it there already."""

    def __init__(self, config: Config, *, create: bool = False) -> None:
        self.config = config
        self.create = create
        self.progress = False  # long steps draw progress bars (the CLI, on a terminal)
        self._logged: dict[str, list[Document]] = {}
        self._contracts: list[Contract] | None = None
        self._embedders: list[LoadedEmbedder] = []
        self._lease: locks.Lease | None = None  # the migration locks this command holds
        self._stores: dict[str, Store] = {}

    @cached_property
    def engine(self) -> sa.Engine:
        return db.connect(self.config.url, create=self.create)

    def has_history(self) -> bool:
        """Whether there is a history database yet (a SQLite file is created by the first
        upgrade; a read-only command finds nothing recorded before then)."""
        path = db.sqlite_file(self.config.url)
        return path is None or path.exists()

    @cached_property
    def scripts(self) -> ScriptDir:
        from embedmig.script import ScriptDir  # alembic: only for commands that read revisions

        return ScriptDir(self.config)

    @cached_property
    def env_module(self) -> ModuleType:
        from embedmig.script import load_env

        return load_env(self.config)

    @cached_property
    def settings(self) -> EnvSettings:
        return EnvSettings.of(self.config)

    @property
    def batch_size(self) -> int:
        return self.settings.batch_size

    def corpus(self, alias: str) -> Corpus:
        docs: Iterable[Document] | None = self._call_env("corpus", alias, required=True)
        if docs is None:
            raise SourceError("env.py corpus() returned None; it must return documents")
        return Corpus(docs)

    def queries(self, alias: str) -> Iterable[Document] | None:
        if self.uses_query_log():
            return self.logged_queries(alias)
        queries: Iterable[Document] | None = self._call_env("queries", alias, required=False)
        return queries

    def contracts(self, alias: str) -> list[Contract] | None:
        """The golden queries of ``alias`` (``contracts = FILE``), read and checked once per
        command; None without a contracts file or when none of its lines applies to ``alias``."""
        every = self.all_contracts()
        return of_alias(every, alias) or None if every is not None else None

    def all_contracts(self) -> list[Contract] | None:
        """Every line of the contracts file, read and checked once; None without one."""
        path = self.config.path_option("contracts")
        if path is None:
            return None
        if self._contracts is None:
            self._contracts = read_contracts(path)
            self._warn_unmatched(path, self._contracts)
        return self._contracts

    def _warn_unmatched(self, path: Path, contracts: list[Contract]) -> None:
        """A line whose ``alias`` names no alias of this project is never checked: say so, as a
        typo in it would otherwise leave ``verify`` passing for ever."""
        aliases: set[str] = set()
        if self.has_history():
            with self.engine.connect() as conn:
                aliases |= set(catalog.versions(conn)) | {r.alias for r in catalog.indexes(conn)}
        # A broken script is for the command that needs the scripts to report.
        with contextlib.suppress(ScriptError):
            aliases |= {rev.alias for rev in self.scripts.heads()}
        for alias, ids in sorted(unmatched(contracts, aliases).items()):
            log.warning(
                "contracts file %s: %s name alias %r, which is no alias of this project "
                "(aliases: %s); they are never checked",
                path,
                ", ".join(map(repr, ids[:3])) + (", ..." if len(ids) > 3 else ""),
                alias,
                ", ".join(sorted(aliases)) or "none yet",
            )

    def uses_query_log(self) -> bool:
        """``queries = log`` (every logged query) or ``queries = log:N`` (the latest N)."""
        spec = self.config.get("queries") or ""
        return spec == "log" or spec.startswith("log:")

    def logged_queries(self, alias: str) -> list[Document]:
        """The latest distinct queries searchers logged for ``alias``, as evaluation queries;
        read once per command (its early check and its evaluation share the read)."""
        if alias not in self._logged:
            self._logged[alias] = self._read_logged_queries(alias)
        return self._logged[alias]

    def _read_logged_queries(self, alias: str) -> list[Document]:
        from embedmig.store import traffic

        spec = self.config.require("queries")
        count = spec.removeprefix("log:") if spec != "log" else None
        if count is not None and (not count.isdigit() or int(count) < 1):
            raise ConfigError(f"queries = {spec!r}: write log or log:N with N a positive integer")
        if self.config.get("qrels") is not None:
            raise ConfigError(
                "queries = log cannot be judged by qrels (logged queries have no ids): "
                "remove the qrels option or use a queries file"
            )
        with self.engine.connect() as conn:
            found = traffic.latest_queries(conn, alias, int(count) if count else None)
            counts = traffic.log_counts(conn, alias) if not found else None
        if counts is not None and counts.entries:
            raise ConfigError(
                f"queries = log: the query log of {alias!r} holds {counts.entries:,} queries as "
                "hashes only (searcher.log_text = false): it counts traffic but cannot be "
                "evaluated on"
            )
        if counts is not None:
            raise ConfigError(
                f"queries = log: the query log of {alias!r} is empty; set searcher.log_queries "
                "and let searchers serve traffic first"
            )
        return [
            Document(f"log-{sha & 0xFFFFFFFFFFFFFFFF:016x}", text, meta)
            for sha, text, meta in found
        ]

    def qrels(self, alias: str) -> Qrels | None:
        qrels: Qrels | None = self._call_env("qrels", alias, required=False)
        return qrels

    def _call_env(self, name: str, alias: str, *, required: bool) -> Any:
        function = getattr(self.env_module, name, None)
        if function is None:
            if required:
                raise ScriptError(f"env.py defines no {name}(config, alias)")
            return None
        try:
            return function(self.config, alias)
        except (SourceError, ScriptError):
            raise
        except Exception as exc:  # user glue code: any failure becomes one clear line
            raise SourceError(f"env.py {name}() failed: {exc.__class__.__name__}: {exc}") from exc

    def load_embedder(self, spec: Embedder, *, cache: bool = False) -> LoadedEmbedder:
        """``spec`` loaded; with ``cache`` (migrations), through the embedding cache when the
        configuration keeps one. Closed with the environment."""
        embedder = embedders.load(spec, self.config.root, self.settings.embedder)
        self._embedders.append(embedder)
        if cache and self.settings.cache_dir is not None:
            from embedmig.embedders.cache import EmbeddingCache

            embedder.cache = EmbeddingCache.open(
                self.settings.cache_dir, embedder, self.settings.probe_min_cosine
            )
        return embedder

    def check_drift(self, embedder: LoadedEmbedder, record: IndexRecord | AdapterRecord) -> None:
        """Raise EmbedderDrift if ``embedder``'s probes fell below ``probe.min_cosine`` of what
        ``record`` (an index, or the querying model of an adapter) was built with."""
        from embedmig.embedders import probes

        what = "index" if isinstance(record, IndexRecord) else "adapter"
        probes.check(
            record.probe,
            record.dim,
            embedder,
            self.settings.probe_min_cosine,
            f"{embedder.describe()}, the embedder of {what} #{record.id} of {record.alias!r},",
        )

    def recheck(self, embedder: LoadedEmbedder, record: IndexRecord, since: str) -> None:
        """Measure ``embedder``'s probes again and raise EmbedderDrift if they moved below
        ``probe.min_cosine`` of what ``record`` recorded ``since`` then: its vectors may come
        from two models. The cache, which may hold vectors of either, is emptied."""
        from embedmig.embedders import probes

        now = probes.remeasure(embedder)
        lowest = probes.against(record.probe, record.dim, embedder)  # reads ``now``
        if lowest is None or lowest >= self.settings.probe_min_cosine:
            return
        if embedder.cache is not None:
            embedder.cache.clear(now)
        raise EmbedderDrift(
            f"{embedder.describe()} changed {since}: lowest probe cosine {lowest:.4f} against "
            f"its probes then, below probe.min_cosine {self.settings.probe_min_cosine:g} (the "
            "model behind it changed, or it is not deterministic); nothing it returned since "
            f"was kept: index #{record.id} would mix two spaces. Re-run once it returns what "
            "it did",
            lowest=lowest,
            threshold=self.settings.probe_min_cosine,
        )

    @contextmanager
    def lock(self, aliases: Iterable[str], command: str, wait: float = 0.0) -> Iterator[None]:
        """Hold the migration locks of ``aliases`` (see ``store.locks``) with the configured
        lease; meanwhile every ``begin()`` transaction is fenced by them."""
        with locks.hold(
            self.engine, aliases, command, wait=wait, lease=self.settings.lock_lease
        ) as lease:
            outer, self._lease = self._lease, lease
            try:
                yield
            finally:
                self._lease = outer

    @contextmanager
    def begin(self) -> Iterator[sa.Connection]:
        """A transaction that changes state: while this command holds migration locks, it first
        checks they are still its own (LockLost), and commits only while they are."""
        with self.engine.begin() as conn:
            if self._lease is not None:
                self._lease.check(conn)
            yield conn

    def embedder_of(self, record: IndexRecord, *, cache: bool = False) -> LoadedEmbedder:
        """The embedder an index was built with, refusing one whose files or options changed
        since (StateError) or whose probes drifted (EmbedderDrift)."""
        embedder = self.load_embedder(Embedder.from_json(record.model), cache=cache)
        if embedder.fingerprint != record.fingerprint:
            raise StateError(
                f"{embedder.describe()} is not what index #{record.id} of {record.alias!r} was "
                "built with (its files, options or dimension changed); its vectors would not "
                "match new ones"
            )
        self.check_drift(embedder, record)
        return embedder

    def serving_embedder(
        self, record: IndexRecord, adapter: AdapterRecord | None, *, cache: bool = False
    ) -> LoadedEmbedder:
        """What embeds for ``record`` as its alias serves it: through ``adapter`` when an adapter
        revision is current, else the model that built it."""
        if adapter is None:
            return self.embedder_of(record, cache=cache)
        return self.adapted(adapter, cache=cache)

    def adapted(self, adapter: AdapterRecord, *, cache: bool = False) -> AdaptedEmbedder:
        """The querying model of ``adapter`` through its map (verified by its sha256), refusing
        a model whose files, options or probes changed since the map was fitted."""
        from embedmig.embedders.adapted import AdaptedEmbedder, Map
        from embedmig.store import files

        inner = self.load_embedder(Embedder.from_json(adapter.model), cache=cache)
        if inner.fingerprint != adapter.fingerprint:
            raise StateError(
                f"{inner.describe()} is not the model adapter #{adapter.id} of "
                f"{adapter.alias!r} was fitted for (its files, options or dimension changed)"
            )
        self.check_drift(inner, adapter)
        path = self.file_of(adapter)
        data = files.read_bytes(path, adapter.sha256, "adapter file")
        assert adapter.sha256 is not None
        return AdaptedEmbedder(inner, Map.from_bytes(data, str(path)), adapter.sha256)

    def adapter_path(self, alias: str, revision: str, sha256: str) -> Path:
        """Where an adapter's map lives: named by its content, so no rerun overwrites another."""
        folder = self.config.index_dir / safe_component(alias, "alias")
        return folder / f"{safe_component(revision, 'revision')}-{sha256[:16]}.map.npz"

    def index_path(self, alias: str, index_id: int, revision: str, generation: int = 0) -> Path:
        """Where an index file lives; compaction writes generation N (the journal position)."""
        folder = self.config.index_dir / safe_component(alias, "alias")
        suffix = f".g{generation}" if generation else ""
        return folder / f"{index_id:06d}-{safe_component(revision, 'revision')}{suffix}.faiss"

    def stored_path(self, path: Path) -> str:
        """How an index file's path is recorded: relative to ``index_dir``, so a project can move."""
        try:
            return path.relative_to(self.config.index_dir).as_posix()
        except ValueError:
            return str(path)

    def file_of(self, record: IndexRecord | AdapterRecord) -> Path:
        """Where the file of an index (or an adapter's map) is now (a recorded path is relative
        to ``index_dir``)."""
        if record.path is None:
            raise StoreError(f"#{record.id} of {record.alias!r} has no file")
        path = Path(record.path)
        if not path.is_absolute():
            return self.config.index_dir / path
        # Recorded absolute by an earlier version: if the project moved, it is in the index folder.
        moved = self.config.index_dir / record.alias / path.name
        return path if path.exists() or not moved.exists() else moved

    def store(self, name: str) -> Store:
        """The index store ``name`` (``index_store``) of this project."""
        if name not in self._stores:
            if name == PGVECTOR:
                from embedmig.store.pgvector import PgvectorStore

                self._stores[name] = PgvectorStore(self)
            else:
                from embedmig.store.filestore import FileStore  # FAISS: loaded on use

                self._stores[name] = FileStore(self)
        return self._stores[name]

    def open_index(self, record: IndexRecord) -> Searchable:
        """``record``'s index opened for searching, whatever its store (a FAISS file is verified
        by its sha256)."""
        return self.store(record.store).open(record)

    def verify_index(self, record: IndexRecord) -> None:
        """Refuse an index readers could not use (StoreError)."""
        self.store(record.store).verify(record)

    def drop_index(self, record: IndexRecord) -> None:
        """Delete an index's file or table (after the catalog marked it dropped)."""
        self.store(record.store).drop(record)

    def point_alias(
        self, conn: sa.Connection, alias: str, revision: str | None, record: IndexRecord | None
    ) -> IndexRecord | None:
        """``catalog.point_alias`` in the caller's transaction, after the stores of both indexes
        have pointed their own aliases (a view), first in the transaction as they must. Returns
        the index that was live."""
        before = catalog.live_index(conn, alias)
        for name in sorted({r.store for r in (before, record) if r is not None}):
            self.store(name).point(conn, alias, record, before)
        return catalog.point_alias(conn, alias, revision, record.id if record else None)

    def dispose(self) -> None:
        for embedder in self._embedders:
            embedder.close()
        self._embedders.clear()
        if "engine" in self.__dict__:
            self.engine.dispose()
