"""Runs revisions along a path: checks each one's preconditions, calls its upgrade/downgrade."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from embedmig.config import DEFAULT_SAMPLE
from embedmig.contracts import check_known
from embedmig.environment import Environment
from embedmig.errors import ConfigError, EmbedmigError, ScriptError, StateError
from embedmig.metrics.report import Report
from embedmig.migrate.context import MigrationContext
from embedmig.migrate.settings import MigrationSettings
from embedmig.script import Revision
from embedmig.store import catalog, docids


def upgrade(
    env: Environment,
    target: str,
    *,
    dry_run: bool = False,
    sample: int | float = DEFAULT_SAMPLE,
    force: bool = False,
    on_report: Callable[[Report], None] | None = None,
    wait: float = 0.0,
) -> list[Report]:
    """Apply every revision between the current state and ``target``; one report each.

    The aliases on the way are locked for the whole run (a dry run changes nothing: no lock).
    """
    # Every option the run reads, read now: a bad one fails before anything is embedded.
    env.settings  # noqa: B018
    settings = MigrationSettings.of(env.config)
    path, live = _upgrade_path(env, target)
    _check_logged_queries(env, path)
    for alias in {rev.alias for rev in path}:
        # A malformed contracts file, or one naming a document the live alias never had,
        # fails before anything is embedded.
        contracts = env.contracts(alias)
        if contracts and live.get(alias, _Serving(None)).index is not None:
            with env.engine.connect() as conn:
                keys = set().union(*(c.keys for c in contracts))
                check_known(contracts, docids.lookup_ids(conn, alias, keys), alias)
    _check_segment_field(env, path, settings.eval.segment_field)
    if not dry_run and path:
        with env.lock({rev.alias for rev in path}, "upgrade", wait):
            path, live = _upgrade_path(env, target)  # another run may have moved on meanwhile
            return _apply(env, path, live, settings, dry_run, sample, force, on_report)
    return _apply(env, path, live, settings, dry_run, sample, force, on_report)


@dataclass(frozen=True)
class _Serving:
    """What an alias serves: its live index, through an adapter's map if one is current."""

    index: catalog.IndexRecord | None
    adapter: catalog.AdapterRecord | None = None

    @property
    def fingerprint(self) -> str | None:
        """The fingerprint of the model its queries are embedded with."""
        if self.adapter is not None:
            return self.adapter.fingerprint
        return self.index.fingerprint if self.index is not None else None


def _check_logged_queries(env: Environment, path: list[Revision]) -> None:
    """With ``queries = log``, an empty or hash-only log fails before anything is embedded."""
    if not env.uses_query_log():
        return
    for alias in {rev.alias for rev in path if rev.old is not None}:
        env.logged_queries(alias)


def _check_segment_field(env: Environment, path: list[Revision], field: str | None) -> None:
    """``eval.segment_by = FIELD`` needs evaluation queries that carry it: said before anything
    is embedded, not after a backfill."""
    if field is None:
        return
    for alias in sorted({rev.alias for rev in path}):
        if env.uses_query_log() and all(r.old is None for r in path if r.alias == alias):
            continue  # an alias's first index is not evaluated on the log (see above)
        docs = env.queries(alias)
        if docs is None:
            raise ConfigError(
                f"eval.segment_by = {field!r} is a field of the queries, but {alias!r} is "
                "evaluated on sampled corpus documents: set queries (a file or log) or use "
                "cluster:K"
            )
        seen: set[str] = set()
        for doc in docs:
            if doc.meta and field in doc.meta:
                break
            seen.update(doc.meta or ())
        else:
            fields = f" (their fields: {', '.join(sorted(seen)[:8])})" if seen else ""
            raise ConfigError(
                f"eval.segment_by = {field!r}: no evaluation query of {alias!r} has that "
                f"field{fields}"
            )


def _upgrade_path(env: Environment, target: str) -> tuple[list[Revision], dict[str, _Serving]]:
    with env.engine.connect() as conn:
        current = catalog.versions(conn)
        live = {
            alias: _Serving(catalog.live_index(conn, alias), catalog.live_adapter(conn, alias))
            for alias in current
        }
    return env.scripts.upgrade_path(target, list(current.values())), live


