"""Adapter revisions: a map fitted from the new model's space into the live index's, measured
against the full re-embed it stands in for before it may serve.

``fit_on_live`` reads a seeded sample of the corpus (the dry run's read: ``adapter.pairs``
uniform documents plus the judged documents of the queries), embeds it with the new model, reads
the sampled documents' old vectors back from the live index (embedding with the old model only
where the index cannot give vectors back) and fits the map on the uniform documents alone: the
judged ones are kept out, so the map is not fitted on the answers it is measured by.

``evaluate`` builds the report: the usual old-vs-new figures measured exactly (old model and
adapted new model on the same live index), and the adapter's own, each with a 95% interval, from
the dry-run forecast of the full re-embed on the same sample: ``adapter_recall_ratio`` (adapted
recall@10 over the re-embed's) and ``adapter_overlap_at_10`` (the share of the re-embed's top 10
the adapted search finds).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from embedmig.embedders import Embedder, LoadedEmbedder
from embedmig.embedders.adapted import AdaptedEmbedder, Map
from embedmig.environment import Environment
from embedmig.errors import StateError
from embedmig.metrics import report as rpt
from embedmig.metrics.names import ADAPTER
from embedmig.migrate import cost
from embedmig.migrate import evaluate as ev
from embedmig.migrate import forecast as forecasting
from embedmig.migrate.dryrun import DryRun
from embedmig.migrate.fit import MapSpec, fit
from embedmig.migrate.settings import MigrationSettings
from embedmig.script import Revision
from embedmig.sources import Document
from embedmig.store import catalog, docids, files

log = logging.getLogger("embedmig")

_FILE = "adapter file"


@dataclass
class Fitted:
    """A map fitted on the live index, and what its evaluation reuses of the fit's read."""

    spec: MapSpec
    adapted: AdaptedEmbedder
    live: catalog.IndexRecord
    dry: DryRun
    index: Any  # the live index file, loaded and verified once
    pairs: int
    reconstructed: bool  # old vectors read back from the index (else embedded by the old model)
    usage: Any
    seconds: float
    probe: bytes  # the new model's probe vectors, measured outside any transaction

    @property
    def map(self) -> Map:
        return self.adapted.map


def fit_on_live(
    env: Environment,
    rev: Revision,
    new: LoadedEmbedder,
    live: catalog.IndexRecord,
    settings: MigrationSettings,
    spec: MapSpec,
    *,
    old: Callable[[], LoadedEmbedder | None],
) -> Fitted:
    """Fit ``spec`` from ``new`` into ``live``'s space, in memory: ``write`` and ``register``
    keep it once it serves (a failed gate or a script error leaves nothing behind, and the rerun's
    fit is seeded and reads its documents from the embedding cache)."""
    from embedmig.embedders import probes

    started = time.perf_counter()
    queries = ev.QuerySource.of(env, rev.alias)
    dry = DryRun.read(env, rev, new, live, queries, settings.eval, settings.adapter_pairs)
    docs = [*dry.sample.uniform, *dry.sample.judged]
    before = new.usage
    vectors = new.encode_documents([d.text for d in docs])
    usage = new.usage - before
    uniform = dry.sample.uniform
    with env.engine.connect() as conn:
        live_ids = docids.lookup_ids(conn, rev.alias, [d.key for d in uniform])
    rows = [i for i, d in enumerate(uniform) if d.key in live_ids]
    if len(rows) < 2:
        raise StateError(
            f"the live index of {rev.alias!r} holds {len(rows)} of the sampled documents: "
            "a map needs at least 2 documents both models embedded"
        )
    index = env.open_index(live)
    ids = np.array([live_ids[uniform[i].key] for i in rows], dtype=np.int64)
    targets, reconstructed = _old_vectors(index, ids, [uniform[i] for i in rows], old)
    normalize = Embedder.from_json(live.model).normalize
    mapping = fit(spec, vectors[rows], targets, normalize=normalize, seed=settings.eval.seed)
    log.info("fitted a %s map on %d pairs", spec.describe(), len(rows))
    return Fitted(
        spec,
        AdaptedEmbedder(new, mapping, mapping.sha256()),
        live,
        dry,
        index,
        len(rows),
        reconstructed,
        usage,
        time.perf_counter() - started,
        probes.to_bytes(probes.of(new)),
    )


def _old_vectors(
    index: Any, ids: np.ndarray, docs: list[Document], old: Callable[[], LoadedEmbedder | None]
) -> tuple[np.ndarray, bool]:
    """The old vectors of ``ids``: read back from the index, else embedded as the alias serves
    it (an index whose factory cannot give vectors back exactly, IVF-PQ say)."""
    try:
        vectors: np.ndarray = index.reconstruct_batch(ids)
        return vectors, True
    except RuntimeError:
        embedder = old()
        assert embedder is not None
        return embedder.encode_documents([d.text for d in docs]), False


def write(env: Environment, rev: Revision, fitted: Fitted) -> Path:
    """The map's file, written before the row that names it commits: a run killed in between
    leaves a file that the rerun's identical fit (seeded) writes again at the same path."""
    path = env.adapter_path(rev.alias, rev.revision, fitted.adapted.map_sha256)
    files.save_bytes(fitted.map.to_bytes(), path, _FILE)
    return path


def register(
    conn: sa.Connection, env: Environment, rev: Revision, fitted: Fitted, path: Path, state: str
) -> catalog.AdapterRecord:
    """The row of a map ``write`` stored, in ``state`` (``live``, ``bridge``), in the caller's
    transaction."""
    new = fitted.adapted.inner
    adapter_id = catalog.register_adapter(
        conn,
        alias=rev.alias,
        revision=rev.revision,
        index_id=fitted.live.id,
        kind=fitted.spec.kind,
        path=env.stored_path(path),
        sha256=fitted.adapted.map_sha256,
        fingerprint=new.fingerprint,
        model=new.spec_json,
        dim=new.dim,
        pairs=fitted.pairs,
        probe=fitted.probe,
        state=state,
    )
    (record,) = [a for a in catalog.adapters(conn, rev.alias) if a.id == adapter_id]
    return record


