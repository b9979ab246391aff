"""MigrationContext: what a revision's ``upgrade(ctx)`` / ``downgrade(ctx)`` operate on."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from embedmig.config import Config
from embedmig.embedders import Embedder, LoadedEmbedder
from embedmig.environment import Environment
from embedmig.errors import (
    CanaryOpen,
    ConfigError,
    GateFailed,
    ScriptError,
    SourceError,
    StateError,
)
from embedmig.gates import Gates, Verdict
from embedmig.metrics import coverage
from embedmig.metrics.coverage import Docs
from embedmig.metrics.kernels import Judgements
from embedmig.metrics.report import Report, Settings
from embedmig.migrate import canary as live_traffic
from embedmig.migrate import carryover
from embedmig.migrate import evaluate as ev
from embedmig.migrate import forecast as fc
from embedmig.migrate.backfill import CorpusStats, Sampler, Shadow, backfill
from embedmig.script import Revision
from embedmig.sources import Document, Qrels
from embedmig.store import catalog, files, manifest, traffic

log = logging.getLogger("embedmig")


@dataclass(frozen=True)
class DryRun:
    """What a dry run read from the corpus: the sample, each sampled key's column, the queries,
    and the coverage the upgrade would reach (exact: it needs no embedding)."""

    sample: fc.SampleDocs
    columns: dict[str, int]
    queries: ev.QuerySet
    notes: list[str]
    coverage: carryover.Result


class MigrationContext:
    """One revision being applied or undone, with explicit access to everything it needs."""

    def __init__(
        self,
        env: Environment,
        revision: Revision,
        *,
        dry_run: bool = False,
        sample: int | float = 1000,
        force: bool = False,
    ) -> None:
        self.env = env
        self.revision = revision
        self.dry_run = dry_run
        self.sample = sample
        self.force = force
        self.report: Report | None = None
        self.swapped = False
        self.rolled_back = False
        self._started = catalog.now()
        self._new: LoadedEmbedder | None = None
        self._shadow: Shadow | None = None
        self._dry: DryRun | None = None
        self._live_at_start: catalog.IndexRecord | None = None
        self._canary: traffic.Canary | None = None  # open on this revision's shadow

    @property
    def alias(self) -> str:
        return self.revision.alias

    @property
    def old(self) -> Embedder | None:
        return self.revision.old

    @property
    def new(self) -> Embedder:
        return self.revision.new

    @property
    def gates(self) -> Gates:
        return self.revision.gates

    @property
    def config(self) -> Config:
        return self.env.config

    @property
    def k(self) -> int:
        return self.config.get_int("eval.k")

    @cached_property
    def _qrels(self) -> Qrels | None:
        """Judgements apply only to configured queries; read once per migration."""
        return self.env.qrels(self.alias) if self.env.queries(self.alias) is not None else None

    # ---- upgrade steps -----------------------------------------------------------------------

    def backfill(self) -> None:
        """Embed the corpus (or, in a dry run, a sample) with the new model into a shadow index."""
        with self.env.engine.connect() as conn:
            self._live_at_start = catalog.live_index(conn, self.alias)
        self._new = self.env.load_embedder(self.new)
        if self._live_at_start is not None and self._live_at_start.dim != self._new.dim:
            # Legal (the shadow is a new index), but worth saying: vectors are not comparable.
            log.info("dimension changes from %d to %d", self._live_at_start.dim, self._new.dim)
        if self.dry_run:
            self._dry = self._dry_backfill(self._new)
        elif not self._continue_canary(self._new):
            sample_size = self.config.get_int("eval.sample")
            self._shadow = backfill(self.env, self.revision, self._new, sample_size)

    def evaluate(self) -> Report:
        """Compare old and new on the query sample, check the gates, keep the report.

        Raises GateFailed (after recording the verdict) when a gate fails and force is off.
        """
        if self._new is None:
            raise StateError("ctx.evaluate() needs ctx.backfill() first")
        if self._canary is not None and self._canary.report is not None:
            # The shadow was evaluated when its canary opened; writers kept it current since.
            report = Report.from_dict(self._canary.report)
        else:
            report = self._dry_evaluate() if self._dry else self._evaluate_shadow()
            covered = self._dry.coverage if self._dry else self._shadow_coverage()
            report.metrics.update(covered.counts)
            if covered.examples:
                report.distributions["coverage"] = covered.examples
        examples = report.distributions.get("coverage") or {}
        # Canary gates are judged on live traffic, by ctx.canary().
        report.verdict = self.gates.check(report.metrics, forced=self.force, canary=False)
        if self.dry_run and self.gates.on_canary:
            report.notes.append(
                "canary_* gates are judged on live traffic during the canary, not by a dry run"
            )
        self.report = report
        if not report.verdict.passed and not self.force:
            failures = "; ".join(
                check.describe() + _examples(examples, check.metric)
                for check in report.verdict.failures()
            )
            self._record_failed_gate(report)
            where = (
                "" if self.dry_run else f"; shadow index #{self._shadow_id()} kept for inspection"
            )
            raise GateFailed(
                f"gate failed for {self.alias} @ {self.revision.revision}: {failures}{where}"
                " (alias unchanged; --force overrides)",
                report,
            )
        return report

    def canary(self, fraction: float | None = None, min_queries: int | None = None) -> None:
        """Hold the swap until searchers have mirrored live queries to the shadow and the canary
        gates pass.

        The first run opens the canary and raises ``CanaryOpen``: every searcher of the alias (any
        process or host on this history database) then mirrors ``fraction`` of its queries
        (default ``canary.fraction``) to the shadow, off the request path. A later ``embedmig
        upgrade`` continues from here, without re-embedding: it swaps once ``min_queries``
        (default ``canary.min_queries``) have been compared and every ``canary_*`` gate passes,
        else raises ``CanaryOpen`` again. A dry run opens nothing.
        """
        report = self.report
        if report is None:
            raise StateError(
                "ctx.canary() needs ctx.evaluate() first: there is no shadow to mirror to"
            )
        if self._live_at_start is None:
            raise StateError(
                f"ctx.canary() compares the shadow with the live index, and {self.alias!r} has "
                "none yet (its first revision)"
            )
        share = self.config.get_share("canary.fraction") if fraction is None else fraction
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
            raise ConfigError(
                f"ctx.canary(fraction=...) must be a share from 0 to 1, got {share!r}"
            )
        needed = self.config.get_int("canary.min_queries") if min_queries is None else min_queries
        if isinstance(needed, bool) or not isinstance(needed, int) or needed < 1:
            raise ConfigError(
                f"ctx.canary(min_queries=...) must be a positive integer, got {needed!r}"
            )
        if self.dry_run:
            report.notes.append(
                f"the upgrade will hold the swap for a canary: {needed:,} live queries mirrored "
                f"at {share:.0%} (a dry run opens none)"
            )
            return
        if self._canary is None:
            self._open_canary(float(share), needed)
        canary = self._canary
        assert canary is not None
        measured = live_traffic.measure(self.env, canary, self.gates)
        report.metrics.update(measured.metrics)
        report.notes.append(f"canary on {measured.source}")
        report.verdict = live_traffic.judge(
            self.gates, report.metrics, canary.min_queries, forced=self.force
        )
        if report.verdict.passed or self.force:
            return
        compared = int(measured.metrics["canary_queries"] or 0)
        failures = "; ".join(check.describe() for check in report.verdict.failures())
        raise CanaryOpen(
            f"canary open for {self.alias} @ {self.revision.revision}: {compared:,} of "
            f"{canary.min_queries:,} mirrored queries; {failures} "
            f"(`embedmig canary {self.alias}` shows the comparison)",
            alias=self.alias,
            compared=compared,
            needed=canary.min_queries,
            report=report,
        )

    def _open_canary(self, fraction: float, min_queries: int) -> None:
        shadow, report = self._shadow, self.report
        assert shadow is not None and report is not None
        live = self._live_at_start
        # Both top-k lists must be full: k is at most what either index holds.
        k = max(1, min(self.k, shadow.record.ntotal, live.ntotal if live else self.k))
        with self.env.engine.begin() as conn:
            if traffic.open_canary(conn, self.alias) is not None:
                raise StateError(f"a canary is already open on {self.alias}")
            traffic.start(
                conn,
                alias=self.alias,
                revision=self.revision.revision,
                index_id=shadow.record.id,
                live_id=live.id if live else None,
                fraction=fraction,
                k=k,
                min_queries=min_queries,
                report=report.to_dict(),
            )
            self._record(
                conn,
                "canary",
                "open",
                from_index=live.id if live else None,
                to_index=shadow.record.id,
                verdict=_label(report.verdict) if report.verdict else None,
                metrics=report.to_dict(),
            )
        raise CanaryOpen(
            f"canary opened for {self.alias} @ {self.revision.revision}: searchers now mirror "
            f"{fraction:.0%} of their queries to shadow index #{shadow.record.id}; run "
            f"`embedmig upgrade` again once {min_queries:,} have been compared "
            f"(`embedmig canary {self.alias}` shows the comparison)",
            alias=self.alias,
            compared=0,
            needed=min_queries,
            report=report,
        )

    def _continue_canary(self, new: LoadedEmbedder) -> bool:
        """Attach to this revision's open canary (its shadow is kept current by the writers);
        an open canary that no longer fits (another revision, model or live index) is
        abandoned. False: build the shadow."""
        live_id = self._live_at_start.id if self._live_at_start else None
        with self.env.engine.begin() as conn:
            canary = traffic.open_canary(conn, self.alias)
            if canary is None:
                return False
            record = catalog.get_index(conn, canary.index_id)
            if (
                canary.revision == self.revision.revision
                and record.state == catalog.READY
                and record.fingerprint == new.fingerprint
                and canary.live_id == live_id
                and canary.report is not None
            ):
                self._canary = canary
                self._shadow = Shadow(record, None, [], CorpusStats(), carryover.Result({}))
                log.info("continuing the canary of %s on shadow index #%d", self.alias, record.id)
                return True
            live_traffic.end(conn, canary, traffic.ABANDONED, started_at=self._started)
        log.warning(
            "abandoned the canary of %s @ %s: it no longer matches this upgrade",
            self.alias,
            canary.revision,
        )
        return False

    def swap(self) -> None:
        """Point the alias at the shadow index, atomically, and record it."""
        if self.report is None:
            self.evaluate()
        assert self.report is not None and self.report.verdict is not None
        if self.gates.on_canary and self._canary is None and not self.dry_run:
            raise ScriptError(
                f"the gates of {self.revision.revision} name canary_* metrics, but its "
                "upgrade() calls ctx.swap() without ctx.canary() first"
            )
        verdict = self.report.verdict
        if self.dry_run:
            with self.env.engine.begin() as conn:
                self._record(
                    conn, "dry-run", "ok", verdict=_label(verdict), metrics=self._metrics()
                )
            self.swapped = True
            return
        shadow = self._shadow
        assert shadow is not None
        # As for a rollback: readers must find a working file once the pointer moves.
        files.verify(self.env.file_of(shadow.record), shadow.record.sha256)
        with self.env.engine.begin() as conn:
            live = catalog.live_index(conn, self.alias)
            expected = self._live_at_start.id if self._live_at_start else None
            if (live.id if live else None) != expected:
                raise StateError(
                    f"the live index of {self.alias} changed during this migration "
                    f"(now #{live.id if live else None}); re-run the upgrade"
                )
            catalog.point_alias(conn, self.alias, self.revision.revision, shadow.record.id)
            if self._canary is not None:
                status = traffic.FORCED if not verdict.passed else traffic.PASSED
                traffic.close(conn, self._canary.id, status)
            self._record(
                conn,
                "upgrade",
                "forced" if not verdict.passed else "ok",
                from_index=expected,
                to_index=shadow.record.id,
                verdict=_label(verdict),
                forced=not verdict.passed,
                metrics=self._metrics(),
            )
        self.swapped = True
        log.info(
            "swapped %s to index #%d (%s)", self.alias, shadow.record.id, self.revision.revision
        )

    # ---- downgrade ---------------------------------------------------------------------------

    def rollback(self) -> None:
        """Point the alias back at the index that was live before this revision; no re-embedding."""
        rev = self.revision
        with self.env.engine.begin() as conn:
            live = catalog.live_index(conn, self.alias)
            if live is None or live.revision != rev.revision:
                raise StateError(
                    f"alias {self.alias} is not live on an index of revision {rev.revision}; "
                    "nothing to roll back"
                )
            previous: catalog.IndexRecord | None = None
            if rev.down_revision is not None:
                previous = self._previous_index(conn, live)
                # Readers must find a working index once the pointer moves: check it first.
                files.verify(self.env.file_of(previous), previous.sha256)
            catalog.point_alias(
                conn, self.alias, rev.down_revision, previous.id if previous else None
            )
            opened = traffic.open_canary(conn, self.alias)
            if opened is not None:  # it compares against the index that stops being live
                live_traffic.end(conn, opened, traffic.ABANDONED, started_at=self._started)
            self._record(
                conn,
                "downgrade",
                "ok",
                from_index=live.id,
                to_index=previous.id if previous else None,
            )
        self.rolled_back = True

    def _previous_index(self, conn: Any, live: catalog.IndexRecord) -> catalog.IndexRecord:
        rev = self.revision
        for event in catalog.history(conn, self.alias, rev.revision):
            if event.action == "upgrade" and event.to_index == live.id and event.from_index:
                previous = catalog.get_index(conn, event.from_index)
                break
        else:
            found = catalog.find_index(conn, self.alias, str(rev.down_revision), [catalog.RETIRED])
            if found is None:
                raise StateError(f"no retained index of {rev.down_revision} to roll back to")
            previous = found
        if previous.state != catalog.RETIRED:
            raise StateError(
                f"index #{previous.id} of {previous.revision} is {previous.state}, not retired; "
                "it cannot be restored without re-embedding"
            )
        return previous

    # ---- internals ---------------------------------------------------------------------------

    def _shadow_coverage(self) -> carryover.Result:
        assert self._shadow is not None
        return self._shadow.coverage

    def _shadow_id(self) -> int | None:
        return self._shadow.record.id if self._shadow else None

    def _metrics(self) -> dict[str, Any] | None:
        return self.report.to_dict() if self.report else None

    def _record(self, conn: Any, action: str, status: str, **values: Any) -> None:
        catalog.record(
            conn,
            alias=self.alias,
            revision=self.revision.revision,
            action=action,
            status=status,
            started_at=self._started,
            **values,
        )

    def _record_failed_gate(self, report: Report) -> None:
        with self.env.engine.begin() as conn:
            self._record(
                conn,
                "dry-run" if self.dry_run else "upgrade",
                "gate-failed",
                from_index=self._live_at_start.id if self._live_at_start else None,
                to_index=self._shadow_id(),
                verdict="fail",
                metrics=report.to_dict(),
            )

    def _sample_queries(
        self, corpus_sample: list[Document], ids_of: Mapping[str, int]
    ) -> ev.QuerySet:
        """Configured queries (judged ones, when there are qrels) or a sample of the documents."""
        size = self.config.get_int("eval.sample")
        seed = self.config.get_int("eval.seed")
        qrels = self._qrels
        if self.old is None and qrels is None and not self.gates:
            # An alias's first index has nothing to be compared with: skip encoding queries.
            return ev.QuerySet([], "none (first index of the alias, no qrels)")
        source = self.env.queries(self.alias)
        if source is None:
            docs = [d for d in corpus_sample if d.key in ids_of][:size]
            self_ids = np.array([ids_of[d.key] for d in docs], dtype=np.int64)
            return ev.QuerySet(docs, "sampled corpus documents", self_ids=self_ids)
        sampler = Sampler(size, seed)
        for doc in source:
            if qrels is None or doc.key in qrels:
                sampler.offer(doc)
        docs = sampler.documents()
        judged = None
        if qrels is not None:
            triples = [
                (row, ids_of[key], grade)
                for row, doc in enumerate(docs)
                for key, grade in qrels[doc.key].items()
                if key in ids_of
            ]
            judged = (
                Judgements(
                    *(np.array(column, dtype=np.int64) for column in zip(*triples, strict=True))
                )
                if triples
                else Judgements.empty()
            )
        if self.env.uses_query_log():
            return ev.QuerySet(docs, "query log: queries searchers served")
        return ev.QuerySet(docs, "queries file" + (" with qrels" if qrels else ""), judged=judged)

    def _run_evaluation(
        self,
        *,
        old: ev.Side | None,
        new: ev.Side,
        queries: ev.QuerySet,
        corpus_sample: list[Document],
        keys_of: Callable[[set[int]], Mapping[int, str]],
        notes: list[str],
    ) -> Report:
        compared = bool(queries.docs)  # nothing is compared for a first index without qrels
        background = [d.text for d in corpus_sample[: self.config.get_int("eval.pair_docs")]]
        return ev.run(
            alias=self.alias,
            revision=self.revision.revision,
            dry_run=self.dry_run,
            old=old,
            new=new,
            queries=queries,
            background=background if compared else [],
            settings=self._settings(),
            batch_size=self.env.batch_size,
            keys_of=keys_of,
            notes=notes,
            progress=self.env.progress,
        )

    def _settings(self) -> Settings:
        return Settings(
            k=self.k,
            rbo_p=self.config.get_float("eval.rbo_p"),
            thresholds=self.gates.thresholds,
            seed=self.config.get_int("eval.seed"),
            resamples=self.config.get_int("eval.resamples"),
        )

    def _live_index(self, live: catalog.IndexRecord) -> Any:
        return files.load(self.env.file_of(live), live.sha256)

    def _evaluate_shadow(self) -> Report:
        shadow, new = self._shadow, self._new
        assert shadow is not None and new is not None
        with self.env.engine.connect() as conn:
            candidate_keys = {d.key for d in shadow.sample}
            if self._qrels is not None:
                candidate_keys |= {key for judged in self._qrels.values() for key in judged}
            ids_of = catalog.lookup_ids(conn, self.alias, candidate_keys)
        queries = self._sample_queries(shadow.sample, ids_of)
        old_side = None
        live = self._live_at_start
        if live is not None and self.old is not None:
            old_side = ev.Side(self.env.load_embedder(self.old), self._live_index(live))

        def keys_of(ids: set[int]) -> dict[int, str]:
            with self.env.engine.connect() as conn:
                described = catalog.describe_ids(conn, self.alias, ids)
            return {i: doc.key for i, doc in described.items()}

        index = shadow.index
        if index is None:  # evaluated before: read it back, verified
            index = files.load(self.env.file_of(shadow.record), shadow.record.sha256)
        report = self._run_evaluation(
            old=old_side,
            new=ev.Side(new, index),
            queries=queries,
            corpus_sample=shadow.sample,
            keys_of=keys_of,
            notes=shadow.stats.notes,
        )
        report.timings.update(shadow.stats.seconds)
        # The swap needs only the saved file: free the index now rather than inside the swap.
        shadow.index = None
        return report

    def _dry_backfill(self, new: LoadedEmbedder) -> DryRun:
        """Read the corpus once: a seeded uniform sample and the judged documents; nothing is
        embedded yet (the forecast embeds them with the new model only)."""
        # No index is built, but a factory the upgrade could not build fails here, as there.
        files.new_index(new.dim, self.revision.index_factory)
        seed = self.config.get_int("eval.seed")
        # An int is a count of documents; a float in (0, 1] a share of the corpus.
        if isinstance(self.sample, float):
            sampler = Sampler(0, seed, rate=self.sample)
        else:
            sampler = Sampler(self.sample, seed)
        judged = {key for judged in (self._qrels or {}).values() for key in judged}
        extra: dict[str, Document] = {}
        skipped = population = 0
        read = _CorpusRead(self.env, self.alias)
        for doc in self.env.corpus(self.alias):
            if not doc.text.strip():
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
            raise SourceError(f"the corpus of alias {self.alias!r} has no non-empty documents")
        if not uniform and population > len(extra):
            # Nothing to extrapolate from: the unjudged documents would go unrepresented.
            raise ConfigError(
                f"--sample {self.sample:g} drew none of the {population - len(extra):,} "
                "unjudged documents; take a larger sample"
            )
        columns = {d.key: i for i, d in enumerate([*uniform, *extra.values()])}
        notes = [
            f"seeded sample of {len(uniform):,} documents"
            + (f" plus the {len(extra):,} judged documents of the queries" if extra else "")
        ]
        if skipped:
            notes.append(f"{skipped} empty document(s) skipped")
        queries = self._sample_queries(uniform, columns)
        sample = fc.SampleDocs(uniform, list(extra.values()), population)
        covered = read.coverage(self._live_at_start)
        return DryRun(sample, columns, queries, notes + covered.notes, covered)

    def _dry_evaluate(self) -> Report:
        dry, new = self._dry, self._new
        assert dry is not None and new is not None
        old_side = None
        live = self._live_at_start
        if live is not None and self.old is not None:
            keys = set(dry.columns) | {q.key for q in dry.queries.docs}
            with self.env.engine.connect() as conn:
                live_ids = catalog.lookup_ids(conn, self.alias, keys)
            old_side = fc.LiveSide(
                self.env.load_embedder(self.old), self._live_index(live), live_ids
            )
        return fc.run(
            alias=self.alias,
            revision=self.revision.revision,
            new=new,
            old=old_side,
            sample=dry.sample,
            columns=dry.columns,
            queries=dry.queries,
            settings=self._settings(),
            resamples=self.config.get_int("eval.forecast_resamples"),
            pair_docs=self.config.get_int("eval.pair_docs"),
            batch_size=self.env.batch_size,
            notes=dry.notes,
        )


class _CorpusRead:
    """A dry run's read of the whole corpus as (doc id, text hash), for the coverage forecast.

    Keys embedmig never saw are new documents: the corpus adds them, which coverage never
    questions, so only known keys are kept (16 bytes each).
    """

    _CHUNK = 500

    def __init__(self, env: Environment, alias: str) -> None:
        self.env = env
        self.alias = alias
        self._pending: dict[str, int] = {}
        self._ids: list[int] = []
        self._sha: list[int] = []

    def add(self, doc: Document) -> None:
        self._pending[doc.key] = manifest.content_hash(doc.text)
        if len(self._pending) >= self._CHUNK:
            self._resolve()

    def _resolve(self) -> None:
        with self.env.engine.connect() as conn:
            found = catalog.lookup_ids(conn, self.alias, self._pending)
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


def _examples(examples: Mapping[str, list[str]], metric: str) -> str:
    """A coverage gate's failure names the first documents concerned."""
    keys = examples.get(metric.removeprefix("coverage_"))
    return (
        f" ({', '.join(keys)}{', ...' if len(keys) >= carryover.EXAMPLES else ''})" if keys else ""
    )


def _label(verdict: Verdict) -> str | None:
    """The verdict as history records it; None when the revision has no gates."""
    return verdict.label if verdict.checks else None