def _apply(
    env: Environment,
    path: list[Revision],
    live: dict[str, _Serving],
    settings: MigrationSettings,
    dry_run: bool,
    sample: int | float,
    force: bool,
    on_report: Callable[[Report], None] | None,
) -> list[Report]:
    # Fingerprint each alias is expected to be live on; a dry run advances it without swapping.
    expected = {alias: s.fingerprint for alias, s in live.items() if s.fingerprint is not None}
    reports: list[Report] = []
    for rev in path:
        serving = live.get(rev.alias, _Serving(None))
        _check_old(env, rev, expected.get(rev.alias), serving)
        ctx = MigrationContext(
            env,
            rev,
            settings,
            live=serving.index,
            adapter=serving.adapter,
            dry_run=dry_run,
            sample=sample,
            force=force,
        )
        try:
            _call(rev.upgrade, ctx, rev, "upgrade")
        finally:
            if ctx.report is not None and on_report is not None:
                on_report(ctx.report)
        if not ctx.swapped:
            raise ScriptError(f"upgrade() of {rev.revision} returned without calling ctx.swap()")
        assert ctx.report is not None and ctx.new_fingerprint is not None
        reports.append(ctx.report)
        expected[rev.alias] = ctx.new_fingerprint
        live[rev.alias] = _Serving(ctx.serving, ctx.serving_adapter)
    return reports


def downgrade(env: Environment, target: str, *, wait: float = 0.0) -> list[Revision]:
    """Undo every revision between the current state and ``target``; returns those undone."""
    path = _downgrade_path(env, target)
    if not path:
        return path
    with env.lock({rev.alias for rev in path}, "downgrade", wait):
        path = _downgrade_path(env, target)
        _undo(env, path)
    return path


def _downgrade_path(env: Environment, target: str) -> list[Revision]:
    with env.engine.connect() as conn:
        current = catalog.versions(conn)
    return env.scripts.downgrade_path(target, list(current.values()))


def _undo(env: Environment, path: list[Revision]) -> None:
    for rev in path:
        ctx = MigrationContext(env, rev)  # a rollback reads no option: none can stop it
        _call(rev.downgrade, ctx, rev, "downgrade")
        if not ctx.rolled_back:
            raise ScriptError(
                f"downgrade() of {rev.revision} returned without calling ctx.rollback()"
            )


def _check_old(
    env: Environment,
    rev: Revision,
    live_fingerprint: str | None,
    live: _Serving,
) -> None:
    """The revision's ``old`` must describe the index the alias is live on, exactly, and still
    return what it returned when that index was built (its probes), before anything is embedded."""
    if rev.old is None:
        if live_fingerprint is not None:
            raise StateError(
                f"revision {rev.revision} builds the first index of {rev.alias!r} (old = None), "
                "but the alias already has a live index"
            )
        return
    if live_fingerprint is None:
        raise StateError(
            f"revision {rev.revision} migrates {rev.alias!r} from {rev.old.model}, "
            "but the alias has no live index"
        )
    old = env.load_embedder(rev.old)
    if old.fingerprint != live_fingerprint:
        raise StateError(
            f"revision {rev.revision}: old = {rev.old.describe()} does not match the model and "
            f"options the live index of {rev.alias!r} was built with (fingerprints differ)"
        )
    if live.fingerprint == live_fingerprint:  # else a dry run moved on: nothing recorded to check
        record = live.adapter or live.index
        assert record is not None
        env.check_drift(old, record)


def _call(
    function: Callable[[MigrationContext], None], ctx: MigrationContext, rev: Revision, name: str
) -> None:
    try:
        function(ctx)
    except EmbedmigError:
        raise
    except Exception as exc:  # the revision's own code: one line, the traceback with --verbose
        raise ScriptError(
            f"{name}() of revision {rev.revision} raised {exc.__class__.__name__}: {exc}"
        ) from exc
