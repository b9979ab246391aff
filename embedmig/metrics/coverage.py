"""Coverage: what a new index must hold to serve what the alias served, and what it lacks.

Set algebra on sorted id arrays, each document carrying the 64-bit hash of its text. The rule:
a document keeps what the live alias serves for it, unless the corpus changed it since the live
index read the corpus (then the corpus's text, read later than any write before the backfill);
a write made during the backfill is later still and wins again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EMPTY_IDS = np.empty(0, dtype=np.int64)


@dataclass(frozen=True)
class Docs:
    """Documents by id (sorted, unique) with the hash of each one's text."""

    ids: np.ndarray
    sha: np.ndarray

    @classmethod
    def of(cls, ids: np.ndarray, sha: np.ndarray) -> Docs:
        """From unsorted ids; for a repeated id the last row wins."""
        ids = np.asarray(ids, dtype=np.int64)
        sha = np.asarray(sha, dtype=np.int64)
        unique, first_in_reversed = np.unique(ids[::-1], return_index=True)
        return cls(unique, sha[::-1][first_in_reversed])

    @classmethod
    def empty(cls) -> Docs:
        return cls(EMPTY_IDS, EMPTY_IDS)

    def apply(self, upsert_ids: np.ndarray, upsert_sha: np.ndarray, deleted: np.ndarray) -> Docs:
        """These documents after upserts and deletes (of disjoint ids)."""
        keep = ~np.isin(self.ids, np.concatenate([upsert_ids, deleted]))
        ids = np.concatenate([self.ids[keep], np.asarray(upsert_ids, dtype=np.int64)])
        sha = np.concatenate([self.sha[keep], np.asarray(upsert_sha, dtype=np.int64)])
        order = np.argsort(ids, kind="stable")
        return Docs(ids[order], sha[order])


def aligned(universe: np.ndarray, docs: Docs) -> tuple[np.ndarray, np.ndarray]:
    """(present, sha) of ``docs`` aligned on ``universe`` (sha is 0 where absent)."""
    at = np.searchsorted(docs.ids, universe)
    inside = at < len(docs.ids)
    present = np.zeros(len(universe), dtype=bool)
    present[inside] = docs.ids[at[inside]] == universe[inside]
    sha = np.zeros(len(universe), dtype=np.int64)
    sha[present] = docs.sha[at[present]]
    return present, sha


def _same(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    same: np.ndarray = (a[0] == b[0]) & (~a[0] | (a[1] == b[1]))
    return same


@dataclass(frozen=True)
class Target:
    docs: Docs  # what the new index must hold
    conflicts: np.ndarray  # ids changed by both the corpus and a writer: the corpus's text kept


def target(live: Docs, before: Docs, now: Docs, written: np.ndarray = EMPTY_IDS) -> Target:
    """What the new index must hold, from what the alias serves (``live``), the corpus as the live
    index read it (``before``) and as the backfill read it (``now``), and the ids ``written``
    during the backfill."""
    universe = np.union1d(np.union1d(live.ids, before.ids), now.ids)
    served, was, read = aligned(universe, live), aligned(universe, before), aligned(universe, now)
    corpus_unchanged = _same(was, read)
    keep_served = corpus_unchanged | np.isin(universe, written)
    present = np.where(keep_served, served[0], read[0])
    sha = np.where(keep_served, served[1], read[1])
    written_over = ~_same(served, was)
    conflicts = universe[~keep_served & written_over & ~_same(served, read)]
    return Target(Docs(universe[present], sha[present]), conflicts)


@dataclass(frozen=True)
class Changes:
    upsert_ids: np.ndarray
    upsert_sha: np.ndarray
    deleted_ids: np.ndarray


def changes(have: Docs, want: Docs) -> Changes:
    """What turns ``have`` into ``want``."""
    present, sha = aligned(want.ids, have)
    differ = ~present | (sha != want.sha)
    return Changes(want.ids[differ], want.sha[differ], have.ids[~np.isin(have.ids, want.ids)])


@dataclass(frozen=True)
class Coverage:
    """How an index differs from what it must hold (ids of each kind, ascending)."""

    missing: np.ndarray  # must hold, does not
    resurrected: np.ndarray  # holds, must not (a deleted document come back)
    stale: np.ndarray  # holds with another text

    def counts(self) -> dict[str, float | None]:
        return {
            "coverage_missing": float(len(self.missing)),
            "coverage_resurrected": float(len(self.resurrected)),
            "coverage_stale": float(len(self.stale)),
        }


def compare(want: Docs, have: Docs) -> Coverage:
    diff = changes(have, want)
    held = np.isin(diff.upsert_ids, have.ids)
    return Coverage(diff.upsert_ids[~held], diff.deleted_ids, diff.upsert_ids[held])
