"""Golden queries against what an alias serves now (``embedmig verify``, ``embedmig watch``).

The queries are embedded and searched as a searcher would (the live index's file plus its journal
tail, through an adapter when one is current), in one batch, and judged by the kernels the
upgrade's report used; the baseline is what that report measured at the swap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from embedmig.contracts import Contract, check_known
from embedmig.environment import Environment
from embedmig.metrics import contracts as contract_figures
from embedmig.serve.searcher import Searcher
from embedmig.serve.view import IndexView
from embedmig.store import catalog, docids, events


@dataclass(frozen=True)
class Verified:
    """The golden queries of one alias, judged on its live index now."""

    alias: str
    index: catalog.IndexRecord
    metrics: dict[str, float | None]  # contract_failures, contract_ndcg_at_10
    section: dict[str, Any]  # as the report's ``contracts``: the broken contracts
    baseline: dict[str, float | None] | None  # the same metrics at the swap, if recorded

    @property
    def broken(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.section["broken"]
        return found


def verify(
    env: Environment, alias: str, contracts: Sequence[Contract], view: IndexView | None = None
) -> Verified:
    """``contracts`` judged on ``view`` (by default the alias's live index as searchers see it)."""
    if view is None:
        view = Searcher(env, alias).view  # no search: no heartbeat, no worker to close
    with env.engine.connect() as conn:
        ids_of = docids.lookup_ids(conn, alias, set().union(*(c.keys for c in contracts)))
        swap = events.swap_of(conn, alias, view.record.id, catalog.versions(conn).get(alias))
    check_known(contracts, ids_of, alias)
    compiled = contract_figures.compile_(contracts, ids_of)
    vectors = view.embedder.encode_queries([c.query for c in contracts])
    _, ids = view.search(vectors, compiled.depth)
    judged = contract_figures.judge(ids, compiled)
    baseline = None
    if swap is not None and swap.metrics is not None:
        recorded = swap.metrics.get("metrics") or {}
        if "contract_failures" in recorded:
            baseline = {name: recorded.get(name) for name in contract_figures.metrics(judged)}
    return Verified(
        alias,
        view.record,
        contract_figures.metrics(judged),
        contract_figures.section(compiled, judged, None),
        baseline,
    )
