"""The four kinds of build behind an upgrade's ``ctx.backfill()`` or ``ctx.adapt()``, each with its
own evaluate, canary and swap:

- ``ShadowBuild``: a shadow index this run built (or resumed);
- ``CanaryBuild``: a shadow an earlier run built and evaluated, held by the canary it opened;
- ``DryRunBuild``: a dry run's sample, from which the upgrade's report is forecast;
- ``AdapterBuild``: an adapter revision's map from the new model into the live index's space.

``MigrationContext`` keeps the verbs a revision calls and dispatches to its build once; what every
kind shares (the gates, a dry run recording only its verdict, history rows) stays there, and
builds write their history rows through it (``ctx._record``: the context's, not a script's).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import sqlalchemy as sa

from embedmig.embedders import LoadedEmbedder
from embedmig.errors import StateError
from embedmig.gates import Verdict
from embedmig.metrics.report import Report
from embedmig.migrate import adapter as adapters
from embedmig.migrate import canary, carryover
from embedmig.migrate import evaluate as ev
from embedmig.migrate.backfill import Shadow
from embedmig.migrate.dryrun import DryRun
from embedmig.migrate.settings import CanarySettings
from embedmig.store import catalog, traffic

if TYPE_CHECKING:
    from embedmig.migrate.context import MigrationContext

log = logging.getLogger("embedmig")


class Build:
    """What ``ctx.backfill()`` or ``ctx.adapt()`` made, and how it is judged and swapped in."""

    new: LoadedEmbedder

    def evaluate(self, ctx: MigrationContext) -> Report:
        raise NotImplementedError

    def canary(self, ctx: MigrationContext, report: Report, wanted: CanarySettings) -> None:
        """Hold the swap for a canary on live traffic."""
        raise NotImplementedError

    def swap(self, ctx: MigrationContext, verdict: Verdict) -> None:
        """Make the alias serve the build, in one transaction with its history row."""
        raise NotImplementedError

    @property
    def serves(self) -> catalog.IndexRecord | None:
        """The index the alias serves once this build swapped in (None: the live one stays)."""
        return None

    @property
    def serves_through(self) -> catalog.AdapterRecord | None:
        """The map the alias serves its index through once this build swapped in."""
        return None

    @property
    def holds_canary(self) -> bool:
        """Whether a canary on live traffic already holds this build's swap."""
        return False

    def kept(self) -> str:
        """What a failed gate leaves behind, for its message (a dry run: nothing)."""
        return ""


def label(verdict: Verdict) -> str | None:
    """The verdict as history records it; None when the revision has no gates."""
    return verdict.label if verdict.checks else None


def _with_coverage(report: Report, covered: carryover.Result) -> Report:
    report.metrics.update(covered.counts)
    if covered.examples:
        report.distributions["coverage"] = covered.examples
    return report


@dataclass
class ShadowBuild(Build):
    """A shadow index built (or resumed) by this run: evaluated on the query sample, then
    swapped in; a canary opens on it."""

    new: LoadedEmbedder
    shadow: Shadow

    def evaluate(self, ctx: MigrationContext) -> Report:
        report = ev.evaluate_shadow(
            ctx.env,
            ctx.revision,
            self.shadow,
            self.new,
            ctx.live,
            ctx.old_side(),
            ctx.queries,
            ctx.settings.eval,
        )
        return _with_coverage(report, self.shadow.coverage)

    def canary(self, ctx: MigrationContext, report: Report, wanted: CanarySettings) -> None:
        assert ctx.live is not None
        raise canary.open_on(
            ctx.env, report, self.shadow.record, ctx.live, wanted, ctx.k, ctx.started
        )

    def swap(self, ctx: MigrationContext, verdict: Verdict) -> None:
        record = self.shadow.record
        if self.new.remote:
            # Readers will embed with it from now on: it must still be the model that built it.
            ctx.env.recheck(self.new, record, "since its index was built")
        expected = ctx.live.id if ctx.live else None
        with ctx.env.begin() as conn:
            live = catalog.live_index(conn, ctx.alias)
            if (live.id if live else None) != expected:
                raise StateError(
                    f"the live index of {ctx.alias} changed during this migration "
                    f"(now #{live.id if live else None}); re-run the upgrade"
                )
            ctx.env.point_alias(conn, ctx.alias, ctx.revision.revision, record)
            self._closing(conn, verdict)
            ctx._record(
                conn,
                "upgrade",
                "forced" if not verdict.passed else "ok",
                from_index=expected,
                to_index=record.id,
                verdict=label(verdict),
                forced=not verdict.passed,
                metrics=ctx._report_dict(),
            )
        log.info("swapped %s to index #%d (%s)", ctx.alias, record.id, ctx.revision.revision)

    def _closing(self, conn: sa.Connection, verdict: Verdict) -> None:
        """What else the swap's transaction commits (a canary's close)."""

    @property
    def serves(self) -> catalog.IndexRecord:
        return self.shadow.record

    def kept(self) -> str:
        return f"; shadow index #{self.shadow.record.id} kept for inspection"


