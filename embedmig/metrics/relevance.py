"""The judged metrics of ranked lists, as numpy kernels: recall@k, MRR@k and nDCG@k of each query
from its ranked ids and the relevance judgements (BEIR qrels), and where judged documents rank."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Judgements:
    """Relevance judgements as parallel arrays: query row, document id, grade (> 0: relevant)."""

    rows: np.ndarray
    docs: np.ndarray
    grades: np.ndarray

    @classmethod
    def empty(cls) -> Judgements:
        return cls(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64))

    def relevant(self) -> Judgements:
        keep = self.grades > 0
        return Judgements(self.rows[keep], self.docs[keep], self.grades[keep])


def relevance_matrix(ids: np.ndarray, judged: Judgements) -> np.ndarray:
    """Graded relevance of each retrieved id, shape of ``ids``; 0 where not judged relevant."""
    n, k = ids.shape
    rel = np.zeros((n, k), dtype=np.float64)
    for block, hits in _judged_hits(ids, judged):
        at, position = np.nonzero(hits)
        rel[judged.rows[block][at], position] = judged.grades[block][at]
    return rel


def _judged_hits(ids: np.ndarray, judged: Judgements) -> Iterator[tuple[slice, np.ndarray]]:
    """Per block of judgements, where each judged document sits in its query's row of ``ids``.

    One comparison of a judged document with its row (k ids) per judgement: queries have few
    judgements, so this beats sorting every retrieved id. Blocks bound the (m, k) mask.
    """
    k = max(ids.shape[1], 1)
    step = max(1, 4_000_000 // k)
    for start in range(0, len(judged.rows), step):
        block = slice(start, start + step)
        yield block, ids[judged.rows[block]] == judged.docs[block, None]


def ideal_grades(judged: Judgements, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query: its relevant count, and its k best grades sorted descending (zero padded)."""
    relevant = judged.relevant()
    counts = np.bincount(relevant.rows, minlength=n).astype(np.float64)
    ideal = np.zeros((n, k))
    if len(relevant.rows):
        order = np.lexsort((-relevant.grades, relevant.rows))
        rows, grades = relevant.rows[order], relevant.grades[order]
        rank = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
        keep = rank < k
        ideal[rows[keep], rank[keep]] = grades[keep]
    return counts, ideal


def recall_at_k(rel: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Share of a query's relevant documents found in its top k (grade > 0 counts as relevant)."""
    found = (rel[:, :k] > 0).sum(axis=1)
    recall: np.ndarray = np.divide(
        found, n_relevant, out=np.zeros(len(found)), where=n_relevant > 0
    )
    return recall


def mrr_at_k(rel: np.ndarray, k: int) -> np.ndarray:
    hits = rel[:, :k] > 0
    first = hits.argmax(axis=1)
    return np.where(hits.any(axis=1), 1.0 / (first + 1), 0.0)


def ndcg_at_k(rel: np.ndarray, ideal_grades: np.ndarray, k: int) -> np.ndarray:
    """nDCG@k with linear gains (the BEIR/pytrec_eval convention).

    ``ideal_grades`` holds each query's judged grades sorted descending, zero padded, shape (n, >=k).
    """
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (rel[:, :k] * discounts[: rel[:, :k].shape[1]]).sum(axis=1)
    ideal = (ideal_grades[:, :k] * discounts[: ideal_grades[:, :k].shape[1]]).sum(axis=1)
    ndcg: np.ndarray = np.divide(dcg, ideal, out=np.zeros(len(dcg)), where=ideal > 0)
    return ndcg


def ranks_of(ids: np.ndarray, rows: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """0-based rank of ``docs[i]`` in row ``rows[i]`` of ``ids``; ``ids.shape[1]`` when absent."""
    k = ids.shape[1]
    ranks = np.full(len(rows), k, dtype=np.int64)
    if k == 0:
        return ranks
    pairs = Judgements(rows, docs, np.ones(len(rows), np.int64))
    for block, hits in _judged_hits(ids, pairs):
        # argmax finds the first True: a repeated id ranks at its first place.
        found = hits.any(axis=1)
        ranks[block][found] = hits.argmax(axis=1)[found]
    return ranks
