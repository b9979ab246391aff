"""Values for an SQL ``IN`` list, in bounded parts: one bound for every such list embedmig
writes, in the history database and in the embedding cache alike."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")

IN_LIST = 500  # values per IN list: well under SQLite's oldest bound of 999 parameters a statement


def in_parts(values: Sequence[T]) -> Iterator[Sequence[T]]:
    """``values`` in consecutive parts of at most IN_LIST."""
    for start in range(0, len(values), IN_LIST):
        yield values[start : start + IN_LIST]