@dataclass
class CanaryBuild(ShadowBuild):
    """A shadow an earlier run built and evaluated, held by the canary it opened: judged on the
    mirrored live traffic, then swapped in without re-embedding."""

    opened: traffic.Canary = field(kw_only=True)

    def evaluate(self, ctx: MigrationContext) -> Report:
        if self.opened.report is None:
            return super().evaluate(ctx)
        # Evaluated when its canary opened; writers kept the shadow current since.
        return Report.from_dict(self.opened.report)

    def canary(self, ctx: MigrationContext, report: Report, wanted: CanarySettings) -> None:
        canary.hold(ctx.env, self.opened, report, ctx.gates, ctx.settings.eval, forced=ctx.force)

    def swap(self, ctx: MigrationContext, verdict: Verdict) -> None:
        # Built by an earlier run: readers must find a working file once the pointer moves.
        # A shadow built by this run was hashed from the very bytes it wrote.
        ctx.env.verify_index(self.shadow.record)
        super().swap(ctx, verdict)

    def _closing(self, conn: sa.Connection, verdict: Verdict) -> None:
        status = traffic.FORCED if not verdict.passed else traffic.PASSED
        traffic.close(conn, self.opened.id, status)

    @property
    def holds_canary(self) -> bool:
        return True


@dataclass
class DryRunBuild(Build):
    """A dry run's sample: the upgrade's report forecast from it; nothing is swapped."""

    new: LoadedEmbedder
    dry: DryRun

    def evaluate(self, ctx: MigrationContext) -> Report:
        report = self.dry.forecast(
            ctx.env, ctx.revision, self.new, ctx.live, ctx.old_side, ctx.settings.eval
        )
        return _with_coverage(report, self.dry.coverage)

    def canary(self, ctx: MigrationContext, report: Report, wanted: CanarySettings) -> None:
        report.notes.append(
            f"the upgrade will hold the swap for a canary: {wanted.min_queries:,} live queries "
            f"mirrored at {wanted.fraction:.0%} (a dry run opens none)"
        )


@dataclass
class AdapterBuild(Build):
    """An adapter revision's map: measured against the full re-embed it stands in for, then the
    alias serves its live index to the new model through it."""

    new: LoadedEmbedder
    fitted: adapters.Fitted
    registered: catalog.AdapterRecord | None = None  # its row, once it serves

    def evaluate(self, ctx: MigrationContext) -> Report:
        old = ctx.old_side()
        assert old is not None and ctx.live is not None
        return adapters.evaluate(ctx.env, ctx.revision, self.fitted, old, ctx.live, ctx.settings)

    def canary(self, ctx: MigrationContext, report: Report, wanted: CanarySettings) -> None:
        raise StateError(
            "ctx.canary() mirrors queries to a shadow index, and an adapter revision builds "
            "none: its map is measured by ctx.evaluate()"
        )

    def swap(self, ctx: MigrationContext, verdict: Verdict) -> None:
        """The alias keeps its live index and serves it through the fitted map from now on."""
        assert ctx.live is not None
        path = adapters.write(ctx.env, ctx.revision, self.fitted)
        with ctx.env.begin() as conn:
            live = catalog.live_index(conn, ctx.alias)
            if live is None or live.id != ctx.live.id:
                raise StateError(
                    f"the live index of {ctx.alias} changed during this migration; re-run the "
                    "upgrade"
                )
            catalog.retire_adapters(conn, ctx.alias)
            record = adapters.register(
                conn, ctx.env, ctx.revision, self.fitted, path, catalog.State.LIVE
            )
            catalog.set_version(conn, ctx.alias, ctx.revision.revision)
            ctx._record(
                conn,
                "adapter",
                "forced" if not verdict.passed else "ok",
                from_index=live.id,
                to_index=live.id,
                verdict=label(verdict),
                forced=not verdict.passed,
                metrics=ctx._report_dict(),
                message=f"adapter #{record.id}: {self.fitted.spec.describe()} map",
            )
        self.registered = record
        log.info("%s serves index #%d through adapter #%d", ctx.alias, live.id, record.id)

    @property
    def serves_through(self) -> catalog.AdapterRecord | None:
        return self.registered

    def kept(self) -> str:
        return (
            f"; the {self.fitted.spec.kind} map is not good enough to stand in for a full "
            "re-embed: a revision whose upgrade() calls ctx.backfill() is the way"
        )