def evaluate(
    env: Environment,
    rev: Revision,
    fitted: Fitted,
    old: LoadedEmbedder,
    live: catalog.IndexRecord,
    settings: MigrationSettings,
) -> rpt.Report:
    """The report of an adapter revision (see the module docstring)."""
    eval_settings = settings.eval
    metrics_settings = eval_settings.metrics(rev.gates.thresholds)
    dry = fitted.dry
    uniform = dry.sample.uniform
    queries = ev.QuerySource.of(env, rev.alias)
    with env.engine.connect() as conn:
        ids_of = docids.lookup_ids(
            conn, rev.alias, {d.key for d in uniform} | queries.judged_keys()
        )
    query_set = queries.sample(eval_settings, uniform, ids_of, compared=True)

    def keys_of(ids: set[int]) -> dict[int, str]:
        with env.engine.connect() as conn:
            described = docids.describe_ids(conn, rev.alias, ids)
        return {i: doc.key for i, doc in described.items()}

    report = ev.run(
        alias=rev.alias,
        revision=rev.revision,
        old=ev.Side(old, fitted.index),
        new=ev.Side(fitted.adapted, fitted.index),
        queries=query_set,
        background=[d.text for d in uniform[: eval_settings.pair_docs]],
        settings=metrics_settings,
        keys_of=keys_of,
        notes=dry.notes,
        progress=env.progress,
    )
    started = time.perf_counter()
    with env.engine.connect() as conn:
        live_ids = docids.lookup_ids(
            conn, rev.alias, set(dry.columns) | {q.key for q in dry.queries.docs}
        )
    reembed = forecasting.run(
        alias=rev.alias,
        revision=rev.revision,
        new=fitted.adapted.inner,
        old=forecasting.LiveSide(fitted.adapted, fitted.index, live_ids),
        sample=dry.sample,
        columns=dry.columns,
        queries=dry.queries,
        settings=metrics_settings,
        resamples=eval_settings.forecast_resamples,
        pair_docs=2,
        notes=(),
        price=fitted.adapted.inner.spec.price(env.settings.price_per_million_tokens),
    )
    report.metrics.update(_adapter_metrics(reembed.metrics))
    ev.after_the_swap(
        env,
        rev,
        report,
        queries,
        ev.Side(fitted.adapted, fitted.index),
        ev.Side(old, fitted.index),
        eval_settings.k,
    )
    intervals = report.distributions.setdefault("intervals", {})
    for name in ADAPTER:
        low, high = report.metrics.get(f"{name}_ci_low"), report.metrics.get(f"{name}_ci_high")
        if low is not None and high is not None:
            intervals[name] = [low, high]
    report.timings["forecast_reembed_s"] = time.perf_counter() - started
    report.timings["fit_s"] = fitted.seconds
    population = dry.sample.population
    texts = [d.text for d in [*uniform, *dry.sample.judged]]
    # What the fit spent, and what the full re-embed it stands in for would: the forecast_*
    # figures a dry run shows, at the throughput and tokens per document the fit measured.
    report.embedding = {
        **cost.forecast(
            fitted.usage,
            texts,
            population,
            fitted.adapted.inner.spec.price(env.settings.price_per_million_tokens),
        ),
        "not_reembedded": max(population - len(dry.columns), 0),
    }
    report.notes.append(
        f"adapter: a {fitted.spec.describe()} map from {fitted.adapted.inner.describe()} into the "
        f"live index #{live.id}, fitted on {fitted.pairs:,} document pairs (old vectors "
        + ("read back from the index" if fitted.reconstructed else "embedded by the old model")
        + f"); {population - len(dry.columns):,} of {population:,} documents not re-embedded"
    )
    if report.metrics.get("adapter_recall_ratio") is None:
        report.notes.append(
            "adapter_recall_ratio needs queries with qrels: without them the default adapter "
            "gate cannot pass (bound adapter_overlap_at_10 in the revision's gates instead)"
        )
    return report


def _adapter_metrics(forecast: dict[str, float | None]) -> dict[str, float | None]:
    """The forecast compares the adapted search (its exact "old" side) with the re-embed (its
    forecast "new" side): the adapter's figures are read, or inverted, from it. A ratio's
    bootstrap interval inverts with it (percentile intervals follow monotone maps)."""
    out: dict[str, float | None] = {}

    def copy(source: str, target: str) -> None:
        for suffix in ("", "_ci_low", "_ci_high"):
            out[target + suffix] = forecast.get(source + suffix)

    copy("overlap_at_10", "adapter_overlap_at_10")
    copy("recall_at_10_new", "reembed_recall_at_10")
    ratio = forecast.get("recall_ratio")
    low, high = forecast.get("recall_ratio_ci_low"), forecast.get("recall_ratio_ci_high")
    out["adapter_recall_ratio"] = 1.0 / ratio if ratio else None
    out["adapter_recall_ratio_ci_low"] = 1.0 / high if high else None
    out["adapter_recall_ratio_ci_high"] = 1.0 / low if low else None
    if forecast.get("recall_at_10_old") == 0 and forecast.get("recall_at_10_new"):
        # The adapted search found nothing relevant (measured, not forecast): 0 in every replicate.
        for suffix in ("", "_ci_low", "_ci_high"):
            out["adapter_recall_ratio" + suffix] = 0.0
    return out
