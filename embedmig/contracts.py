"""Golden queries: the contracts file (``contracts = FILE``) and the queries it names.

One JSON object per line, in the shape of Elasticsearch's ``_rank_eval`` requests::

    {"id": "refund-policy", "query": "how do I get a refund", "k": 10,
     "must_contain": ["faq-12"], "ratings": [{"_id": "faq-12", "rating": 3}, {"_id": "faq-7", "rating": 1}]}

``must_contain``: documents that must stay in the query's top ``k`` (default 10); ``ratings``:
graded judgements (``rating`` 0 or more) for nDCG@10. A line needs one of them. ``alias``
restricts a line to one alias; without it the line applies to every alias.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedmig.config import MAX_K
from embedmig.errors import SourceError
from embedmig.names import blank

DEFAULT_K = 10
_FIELDS = {"id", "query", "k", "must_contain", "ratings", "alias"}


@dataclass(frozen=True)
class Contract:
    id: str
    query: str
    k: int
    must_contain: tuple[str, ...]
    ratings: Mapping[str, int]
    alias: str | None = None

    @property
    def keys(self) -> set[str]:
        """Every document the contract names."""
        return {*self.must_contain, *self.ratings}


def read(path: Path) -> list[Contract]:
    """Every contract of ``path``, checked: a bad line is a SourceError naming it."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SourceError(f"contracts file {path} does not exist", path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"cannot read contracts file {path}: {exc}", path=path) from None
    contracts: list[Contract] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue

        def bad(why: str, line_no: int = number) -> SourceError:
            return SourceError(f"{path} line {line_no}: {why}", path=path, line=line_no)

        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise bad(f"not JSON ({exc.msg})") from None
        contract = _contract(row, bad)
        if contract.id in seen:
            raise bad(f"contract id {contract.id!r} appears twice")
        seen.add(contract.id)
        contracts.append(contract)
    if not contracts:
        raise SourceError(f"contracts file {path} holds no contract", path=path)
    return contracts


def of_alias(contracts: Iterable[Contract], alias: str) -> list[Contract]:
    return [c for c in contracts if c.alias is None or c.alias == alias]


def check_known(contracts: Iterable[Contract], known: Mapping[str, int], alias: str) -> None:
    """Refuse a contract whose ``must_contain`` names a document ``alias`` never had (a typo, or
    another corpus's key): it could never hold, on the old index or the new, and would block
    every upgrade as if it were a regression. A document deleted since is not refused: losing it
    is what a contract is for."""
    for contract in contracts:
        ghosts = [key for key in contract.must_contain if key not in known]
        if ghosts:
            raise SourceError(
                f"contract {contract.id!r} must contain {', '.join(map(repr, ghosts[:3]))}, "
                f"which {'is' if len(ghosts) == 1 else 'are'} not in the corpus of {alias!r}: "
                "fix or remove that line of the contracts file"
            )


def unmatched(contracts: Iterable[Contract], aliases: set[str]) -> dict[str, list[str]]:
    """The contracts whose ``alias`` names none of ``aliases``, by the alias they name."""
    found: dict[str, list[str]] = {}
    for contract in contracts:
        if contract.alias is not None and contract.alias not in aliases:
            found.setdefault(contract.alias, []).append(contract.id)
    return found


def _contract(row: Any, bad: Any) -> Contract:
    if not isinstance(row, dict):
        raise bad("a contract is a JSON object")
    unknown = sorted(set(row) - _FIELDS)
    if unknown:
        raise bad(f"unknown field {unknown[0]!r} (fields: {', '.join(sorted(_FIELDS))})")
    ident, query = row.get("id"), row.get("query")
    if not isinstance(ident, str) or blank(ident):
        raise bad("'id' must be a non-empty string")
    if not isinstance(query, str) or blank(query):
        raise bad(f"contract {ident!r}: 'query' must be a non-empty string")
    k = row.get("k", DEFAULT_K)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise bad(f"contract {ident!r}: 'k' must be an integer from 1 to {MAX_K:,}, got {k!r}")
    must = row.get("must_contain", [])
    if not isinstance(must, list) or not all(_key(m) for m in must):
        raise bad(f"contract {ident!r}: 'must_contain' must be a list of document keys")
    ratings = _ratings(row.get("ratings", []), ident, bad)
    if not must and not ratings:
        raise bad(f"contract {ident!r} has neither 'must_contain' nor 'ratings'")
    alias = row.get("alias")
    if alias is not None and not _key(alias):
        raise bad(f"contract {ident!r}: 'alias' must be an alias name")
    return Contract(ident, query, k, tuple(dict.fromkeys(must)), ratings, alias)


def _ratings(value: Any, ident: str, bad: Any) -> dict[str, int]:
    shape = 'a list of {"_id": KEY, "rating": N} with N an integer of 0 or more'
    if not isinstance(value, list):
        raise bad(f"contract {ident!r}: 'ratings' must be {shape}")
    ratings: dict[str, int] = {}
    for rated in value:
        if not isinstance(rated, dict) or not _key(rated.get("_id")):
            raise bad(f"contract {ident!r}: 'ratings' must be {shape}")
        grade = rated.get("rating")
        if isinstance(grade, bool) or not isinstance(grade, int) or grade < 0:
            raise bad(f"contract {ident!r}: 'ratings' must be {shape}")
        ratings[rated["_id"]] = grade
    return ratings


def _key(value: Any) -> bool:
    return isinstance(value, str) and not blank(value)


def describe(contract: Contract, missing: Sequence[str]) -> str:
    """A broken contract in a line: its id, query and the documents it lost."""
    return f"{contract.id} ({contract.query[:60]!r}) lost {', '.join(missing)}"
