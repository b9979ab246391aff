"""State changes besides migrations: pruning retired indexes and stamping revisions.

Like the runner's upgrade and downgrade, each holds the locks of the aliases it changes and
commits its catalog changes with their history row in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from embedmig.embedders import cache
from embedmig.environment import Environment
from embedmig.errors import ConfigError, ScriptError, StateError, StoreError
from embedmig.monitor.status import ReaderSettings
from embedmig.store import (
    catalog,
    checkpoints,
    clock,
    events,
    files,
    journal,
    manifest,
    readers,
    traffic,
)


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
        started = clock.now()
        with env.begin() as conn:
            records = catalog.indexes(conn, alias)
            if not records:
                raise StateError(f"alias {alias!r} has no indexes")
            retired = [r for r in records if r.state == catalog.State.RETIRED]
            canary = traffic.open_canary(conn, alias)
            unswapped = [
                r
                for r in records
                if r.state in (catalog.State.BUILDING, catalog.State.READY)
                and (canary is None or r.id != canary.index_id)  # searchers mirror to it
            ]
            candidates = retired[: max(0, len(retired) - keep)] + unswapped
            serving = readers.held(conn, alias, silent_after)
            doomed = [r for r in candidates if r.id not in serving]
            held = [r for r in candidates if r.id in serving]
            at = clock.db_now(conn)
            gone_silent = [r.id for r in readers.of(conn, alias) if r.silent(silent_after, at)]
            readers.forget(conn, gone_silent)
            for record in doomed:
                catalog.update_index(conn, record.id, state=catalog.State.DROPPED)
                checkpoints.clear_checkpoint(conn, record.id)
                manifest.drop(conn, record.id)
            gone = {r.id for r in doomed}
            abandoned = {r.revision for r in unswapped}
            maps = [
                a
                for a in catalog.adapters(conn, alias)
                if (a.index_id in gone and a.state != catalog.State.DROPPED)
                # A bridge stands in for a shadow: it goes with it.
                or (a.state == catalog.State.BRIDGE and a.revision in abandoned)
            ]
            for adapter in maps:
                catalog.update_adapter(conn, adapter.id, state=catalog.State.DROPPED)
            journal.collect(conn, alias)  # changes only the dropped indexes still needed
            if doomed or maps:
                events.record(
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
            env.drop_index(record)
        for adapter in maps:
            files.remove_file(env.file_of(adapter))
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
    started = clock.now()
    with env.lock([a for a, _ in changes], "stamp", wait), env.begin() as conn:
        for alias_name, rev_id in changes:
            catalog.set_version(conn, alias_name, rev_id)
            events.record(
                conn,
                alias=alias_name,
                revision=rev_id,
                action="stamp",
                status="ok",
                started_at=started,
            )
    return changes


@dataclass(frozen=True)
class Recovery:
    """What ``recover`` did (or, in a dry run, would do): point ``alias`` at ``index`` and record
    its revision; ``why`` says how that index was chosen."""

    alias: str
    revision: str | None  # the revision recorded before
    index: catalog.IndexRecord
    why: str
    done: bool

    def describe(self) -> str:
        verb = "pointed" if self.done else "would point"
        return (
            f"{verb} {self.alias} at index #{self.index.id} ({self.why}) and record revision "
            f"{self.index.revision} (was {self.revision or 'base'}); then `embedmig upgrade` "
            "moves it on again"
        )


def recover(env: Environment, alias: str, *, dry_run: bool, wait: float) -> Recovery:
    """Bring back an alias that is recorded at a revision but live on no index (what a run
    that lost its lock, or a hand edit of the catalog, can leave): point it at the last index it
    served whose file still matches its checksum, else the newest retired one, in one transaction
    with a history row. Refuses an alias that is live."""
    if dry_run:
        with env.engine.connect() as conn:
            return _recoverable(conn, env, alias)[1]
    started = clock.now()
    with env.lock([alias], "recover", wait), env.begin() as conn:
        revision, found = _recoverable(conn, env, alias)  # as it is now, under the lock
        env.point_alias(conn, alias, found.index.revision, found.index)
        events.record(
            conn,
            alias=alias,
            revision=found.index.revision,
            action="recover",
            status="ok",
            started_at=started,
            to_index=found.index.id,
            message=f"live on no index at {revision or 'base'}; {found.why}",
        )
    return Recovery(alias, revision, found.index, found.why, done=True)


def _recoverable(conn: Any, env: Environment, alias: str) -> tuple[str | None, Recovery]:
    revision = catalog.versions(conn).get(alias)
    live = catalog.live_index(conn, alias)
    if live is not None:
        raise StateError(
            f"alias {alias!r} is live on index #{live.id} ({live.revision}); nothing to recover"
        )
    records = {r.id: r for r in catalog.indexes(conn, alias)}
    if not records:
        raise StateError(f"alias {alias!r} has no indexes; `embedmig upgrade` builds its first")
    served = [
        (records[h.to_index], "the last index it served")
        for h in events.history(conn, alias)
        if h.action in (*events.SWAPS, "downgrade", "recover")
        and h.status in events.SWAPPED
        and h.to_index in records
    ]
    retired = sorted(
        (r for r in records.values() if r.state == catalog.State.RETIRED),
        key=lambda r: (r.updated_at, r.id),
        reverse=True,
    )
    unusable = []
    for record, why in [*served, *((r, "the newest retired index") for r in retired)]:
        if record.state not in (catalog.State.RETIRED, catalog.State.READY):
            continue
        try:
            env.verify_index(record)
        except StoreError as exc:
            unusable.append(f"#{record.id}: {exc}")
            continue
        return revision, Recovery(alias, revision, record, why, done=False)
    raise StateError(
        f"alias {alias!r} has no index to point back at"
        + (f" ({'; '.join(unusable)})" if unusable else "")
        + ": `embedmig stamp "
        + f"{alias}@base` then `embedmig upgrade` rebuilds it"
    )
