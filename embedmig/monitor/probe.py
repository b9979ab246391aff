"""Drift of the live embedders (``embedmig probe``): each live index's embedder re-embeds the
probe texts and is compared with the vectors recorded when the index was built."""

from __future__ import annotations

from dataclasses import dataclass

from embedmig.embedders import Embedder, probes
from embedmig.environment import Environment
from embedmig.errors import StateError
from embedmig.store import catalog


@dataclass(frozen=True)
class ProbeResult:
    """One live index's embedder, measured now against the probe vectors it was built with."""

    alias: str
    index: catalog.IndexRecord
    embedder: str  # its description (no key: keys are never stored)
    lowest: float | None  # the lowest probe cosine; None: the index predates probes
    min_cosine: float

    @property
    def drifted(self) -> bool:
        return self.lowest is not None and self.lowest < self.min_cosine


def probe(env: Environment, alias: str | None = None) -> list[ProbeResult]:
    """Each live index's embedder (or ``alias``'s) measured on the probes now."""
    if not env.has_history():
        records = []
    else:
        with env.engine.connect() as conn:
            records = catalog.live_indexes(conn, alias)
    if alias is not None and not records:
        raise StateError(f"alias {alias!r} has no live index to probe")
    results = []
    for record in records:
        embedder = env.load_embedder(Embedder.from_json(record.model))
        lowest = probes.against(record.probe, record.dim, embedder)
        minimum = env.settings.probe_min_cosine
        results.append(ProbeResult(record.alias, record, embedder.describe(), lowest, minimum))
    return results
