"""Revision scripts on top of alembic's ScriptDirectory and RevisionMap.

Alembic owns the graph: loading ``versions/``, partial ids, ``head``/``heads``/``base``,
``+N``/``-N``, ``branch@head`` and Mako generation. This module adds what an embedmig revision is
(alias, old and new embedders, gates, index factory) and checks it, and turns alembic's errors
into ``ScriptError``. Each alias is one branch of the graph, labelled with the alias name.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from alembic.script import Script, ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError

from embedmig.config import Config
from embedmig.embedders import Embedder
from embedmig.errors import ConfigError, ScriptError
from embedmig.gates import Gates
from embedmig.names import check_alias, check_revision_id
from embedmig.store.pgtables import Spec
from embedmig.store.stores import PGVECTOR, STORES


@dataclass(frozen=True)
class Revision:
    """One migration script, checked."""

    revision: str
    down_revision: str | None
    alias: str
    old: Embedder | None
    new: Embedder
    gates: Gates
    index_factory: str
    message: str
    path: Path
    upgrade: Callable[[Any], None]
    downgrade: Callable[[Any], None]
    index_store: str = "faiss"  # where its index lives: "faiss" or "pgvector"
    pgvector_index: str = "hnsw"  # with pgvector: the table's ANN index (``store.pgtables.Spec``)

    @property
    def index_spec(self) -> str:
        """What its store builds, as the catalog records it: a FAISS factory string or a
        pgvector index."""
        return self.pgvector_index if self.index_store == "pgvector" else self.index_factory


class ScriptDir:
    """The ``versions/`` of an environment, as embedmig revisions."""

    def __init__(self, config: Config) -> None:
        location = config.script_location
        if not (location / "script.py.mako").is_file() or not (location / "versions").is_dir():
            raise ConfigError(
                f"{location} is not an embedmig environment (no script.py.mako or versions/); "
                "run `embedmig init` to create one"
            )
        self.location = location
        self.default_store = config.require("index_store")
        if self.default_store not in STORES:
            raise ConfigError(
                f"option 'index_store' must be one of {', '.join(STORES)}, got "
                f"{self.default_store!r}"
            )
        self._scripts = ScriptDirectory(str(location), messaging_opts={"quiet": True})
        self._checked: dict[str, Revision] = {}

    # ---- reading -----------------------------------------------------------------------------

    def get(self, rev_id: str) -> Revision:
        with _alembic_errors():
            script = self._scripts.get_revision(rev_id)
        if script is None:
            raise ScriptError(f"no revision {rev_id!r}")
        return self._check(script)

    def resolve(self, target: str) -> list[Revision]:
        """Revisions named by ``target``: an id (or a unique prefix), ``heads``, ``ALIAS@head``."""
        _check_target(target)
        with _alembic_errors():
            scripts = self._scripts.revision_map.get_revisions(target)
        return [self._check(s) for s in scripts if s is not None]  # type: ignore[arg-type]

    def heads(self) -> list[Revision]:
        with _alembic_errors():
            heads = self._scripts.get_heads()
        return [self.get(head) for head in heads]

    def alias_head(self, alias: str) -> Revision | None:
        """The head of ``alias``'s chain, or None when the alias has no revision yet."""
        if alias not in self._branch_labels():
            return None
        with _alembic_errors():
            head = self._scripts.revision_map.get_current_head(alias)
        return self.get(head) if head else None

    def _all_ids(self) -> set[str]:
        with _alembic_errors():
            return {s.revision for s in self._scripts.walk_revisions()}

    def _branch_labels(self) -> set[str]:
        with _alembic_errors():
            return {label for s in self._scripts.walk_revisions() for label in s.branch_labels}

    # ---- paths between states ----------------------------------------------------------------

    def upgrade_path(self, target: str, current: Sequence[str]) -> list[Revision]:
        """Revisions to apply, in order, to go from ``current`` heads to ``target``."""
        _check_target(target)
        with _alembic_errors():
            scripts = self._scripts.revision_map.iterate_revisions(
                target, tuple(current), implicit_base=True
            )
            return [self._check(s) for s in reversed(list(scripts))]  # type: ignore[arg-type]

    def downgrade_path(self, target: str, current: Sequence[str]) -> list[Revision]:
        """Revisions to undo, in order, to go from ``current`` heads down to ``target``."""
        _check_target(target)
        relative = re.match(r"^(?:(.+)@)?-(\d+)$", target.strip())
        if relative:
            alias = relative.group(1)
            if alias is None and len(current) > 1:
                raise ScriptError(
                    f"downgrade {target} is ambiguous with several aliases at a revision; "
                    "name one, e.g. ALIAS@-1"
                )
            at = [rev for rev in current if alias is None or self.get(rev).alias == alias]
            if not at:
                where = f"alias {alias!r} is at base" if alias else "no alias is at a revision"
                raise ScriptError(f"nothing to roll back: {where} ({target})")
            steps = len(self._chain(at[0]))
            if int(relative.group(2)) > steps:
                raise ScriptError(
                    f"{target} goes below base: alias {self.get(at[0]).alias!r} is {steps} "
                    "revision(s) above it"
                )
        with _alembic_errors():
            scripts = self._scripts.revision_map.iterate_revisions(
                tuple(current), target, select_for_downgrade=True
            )
            return [self._check(s) for s in scripts]  # type: ignore[arg-type]

    def _chain(self, rev_id: str) -> list[str]:
        """``rev_id`` and the revisions below it, down to its alias's first."""
        chain = []
        at: str | None = rev_id
        while at is not None:
            chain.append(at)
            at = self.get(at).down_revision
        return chain

    # ---- writing -----------------------------------------------------------------------------

    def generate(
        self,
        *,
        rev_id: str,
        message: str,
        alias: str,
        old: Embedder | None,
        new: Embedder,
        index_factory: str,
        adapter: str | None = None,
        index_store: str | None = None,
        pgvector_index: str = "hnsw",
    ) -> Revision:
        """Write a revision for ``alias`` on top of its head, from script.py.mako (``old``
        defaults to the head's ``new``); with ``adapter`` (a map kind), an adapter revision."""
        check_alias(alias)
        check_revision_id(rev_id)
        store = index_store or self.default_store
        if store not in STORES:
            raise ConfigError(f"the index store must be one of {', '.join(STORES)}, got {store!r}")
        if store == PGVECTOR:
            pgvector_index = str(Spec.parse(pgvector_index))
        if rev_id in self._all_ids():
            raise ScriptError(f"revision {rev_id!r} already exists")
        head = self.alias_head(alias)
        if adapter is not None:
            from embedmig.migrate.fit import MapSpec

            MapSpec(adapter)  # a kind the upgrade could not fit fails here
            if head is None:
                raise ScriptError(
                    f"alias {alias!r} has no index yet: an adapter revision maps a new model into "
                    "a live index, so its first revision must build one (no --adapter)"
                )
        if head is None and old is not None:
            raise ScriptError(
                f"alias {alias!r} has no revision yet: its first revision builds its first index "
                "and takes no --old"
            )
        if head is not None and old is None:
            old = head.new
        with _alembic_errors():
            script = self._scripts.generate_revision(
                rev_id,
                message,
                head=f"{alias}@head" if head else "base",
                branch_labels=None if head else [alias],
                alias=alias,
                # Templates of projects made before the remote backends use the model names.
                old=old.model if old else None,
                new=new.model,
                old_embedder=old.source() if old else "None",
                new_embedder=new.source(),
                index_factory=index_factory,
                adapter=adapter,
                index_store=store,
                pgvector_index=pgvector_index,
            )
        if script is None:
            raise ScriptError(f"alembic wrote no script for {rev_id}")
        try:
            written = self._check(script)
            wanted = pgvector_index if store == PGVECTOR else index_factory.strip()
            if (written.index_store, written.index_spec) != (store, wanted):
                raise ScriptError(
                    f"{self.location / 'script.py.mako'} predates index stores: it did not write "
                    f"index_store = {store!r} with {wanted!r}; copy the index lines of "
                    "embedmig's template into it (docs/pgvector.md), or set index_store in the "
                    "config"
                )
            return written
        except ScriptError:
            # A script that cannot be loaded must not stay behind to break every later command.
            Path(script.path).unlink(missing_ok=True)
            raise

    # ---- checking ----------------------------------------------------------------------------

    def _check(self, script: Script) -> Revision:
        cached = self._checked.get(script.revision)
        if cached is not None:
            return cached
        module = script.module
        where = Path(script.path).name
        alias = _attr(module, "alias", str, where)
        check_alias(alias, f"{where}: alias")
        new = _attr(module, "new", Embedder, where)
        old = getattr(module, "old", None)
        if old is not None and not isinstance(old, Embedder):
            raise ScriptError(f"{where}: `old` must be an Embedder or None")
        gates = getattr(module, "gates", None) or Gates()
        if not isinstance(gates, Gates):
            raise ScriptError(f"{where}: `gates` must be a Gates(...)")
        factory = getattr(module, "index_factory", "Flat")
        if not isinstance(factory, str) or not factory.strip():
            raise ScriptError(f"{where}: `index_factory` must be a faiss index_factory string")
        store = getattr(module, "index_store", self.default_store)
        if store not in STORES:
            raise ScriptError(f"{where}: `index_store` must be one of {', '.join(STORES)}")
        pg_index = getattr(module, "pgvector_index", "hnsw")
        try:
            pg_index = str(Spec.parse(pg_index)) if isinstance(pg_index, str) else None
        except ConfigError as exc:
            raise ScriptError(f"{where}: `pgvector_index`: {exc}") from None
        if pg_index is None:
            raise ScriptError(f"{where}: `pgvector_index` must be a string such as 'hnsw'")
        down = script.down_revision
        if isinstance(down, (tuple, list)):
            raise ScriptError(f"{where}: merge revisions are not supported (one down_revision)")
        if down is None and old is not None:
            raise ScriptError(
                f"{where}: the first revision of alias {alias!r} must have old = None"
            )
        if down is not None:
            siblings = sorted(self._scripts.get_revision(down).nextrev)
            if len(siblings) > 1:
                raise ScriptError(
                    f"alias {alias!r} forks after {down}: {' and '.join(siblings)} all have "
                    f"down_revision = {down!r}; make each revise the one before it"
                )
            parent = self.get(down)
            if parent.alias != alias:
                raise ScriptError(
                    f"{where}: alias {alias!r} differs from {parent.alias!r} of its "
                    f"down_revision {down}"
                )
            if old is None:
                raise ScriptError(f"{where}: only an alias's first revision may have old = None")
        elif alias not in script.branch_labels:
            raise ScriptError(
                f"{where}: the first revision of {alias!r} needs branch_labels = ({alias!r},)"
            )
        revision = Revision(
            revision=script.revision,
            down_revision=down,
            alias=alias,
            old=old,
            new=new,
            gates=gates,
            index_factory=factory.strip(),
            index_store=store,
            pgvector_index=pg_index,
            message=(script.doc or "").strip(),
            path=Path(script.path),
            upgrade=_attr(module, "upgrade", Callable, where),
            downgrade=_attr(module, "downgrade", Callable, where),
        )
        self._checked[script.revision] = revision
        return revision


