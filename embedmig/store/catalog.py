"""The catalog in SQL: indexes and their lifecycle, alias pointers and versions, adapters.

Every function takes an open connection and leaves the transaction to the caller, so a swap and its
history row (``store.events``) commit together. Document ids are ``store.docids``, a backfill's
checkpoints ``store.checkpoints``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from embedmig.errors import StateError
from embedmig.history import schema as t
from embedmig.store.clock import now
from embedmig.store.docids import dialect_insert
from embedmig.store.events import history


class State(StrEnum):
    """Where an index, or an adapter's map, is in its life: an index goes building -> ready ->
    live -> retired (or dropped); a map is live, a bridge (serving while its backfill runs) or
    retired."""

    BUILDING = "building"
    READY = "ready"
    LIVE = "live"
    RETIRED = "retired"
    DROPPED = "dropped"
    BRIDGE = "bridge"


@dataclass(frozen=True)
class IndexRecord:
    id: int
    alias: str
    revision: str
    path: str | None
    fingerprint: str
    model: str
    dim: int
    metric: str
    factory: str
    ntotal: int
    sha256: str | None
    state: str
    base_seq: int
    created_at: datetime
    updated_at: datetime
    probe: bytes | None = field(default=None, repr=False)
    store: str = "faiss"

    @classmethod
    def from_row(cls, row: Any) -> IndexRecord:
        return cls(**dict(row._mapping))


def versions(conn: sa.Connection) -> dict[str, str]:
    rows = conn.execute(sa.select(t.version.c.alias, t.version.c.revision))
    return {alias: revision for alias, revision in rows}


def set_version(conn: sa.Connection, alias: str, revision: str | None) -> None:
    conn.execute(t.version.delete().where(t.version.c.alias == alias))
    if revision is not None:
        conn.execute(t.version.insert().values(alias=alias, revision=revision, updated_at=now()))


def live_index(conn: sa.Connection, alias: str) -> IndexRecord | None:
    row = conn.execute(
        sa.select(t.index).where(t.index.c.alias == alias, t.index.c.state == State.LIVE)
    ).first()
    return IndexRecord.from_row(row) if row else None


def live_indexes(conn: sa.Connection, alias: str | None = None) -> list[IndexRecord]:
    """The live index of every alias (or of ``alias``: one at most)."""
    return [r for r in indexes(conn, alias) if r.state == State.LIVE]


def get_index(conn: sa.Connection, index_id: int) -> IndexRecord:
    row = conn.execute(sa.select(t.index).where(t.index.c.id == index_id)).first()
    if row is None:
        raise StateError(f"no index #{index_id}")
    return IndexRecord.from_row(row)


def indexes(conn: sa.Connection, alias: str | None = None) -> list[IndexRecord]:
    query = sa.select(t.index).order_by(t.index.c.id)
    if alias is not None:
        query = query.where(t.index.c.alias == alias)
    return [IndexRecord.from_row(row) for row in conn.execute(query)]


def find_index(
    conn: sa.Connection, alias: str, revision: str, states: Sequence[str]
) -> IndexRecord | None:
    """The newest index of ``alias`` built by ``revision`` in one of ``states``."""
    row = conn.execute(
        sa.select(t.index)
        .where(
            t.index.c.alias == alias,
            t.index.c.revision == revision,
            t.index.c.state.in_(states),
        )
        .order_by(t.index.c.id.desc())
    ).first()
    return IndexRecord.from_row(row) if row else None


def previous_index(conn: sa.Connection, live: IndexRecord, down_revision: str) -> IndexRecord:
    """The retired index that ``live`` replaced, which a rollback of its revision restores: the
    one its upgrade swapped out (history), else the newest retired index of ``down_revision``."""
    for event in history(conn, live.alias, live.revision):
        if event.action == "upgrade" and event.to_index == live.id and event.from_index:
            previous = get_index(conn, event.from_index)
            break
    else:
        found = find_index(conn, live.alias, down_revision, [State.RETIRED])
        if found is None:
            raise StateError(f"no retained index of {down_revision} to roll back to")
        previous = found
    if previous.state != State.RETIRED:
        raise StateError(
            f"index #{previous.id} of {previous.revision} is {previous.state}, not retired; "
            "it cannot be restored without re-embedding"
        )
    return previous


def register_index(
    conn: sa.Connection,
    *,
    alias: str,
    revision: str,
    fingerprint: str,
    model: str,
    dim: int,
    factory: str,
    metric: str,
    base_seq: int = 0,
    probe: bytes | None = None,
    store: str = "faiss",
) -> int:
    stamp = now()
    result = conn.execute(
        t.index.insert().values(
            alias=alias,
            revision=revision,
            fingerprint=fingerprint,
            model=model,
            dim=dim,
            metric=metric,
            factory=factory,
            ntotal=0,
            base_seq=base_seq,
            probe=probe,
            store=store,
            state=State.BUILDING,
            created_at=stamp,
            updated_at=stamp,
        )
    )
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def update_index(conn: sa.Connection, index_id: int, **values: Any) -> None:
    _update(conn, t.index, index_id, values)


def _update(conn: sa.Connection, table: sa.Table, row_id: int, values: dict[str, Any]) -> None:
    """Update an index's or an adapter's row, counting the change for its alias's readers."""
    alias = conn.execute(
        table.update()
        .where(table.c.id == row_id)
        .values(updated_at=now(), **values)
        .returning(table.c.alias)
    ).scalar()
    if alias is not None:
        changed(conn, alias)


