"""Carry-over and coverage: a new index holds what the alias served, plus the corpus's changes.

Writes acknowledged before a migration started are not in its corpus unless the application put
them there. The live index's manifest says what the corpus held when that index read it, and what
the index holds; with the journal after it, that is what the alias serves. Where the corpus did
not change a document since, the new index gets what the alias served (the write's text embedded
with the new model, or the delete); where it did, the corpus's text (see ``metrics.coverage``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import sqlalchemy as sa

from embedmig.metrics import coverage
from embedmig.metrics.coverage import Docs
from embedmig.store import catalog, docids, journal, manifest

EXAMPLES = 5


@dataclass(frozen=True)
class Plan:
    """What to apply on top of a corpus read so the new index holds ``target.docs``."""

    target: coverage.Target
    changes: coverage.Changes  # ids written during the backfill excluded: the replay has them
    texts: dict[int, tuple[str, str | None]]  # (text, metadata) of each upsert that can be made

    @property
    def upserts(self) -> np.ndarray:
        """Ids of the upserts whose text the journal still holds, ascending."""
        return np.array(sorted(self.texts), dtype=np.int64)

    def feasible(self, now: Docs) -> Docs:
        """``now`` after every change that can be made."""
        can = np.isin(self.changes.upsert_ids, self.upserts)
        return now.apply(
            self.changes.upsert_ids[can], self.changes.upsert_sha[can], self.changes.deleted_ids
        )


@dataclass
class Result:
    """Coverage of a new index, for the report: counts, a few keys of each kind, notes."""

    counts: dict[str, float | None]
    examples: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def served(
    conn: sa.Connection, alias: str, live: catalog.IndexRecord | None
) -> tuple[Docs, Docs] | None:
    """(what ``alias`` serves now, its live index's corpus read) as Docs; None when the live
    index was built before manifests were kept."""
    if live is None:  # writes to an alias with no index yet: the journal is all it serves
        net = journal.net_changes(conn, alias, 0)
        return Docs.empty().apply(net.upsert_ids, net.upsert_sha, net.deleted_ids), Docs.empty()
    rows = manifest.load(conn, live.id)
    if not len(rows) and live.ntotal:
        return None
    held = Docs(rows.ids[rows.has_sha], rows.sha[rows.has_sha])
    before = Docs(rows.ids[rows.has_corpus], rows.corpus_sha[rows.has_corpus])
    net = journal.net_changes(conn, alias, live.base_seq)
    return held.apply(net.upsert_ids, net.upsert_sha, net.deleted_ids), before


def plan(
    conn: sa.Connection,
    alias: str,
    live: catalog.IndexRecord | None,
    now: Docs,
    written: np.ndarray = coverage.EMPTY_IDS,
) -> Plan | None:
    """The carry-over for a corpus read ``now``; None if the live index predates manifests."""
    found = served(conn, alias, live)
    if found is None:
        return None
    target = coverage.target(*found, now, written)
    diff = coverage.changes(now, target.docs)
    keep_upserts = ~np.isin(diff.upsert_ids, written)
    diff = coverage.Changes(
        diff.upsert_ids[keep_upserts],
        diff.upsert_sha[keep_upserts],
        diff.deleted_ids[~np.isin(diff.deleted_ids, written)],
    )
    wanted = dict(zip(diff.upsert_ids.tolist(), diff.upsert_sha.tolist(), strict=True))
    return Plan(target, diff, journal.written_texts(conn, alias, wanted))


def observed(index_ids: np.ndarray, held: Docs, want: Docs) -> Docs:
    """The documents an index file holds (its own id list), with the text hashes bookkept for
    them; an id the bookkeeping does not know counts as another text than the wanted one."""
    ids = np.unique(np.asarray(index_ids, dtype=np.int64))
    known, sha = coverage.aligned(ids, held)
    _, wanted_sha = coverage.aligned(ids, want)
    return Docs(ids, np.where(known, sha, ~wanted_sha))


def result(
    conn: sa.Connection, alias: str, found: coverage.Coverage, plan: Plan, carried: str
) -> Result:
    """The report's view of a coverage check, with example keys."""
    kinds = {
        "missing": found.missing,
        "resurrected": found.resurrected,
        "stale": found.stale,
    }
    sample = np.concatenate([ids[:EXAMPLES] for ids in kinds.values()])
    keys = {i: doc.key for i, doc in docids.describe_ids(conn, alias, sample).items()}
    examples = {
        kind: [keys.get(int(i), f"#{int(i)}") for i in ids[:EXAMPLES]]
        for kind, ids in kinds.items()
        if len(ids)
    }
    notes = []
    made = len(plan.texts) + len(plan.changes.deleted_ids)
    if made:
        notes.append(
            f"{made} acknowledged write(s) the corpus lacks {carried} "
            f"({len(plan.texts)} upserted, {len(plan.changes.deleted_ids)} deleted)"
        )
    if len(plan.target.conflicts):
        notes.append(
            f"{len(plan.target.conflicts)} document(s) changed by both the corpus and a writer "
            "since the live index was built: the corpus's later text is kept"
        )
    lost = len(found.missing) + len(found.resurrected) + len(found.stale)
    if lost:
        notes.append(
            f"{lost} document(s) the alias serves cannot be carried over "
            "(their written text is no longer in the journal): see coverage_*"
        )
    return Result(found.counts(), examples, notes)


def unknown(live: catalog.IndexRecord) -> Result:
    return Result(
        dict.fromkeys(("coverage_missing", "coverage_resurrected", "coverage_stale")),
        notes=[
            f"coverage not measured: live index #{live.id} was built before embedmig kept "
            "document manifests"
        ],
    )
