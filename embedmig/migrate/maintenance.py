"""State changes besides migrations: pruning retired indexes and stamping revisions.

Like the runner's upgrade and downgrade, each holds the locks of the aliases it changes and
commits its catalog changes with their history row in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from embedmig.embedders import cache
from embedmig.environment import Environment, remove_file
from embedmig.errors import ConfigError, ScriptError, StateError
from embedmig.serve.heartbeat import ReaderSettings
from embedmig.store import catalog, journal, manifest, readers, traffic


@dataclass(frozen=True)
class Pruned:
    dropped: list[catalog.IndexRecord]
    cache: cache.Pruned  # the embedding cache, bounded to cache.max_mb
    # Adapters' maps dropped with them: those into a dropped index, and those never swapped in.
    adapters: list[catalog.AdapterRecord] = field(default_factory=list)
    # Indexes that would have gone but a reader still reporting serves: kept for now.
    held: list[catalog.IndexRecord] = field(default_factory=list)
    forgotten: int = 0  # heartbeat rows of readers gone silent, removed


def prune(env: Environment, alias: str, *, keep: int, wait: float) -> Pruned:
    """Drop ``alias``'s retired indexes but the ``keep`` most recent (each is one rollback step),
    and any shadow never swapped in but one under an open canary. Files go after the drop
    commits: a crash in between leaves an orphan file, never a catalog row pointing at a missing
    one. An index a reader still serves stays (``.held``); readers gone silent are forgotten.
    Then bound the embedding cache, least recently used first."""
    if keep < 0:
        raise ConfigError("--keep must be 0 or more")
    silent_after = ReaderSettings.of(env.config).silent_after
    with env.lock([alias], "prune", wait):
        started = catalog.now()
        with env.engine.begin() as conn:
            records = catalog.indexes(conn, alias)
            if not records:
                raise StateError(f"alias {alias!r} has no indexes")
            retired = [r for r in records if r.state == catalog.RETIRED]
            canary = traffic.open_canary(conn, alias)
            unswapped = [
                r
                for r in records
                if r.state in (catalog.BUILDING, catalog.READY)
                and (canary is None or r.id != canary.index_id)  # searchers mirror to it
            ]
            candidates = retired[: max(0, len(retired) - keep)] + unswapped
            serving = readers.held(conn, alias, silent_after)
            doomed = [r for r in candidates if r.id not in serving]
            held = [r for r in candidates if r.id in serving]
            at = catalog.now()
            gone_silent = [r.id for r in readers.of(conn, alias) if r.silent(silent_after, at)]
            readers.forget(conn, gone_silent)
            for record in doomed:
                catalog.update_index(conn, record.id, state=catalog.DROPPED)
                catalog.clear_checkpoint(conn, record.id)
                manifest.drop(conn, record.id)
            gone = {r.id for r in doomed}
            abandoned = {r.revision for r in unswapped}
            maps = [
                a
                for a in catalog.adapters(conn, alias)
                if (a.index_id in gone and a.state != catalog.DROPPED)
                # A bridge stands in for a shadow: it goes with it.
                or (a.state == catalog.BRIDGE and a.revision in abandoned)
            ]
            for adapter in maps:
                catalog.update_adapter(conn, adapter.id, state=catalog.DROPPED)
            journal.collect(conn, alias)  # changes only the dropped indexes still needed
            if doomed or maps:
                catalog.record(
                    conn,
                    alias=alias,
                    revision=None,
                    action="prune",
                    status="ok",
                    started_at=started,
                    message="dropped "
                    + ", ".join(
                        [f"#{r.id} ({r.revision})" for r in doomed]
                        + [f"adapter #{a.id} ({a.revision})" for a in maps]
                    ),
                )
        for record in doomed:
            env.remove_index_files(record)
        for adapter in maps:
            remove_file(env.file_of(adapter))
    folder = env.settings.cache_dir
    bounded = cache.prune(folder, env.settings.cache_max_bytes) if folder else cache.Pruned(0, 0, 0)
    return Pruned(doomed, bounded, maps, held, len(gone_silent))


def stamp(env: Environment, target: str, *, wait: float) -> list[tuple[str, str | None]]:
    """Set aliases' recorded revision without running anything; live indexes are untouched."""
    if target == "base" or target.endswith("@base"):
        alias = target.partition("@")[0] if "@" in target else None
        with env.engine.connect() as conn:
            known = catalog.versions(conn)
        if alias is not None and alias not in known:
            raise ScriptError(f"alias {alias!r} has no recorded revision")
        changes: list[tuple[str, str | None]] = [
            (a, None) for a in sorted(known) if alias is None or a == alias
        ]
    else:
        changes = [(rev.alias, rev.revision) for rev in env.scripts.resolve(target)]
        if not changes:
            raise ScriptError(f"{target!r} names no revision")
    started = catalog.now()
    with env.lock([a for a, _ in changes], "stamp", wait), env.engine.begin() as conn:
        for alias_name, rev_id in changes:
            catalog.set_version(conn, alias_name, rev_id)
            catalog.record(
                conn,
                alias=alias_name,
                revision=rev_id,
                action="stamp",
                status="ok",
                started_at=started,
            )
    return changes