def load_env(config: Config) -> ModuleType:
    """The environment's env.py, which says where documents and queries come from."""
    path = config.script_location / "env.py"
    if not path.is_file():
        raise ConfigError(f"{path} is missing; run `embedmig init` to create an environment")
    spec = importlib.util.spec_from_file_location("embedmig_env", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise ScriptError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from None
    except Exception as exc:  # user code: report it on one line, whatever it raised
        raise ScriptError(f"{path} failed to load: {exc.__class__.__name__}: {exc}") from exc
    if not callable(getattr(module, "corpus", None)):
        raise ScriptError(f"{path} must define corpus(config, alias)")
    return module


def _attr(module: ModuleType, name: str, kind: Any, where: str) -> Any:
    if not hasattr(module, name):
        raise ScriptError(f"{where}: missing `{name}`")
    value = getattr(module, name)
    ok = callable(value) if kind is Callable else isinstance(value, kind)
    if not ok:
        raise ScriptError(f"{where}: `{name}` has the wrong type ({type(value).__name__})")
    return value


def _check_target(target: str) -> None:
    if not isinstance(target, str) or not target.strip():
        raise ScriptError(
            "empty target: name a revision, head, heads, base, ALIAS@head, ALIAS@-1, +N or -N"
        )


@contextlib.contextmanager
def _alembic_errors() -> Iterator[None]:
    """Alembic's and the scripts' own failures, as one-line ScriptErrors."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            yield
    except (RevisionError, CommandError) as exc:
        raise ScriptError(str(exc).strip().splitlines()[0]) from exc
    except UserWarning as exc:
        raise ScriptError(str(exc)) from exc
    except SyntaxError as exc:
        raise ScriptError(
            f"{Path(exc.filename or '?').name}:{exc.lineno}: syntax error: {exc.msg}"
        ) from None
    except ScriptError:
        raise
    except Exception as exc:  # a revision module's own code raised while alembic imported it
        where = _raising_script(exc)
        raise ScriptError(
            f"revision script {where or '(unknown)'} failed to load: "
            f"{exc.__class__.__name__}: {exc}"
        ) from exc


def _raising_script(exc: BaseException) -> str | None:
    """The file and line of the revision script whose own code raised ``exc``."""
    found = None
    for frame, line in traceback.walk_tb(exc.__traceback__):
        path = Path(frame.f_code.co_filename)
        if path.parent.name == "versions":
            found = f"{path.name}:{line}"
    return found