def set_base_seq(conn: sa.Connection, index_id: int, seq: int) -> None:
    """A pgvector table holds every change up to ``seq``: not a change its readers follow (they
    read the table itself), so the reader clock stays."""
    conn.execute(t.index.update().where(t.index.c.id == index_id).values(base_seq=seq))


def delete_index(conn: sa.Connection, index_id: int) -> None:
    conn.execute(t.index.delete().where(t.index.c.id == index_id))


def point_alias(
    conn: sa.Connection, alias: str, revision: str | None, index_id: int | None
) -> IndexRecord | None:
    """Make ``index_id`` the live index of ``alias`` (None: no live index); return the old one.

    The caller's transaction makes this atomic: readers see the old index or the new, never none.
    """
    previous = live_index(conn, alias)
    retire_adapters(conn, alias)  # the alias now serves an index as its own model built it
    if previous is not None:
        update_index(conn, previous.id, state=State.RETIRED)
    if index_id is not None:
        update_index(conn, index_id, state=State.LIVE)
    set_version(conn, alias, revision)
    return previous


# Adapters: maps from a new query model into a live index's space.

# An adapter is "live" while its alias serves through it, a "bridge" while a backfill builds the
# index it stands in for; then "retired" (a rollback may restore it) or "dropped" by prune. A map
# is stored only once it serves: a fit whose gate failed leaves no row.


@dataclass(frozen=True)
class AdapterRecord:
    id: int
    alias: str
    revision: str
    index_id: int
    kind: str
    path: str | None
    sha256: str | None
    fingerprint: str
    model: str
    dim: int
    pairs: int
    state: str
    created_at: datetime
    updated_at: datetime
    probe: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_row(cls, row: Any) -> AdapterRecord:
        return cls(**dict(row._mapping))


def register_adapter(conn: sa.Connection, **values: Any) -> int:
    stamp = now()
    result = conn.execute(t.adapter.insert().values(created_at=stamp, updated_at=stamp, **values))
    changed(conn, values["alias"])
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def update_adapter(conn: sa.Connection, adapter_id: int, **values: Any) -> None:
    _update(conn, t.adapter, adapter_id, values)


def adapters(
    conn: sa.Connection, alias: str | None = None, states: Sequence[str] | None = None
) -> list[AdapterRecord]:
    """Adapters, newest first."""
    query = sa.select(t.adapter).order_by(t.adapter.c.id.desc())
    if alias is not None:
        query = query.where(t.adapter.c.alias == alias)
    if states is not None:
        query = query.where(t.adapter.c.state.in_(states))
    return [AdapterRecord.from_row(row) for row in conn.execute(query)]


def live_adapter(conn: sa.Connection, alias: str) -> AdapterRecord | None:
    """The map the alias serves its live index through, if an adapter revision is current."""
    found = adapters(conn, alias, [State.LIVE])
    return found[0] if found else None


def retire_adapters(conn: sa.Connection, alias: str) -> None:
    """The alias stops serving through any map: its live adapter and bridges are retired."""
    conn.execute(
        t.adapter.update()
        .where(t.adapter.c.alias == alias, t.adapter.c.state.in_([State.LIVE, State.BRIDGE]))
        .values(state=State.RETIRED, updated_at=now())
    )
    changed(conn, alias)


# The reader clock: what a searcher reads to learn, in one primary-key lookup, whether anything it
# serves changed. The journal position moves with every acknowledged write (``store.docids``);
# the change count with every catalog change above, in the same transaction.


def changed(conn: sa.Connection, alias: str) -> None:
    """Count a change of ``alias``'s catalog that its readers must follow."""
    insert = dialect_insert(conn)(t.sequence).values(
        alias=alias, next_doc_id=1, last_seq=0, changes=1
    )
    conn.execute(
        insert.on_conflict_do_update(
            index_elements=["alias"], set_={"changes": t.sequence.c.changes + 1}
        )
    )


def reader_clock(conn: sa.Connection, alias: str) -> tuple[int, int]:
    """(journal position, catalog changes) of ``alias``: equal twice, nothing changed between."""
    row = conn.execute(
        sa.select(t.sequence.c.last_seq, t.sequence.c.changes).where(t.sequence.c.alias == alias)
    ).first()
    return (0, 0) if row is None else (int(row[0]), int(row[1]))
