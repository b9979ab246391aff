"""MigrationContext: what a revision's ``upgrade(ctx)`` / ``downgrade(ctx)`` operate on.

The verbs read as the README's "What ``upgrade`` does": ``backfill`` (or, in a dry run, read a
sample), ``evaluate`` and gate, ``canary``, ``swap``; ``rollback``. What each verb does lives in
its own module: ``backfill``, ``dryrun``, ``evaluate``, ``canary``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import cached_property
from typing import Any

from embedmig.embedders import Embedder, LoadedEmbedder
from embedmig.environment import Environment
from embedmig.errors import GateFailed, ScriptError, StateError
from embedmig.gates import Gates, Verdict
from embedmig.metrics.report import Report
from embedmig.migrate import canary as live_traffic
from embedmig.migrate import carryover
from embedmig.migrate import evaluate as ev
from embedmig.migrate.backfill import CorpusStats, Shadow, backfill
from embedmig.migrate.dryrun import DryRun
from embedmig.migrate.settings import MigrationSettings
from embedmig.script import Revision
from embedmig.store import catalog, files, traffic

log = logging.getLogger("embedmig")


class MigrationContext:
    """One revision being applied or undone, with explicit access to everything it needs.

    ``live`` is the index the alias served when the run started (read once, by the runner);
    ``settings`` what an upgrade read from the configuration (a downgrade reads none).
    """

    def __init__(
        self,
        env: Environment,
        revision: Revision,
        settings: MigrationSettings | None = None,
        *,
        live: catalog.IndexRecord | None = None,
        dry_run: bool = False,
        sample: int | float = 1000,
        force: bool = False,
    ) -> None:
        self.env = env
        self.revision = revision
        self._settings = settings
        self.dry_run = dry_run
        self.sample = sample
        self.force = force
        self.report: Report | None = None
        self.swapped = False
        self.rolled_back = False
        self._live = live
        self._started = catalog.now()
        self._new: LoadedEmbedder | None = None
        self._shadow: Shadow | None = None
        self._dry: DryRun | None = None
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
    def settings(self) -> MigrationSettings:
        if self._settings is None:
            raise StateError("only upgrade(ctx) can build, evaluate or swap an index")
        return self._settings

    @property
    def k(self) -> int:
        return self.settings.eval.k

    @property
    def serving(self) -> catalog.IndexRecord | None:
        """The index the alias serves once this context is done: the shadow after a swap, else
        the index live when it started (a dry run swaps nothing)."""
        if self.swapped and self._shadow is not None:
            return self._shadow.record
        return self._live

    @property
    def new_fingerprint(self) -> str | None:
        """The new model's fingerprint, once ``backfill`` loaded it."""
        return self._new.fingerprint if self._new is not None else None

    @cached_property
    def _queries(self) -> ev.QuerySource:
        return ev.QuerySource.of(self.env, self.alias)

    # ---- upgrade steps -----------------------------------------------------------------------

    def backfill(self) -> None:
        """Embed the corpus with the new model into a shadow index (a dry run reads a sample of
        it instead); an open canary of this revision is continued, without re-embedding."""
        if self._new is not None:
            raise StateError("ctx.backfill() was called twice in one upgrade()")
        self._new = new = self.env.load_embedder(self.new, cache=True)
        if self._live is not None and self._live.dim != new.dim:
            # Legal (the shadow is a new index), but worth saying: vectors are not comparable.
            log.info("dimension changes from %d to %d", self._live.dim, new.dim)
        if self.dry_run:
            self._dry = DryRun.read(
                self.env,
                self.revision,
                new,
                self._live,
                self._queries,
                self.settings.eval,
                self.sample,
            )
            return
        attached = live_traffic.attach(
            self.env,
            self.alias,
            self.revision.revision,
            new.fingerprint,
            self._live.id if self._live else None,
            self._started,
        )
        if attached is not None:
            self._canary, record = attached
            self._shadow = Shadow(record, None, [], CorpusStats(), carryover.Result({}))
        else:
            self._shadow = backfill(self.env, self.revision, new, self.settings)

    def evaluate(self) -> Report:
        """Compare old and new on the query sample (a dry run: forecast the comparison), check the
        gates, keep the report.

        Raises GateFailed (after recording the verdict) when a gate fails and force is off.
        """
        new = self._new
        if new is None:
            raise StateError("ctx.evaluate() needs ctx.backfill() first")
        if self._canary is not None and self._canary.report is not None:
            # The shadow was evaluated when its canary opened; writers kept it current since.
            report = Report.from_dict(self._canary.report)
        else:
            if self._dry is not None:
                covered = self._dry.coverage
                report = self._dry.forecast(
                    self.env, self.revision, new, self._live, self.settings.eval
                )
            else:
                assert self._shadow is not None
                covered = self._shadow.coverage
                report = ev.evaluate_shadow(
                    self.env,
                    self.revision,
                    self._shadow,
                    new,
                    self._live,
                    self._queries,
                    self.settings.eval,
                )
            report.metrics.update(covered.counts)
            if covered.examples:
                report.distributions["coverage"] = covered.examples
        # Canary gates are judged on live traffic, by ctx.canary().
        report.verdict = self.gates.check(report.metrics, forced=self.force, canary=False)
        if self.dry_run and self.gates.on_canary:
            report.notes.append(
                "canary_* gates are judged on live traffic during the canary, not by a dry run"
            )
        self.report = report
        if not report.verdict.passed and not self.force:
            self._gate_failed(report)
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
        live = self._live
        if live is None:
            raise StateError(
                f"ctx.canary() compares the shadow with the live index, and {self.alias!r} has "
                "none yet (its first revision)"
            )
        wanted = self.settings.canary.with_arguments(fraction, min_queries)
        if self.dry_run:
            report.notes.append(
                f"the upgrade will hold the swap for a canary: {wanted.min_queries:,} live queries "
                f"mirrored at {wanted.fraction:.0%} (a dry run opens none)"
            )
            return
        if self._canary is None:
            assert self._shadow is not None
            raise live_traffic.open_on(
                self.env, report, self._shadow.record, live, wanted, self.k, self._started
            )
        live_traffic.hold(
            self.env, self._canary, report, self.gates, self.settings.eval, forced=self.force
        )

    def swap(self) -> None:
        """Point the alias at the shadow index, atomically, and record it (a dry run records
        its verdict only)."""
        if self.swapped:  # the alias already serves the shadow: say so, change nothing
            log.warning("ctx.swap() called again in %s: already swapped", self.revision.revision)
            return
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
        if self._canary is not None:
            # Built by an earlier run: readers must find a working file once the pointer moves.
            # A shadow built by this run was hashed from the very bytes it wrote.
            files.verify(self.env.file_of(shadow.record), shadow.record.sha256)
        expected = self._live.id if self._live else None
        with self.env.engine.begin() as conn:
            live = catalog.live_index(conn, self.alias)
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
        if self.rolled_back:
            log.warning(
                "ctx.rollback() called again in %s: already rolled back", self.revision.revision
            )
            return
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
                previous = catalog.previous_index(conn, live, rev.down_revision)
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

    # ---- history -----------------------------------------------------------------------------

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

    def _gate_failed(self, report: Report) -> None:
        """Record the failed verdict, then raise it."""
        assert report.verdict is not None
        shadow_id = self._shadow.record.id if self._shadow else None
        with self.env.engine.begin() as conn:
            self._record(
                conn,
                "dry-run" if self.dry_run else "upgrade",
                "gate-failed",
                from_index=self._live.id if self._live else None,
                to_index=shadow_id,
                verdict="fail",
                metrics=report.to_dict(),
            )
        examples = report.distributions.get("coverage") or {}
        failures = "; ".join(
            check.describe() + _examples(examples, check.metric)
            for check in report.verdict.failures()
        )
        where = "" if self.dry_run else f"; shadow index #{shadow_id} kept for inspection"
        raise GateFailed(
            f"gate failed for {self.alias} @ {self.revision.revision}: {failures}{where}"
            " (alias unchanged; --force overrides)",
            report,
        )


def _examples(examples: Mapping[str, list[str]], metric: str) -> str:
    """A coverage gate's failure names the first documents concerned."""
    keys = examples.get(metric.removeprefix("coverage_"))
    return (
        f" ({', '.join(keys)}{', ...' if len(keys) >= carryover.EXAMPLES else ''})" if keys else ""
    )


def _label(verdict: Verdict) -> str | None:
    """The verdict as history records it; None when the revision has no gates."""
    return verdict.label if verdict.checks else None
