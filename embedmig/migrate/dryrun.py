"""A dry run's side of ``ctx.backfill()`` and ``ctx.evaluate()``: read the corpus once for a
seeded sample (nothing durable is built), then forecast the upgrade's report from it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from embedmig.contracts import Contract, check_known
from embedmig.embedders import LoadedEmbedder
from embedmig.environment import Environment
from embedmig.errors import ConfigError, SourceError
from embedmig.history.batches import IN_LIST
from embedmig.metrics import contracts as contract_figures
from embedmig.metrics import coverage
from embedmig.metrics.coverage import Docs
from embedmig.metrics.report import Report
from embedmig.migrate import carryover
from embedmig.migrate import evaluate as ev
from embedmig.migrate import forecast as forecasting
from embedmig.migrate.backfill import Sampler
from embedmig.migrate.settings import EvalSettings
from embedmig.names import blank
from embedmig.script import Revision
from embedmig.sources import Document
from embedmig.store import catalog, docids, files, manifest
from embedmig.store.clock import Phases


@dataclass(frozen=True)
class DryRun:
    """What a dry run read from the corpus: the sample, each sampled key's column, the queries,
    and the coverage the upgrade would reach (exact: it needs no embedding). ``phases`` times
    the whole dry run, from the new model's loading to the forecast's last figure."""

    sample: forecasting.SampleDocs
    columns: dict[str, int]
    queries: ev.QuerySet
    notes: list[str]
    coverage: carryover.Result
    contracts: Sequence[Contract] | None = None
    phases: Phases = field(default_factory=Phases)

    @classmethod
    def read(
        cls,
        env: Environment,
        rev: Revision,
        new: LoadedEmbedder,
        live: catalog.IndexRecord | None,
        queries: ev.QuerySource,
        settings: EvalSettings,
        sample: int | float,
    ) -> DryRun:
        """Read the corpus once: a seeded uniform sample of ``sample`` documents (a float: that
        share of the corpus) and the judged documents; nothing is embedded yet."""
        phases = Phases()
        phases.add("load", new.load_seconds)
        with phases.phase("read"):
            # No index is built, but a factory the upgrade could not build fails here, as there.
            files.new_index(new.dim, rev.index_factory)
            if isinstance(sample, float):
                sampler = Sampler(0, settings.seed, rate=sample)
            else:
                sampler = Sampler(sample, settings.seed)
            judged = queries.judged_keys()
            extra: dict[str, Document] = {}
            skipped = population = 0
            read = _CorpusRead(env, rev.alias)
            for doc in env.corpus(rev.alias):
                if blank(doc.text):
                    skipped += 1
                    continue
                population += 1
                read.add(doc)
                if doc.key in judged:
                    extra[doc.key] = doc
                else:
                    sampler.offer(doc)
            uniform = sampler.documents()
            if not uniform and not extra:
                raise SourceError(f"the corpus of alias {rev.alias!r} has no non-empty documents")
            if not uniform and population > len(extra):
                # Nothing to extrapolate from: the unjudged documents would go unrepresented.
                raise ConfigError(
                    f"--sample {sample:g} drew none of the {population - len(extra):,} "
                    "unjudged documents; take a larger sample"
                )
            columns = {d.key: i for i, d in enumerate([*uniform, *extra.values()])}
            notes = [
                f"seeded sample of {len(uniform):,} documents"
                + (f" plus the {len(extra):,} judged documents of the queries" if extra else "")
            ]
            if skipped:
                notes.append(f"{skipped} empty document(s) skipped")
            query_set = queries.sample(
                settings, uniform, columns, compared=rev.old is not None or bool(rev.gates)
            )
            covered = read.coverage(live)
            return cls(
                forecasting.SampleDocs(uniform, list(extra.values()), population),
                columns,
                query_set,
                notes + covered.notes,
                covered,
                queries.contracts,
                phases,
            )

    def forecast(
        self,
        env: Environment,
        rev: Revision,
        new: LoadedEmbedder,
        live: catalog.IndexRecord | None,
        old_side: Callable[[], LoadedEmbedder | None],
        settings: EvalSettings,
    ) -> Report:
        """The report the upgrade would write, forecast for the full corpus: the old side exact
        from the live index (``old_side`` loads what embeds for it as the alias serves it), the
        new side estimated from the sample."""
        with self.phases.phase("load"):
            old = self._old(env, rev.alias, live, old_side)
        return forecasting.run(
            alias=rev.alias,
            revision=rev.revision,
            new=new,
            old=old,
            sample=self.sample,
            columns=self.columns,
            queries=self.queries,
            settings=settings.metrics(rev.gates.thresholds),
            resamples=settings.forecast_resamples,
            pair_docs=settings.pair_docs,
            notes=self.notes,
            price=new.spec.price(env.settings.price_per_million_tokens),
            contracts=self._contracts(env, rev.alias, old),
            segment=settings.segment,
            phases=self.phases,
        )

    def _old(
        self,
        env: Environment,
        alias: str,
        live: catalog.IndexRecord | None,
        old_side: Callable[[], LoadedEmbedder | None],
    ) -> forecasting.LiveSide | None:
        embedder = old_side() if live is not None else None
        if live is None or embedder is None:
            return None
        keys = set(self.columns) | {q.key for q in self.queries.docs}
        with env.engine.connect() as conn:
            live_ids = docids.lookup_ids(conn, alias, keys)
        return forecasting.LiveSide(embedder, env.open_index(live), live_ids)

    def _contracts(
        self, env: Environment, alias: str, old: forecasting.LiveSide | None
    ) -> forecasting.Contracts | None:
        """The golden queries as the forecast reads them: their documents as sample columns,
        and the old side judged exactly on the live index."""
        if not self.contracts:
            return None
        on_old = None
        if old is not None:
            with env.engine.connect() as conn:
                live_ids = docids.lookup_ids(
                    conn, alias, set().union(*(c.keys for c in self.contracts))
                )
            check_known(self.contracts, live_ids, alias)
            compiled = contract_figures.compile_(self.contracts, live_ids)
            vectors = old.embedder.encode_queries([c.query for c in self.contracts])
            _, ids = old.index.search(vectors, compiled.depth)
            on_old = contract_figures.judge(ids, compiled)
        return forecasting.Contracts(
            contract_figures.compile_(self.contracts, self.columns), on_old
        )


class _CorpusRead:
    """A dry run's read of the whole corpus as (doc id, text hash), for the coverage forecast.

    Keys embedmig never saw are new documents: the corpus adds them, which coverage never
    questions, so only known keys are kept (16 bytes each).
    """

    def __init__(self, env: Environment, alias: str) -> None:
        self.env = env
        self.alias = alias
        self._pending: dict[str, int] = {}
        self._ids: list[int] = []
        self._sha: list[int] = []

    def add(self, doc: Document) -> None:
        self._pending[doc.key] = manifest.content_hash(doc.text)
        if len(self._pending) >= IN_LIST:
            self._resolve()

    def _resolve(self) -> None:
        with self.env.engine.connect() as conn:
            found = docids.lookup_ids(conn, self.alias, self._pending)
        for key, sha in self._pending.items():
            if key in found:
                self._ids.append(found[key])
                self._sha.append(sha)
        self._pending.clear()

    def coverage(self, live: catalog.IndexRecord | None) -> carryover.Result:
        self._resolve()
        now = Docs.of(np.array(self._ids, dtype=np.int64), np.array(self._sha, dtype=np.int64))
        with self.env.engine.connect() as conn:
            plan = carryover.plan(conn, self.alias, live, now)
            if plan is None:
                assert live is not None
                return carryover.unknown(live)
            found = coverage.compare(plan.target.docs, plan.feasible(now))
            return carryover.result(conn, self.alias, found, plan, "would be carried over")
