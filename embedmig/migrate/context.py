"""MigrationContext: what a revision's ``upgrade(ctx)`` / ``downgrade(ctx)`` operate on.

The verbs read as "What ``upgrade`` does" in docs/architecture.md: ``backfill`` (or, in a dry
run, read a sample), ``evaluate`` and gate, ``canary``, ``swap``; ``rollback``. What each verb does lives in
its own module: ``backfill``, ``dryrun``, ``evaluate``, ``canary``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import cached_property
from typing import Any

from embedmig.config import DEFAULT_SAMPLE
from embedmig.embedders import Embedder, LoadedEmbedder
from embedmig.environment import Environment
from embedmig.errors import GateFailed, ScriptError, StateError
from embedmig.gates import Gates
from embedmig.metrics.report import Report
from embedmig.migrate import adapter as adapters
from embedmig.migrate import canary, carryover, forecast
from embedmig.migrate import evaluate as ev
from embedmig.migrate.backfill import CorpusStats, Shadow, backfill
from embedmig.migrate.builds import (
    AdapterBuild,
    Build,
    CanaryBuild,
    DryRunBuild,
    ShadowBuild,
    label,
)
from embedmig.migrate.dryrun import DryRun
from embedmig.migrate.fit import MapSpec
from embedmig.migrate.settings import MigrationSettings
from embedmig.script import Revision
from embedmig.store import catalog, clock, events, files, traffic

log = logging.getLogger("embedmig")


class MigrationContext:
    """One revision being applied or undone, with explicit access to everything it needs.

    ``live`` is the index the alias served when the run started (read once, by the runner), and
    ``adapter`` the map it served that index through, if an adapter revision was current;
    ``settings`` what an upgrade read from the configuration (a downgrade reads none).
    """

    def __init__(
        self,
        env: Environment,
        revision: Revision,
        settings: MigrationSettings | None = None,
        *,
        live: catalog.IndexRecord | None = None,
        adapter: catalog.AdapterRecord | None = None,
        dry_run: bool = False,
        sample: int | float = DEFAULT_SAMPLE,
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
        self.live = live
        self._adapter = adapter
        self.started = clock.now()
        self._build: Build | None = None  # what ctx.backfill() or ctx.adapt() made

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
        if self.swapped and not self.dry_run and self._build is not None:
            return self._build.serves or self.live
        return self.live

    @property
    def serving_adapter(self) -> catalog.AdapterRecord | None:
        """The map the alias serves ``serving`` through once this context is done."""
        if not self.swapped or self.dry_run or self._build is None:
            return self._adapter
        return self._build.serves_through

    @property
    def new_fingerprint(self) -> str | None:
        """The new model's fingerprint, once ``backfill`` loaded it."""
        return self._build.new.fingerprint if self._build is not None else None

    @cached_property
    def queries(self) -> ev.QuerySource:
        return ev.QuerySource.of(self.env, self.alias, first_index=self.old is None)

    # ---- upgrade steps -----------------------------------------------------------------------

    def backfill(self, bridge: str | None = None) -> None:
        """Embed the corpus with the new model into a shadow index (a dry run reads a sample of
        it instead); an open canary of this revision is continued, without re-embedding.

        ``bridge`` (a map kind, ``"procrustes"``) first fits a map from the new model into the
        live index, so searchers opened with the new model get adapted results from the live
        index while the shadow builds; the swap drops it."""
        if self._build is not None:
            raise StateError("ctx.backfill() or ctx.adapt() was called twice in one upgrade()")
        spec = MapSpec(bridge) if bridge is not None else None
        if self.dry_run:
            forecast.refuse_gates_not_forecast(self.gates, self.revision.revision)
        new = self.env.load_embedder(self.new, cache=True)
        if spec is not None and not self.dry_run:
            self._bridge(new, spec)
        if self.live is not None and self.live.dim != new.dim:
            # Legal (the shadow is a new index), but worth saying: vectors are not comparable.
            log.info("dimension changes from %d to %d", self.live.dim, new.dim)
        if self.dry_run:
            dry = DryRun.read(
                self.env,
                self.revision,
                new,
                self.live,
                self.queries,
                self.settings.eval,
                self.sample,
            )
            self._build = DryRunBuild(new, dry)
            return
        attached = canary.attach(
            self.env,
            self.alias,
            self.revision.revision,
            new.fingerprint,
            self.live.id if self.live else None,
            self.started,
        )
        if attached is not None:
            opened, record = attached
            shadow = Shadow(record, None, [], CorpusStats(), carryover.Result({}))
            self._build = CanaryBuild(new, shadow, opened=opened)
        else:
            self._build = ShadowBuild(new, backfill(self.env, self.revision, new, self.settings))

    def adapt(
        self,
        kind: str = "procrustes",
        *,
        rank: int | None = None,
        hidden: int = 512,
        epochs: int = 40,
    ) -> None:
        """In place of ``backfill()``: fit a map from the new model into the live index's space
        on ``adapter.pairs`` sampled documents (``kind``: ``"procrustes"``, ``"affine"`` with an
        optional ``rank``, or ``"mlp"``). After ``evaluate()`` (which measures the map against a
        full re-embed) and ``swap()``, the alias serves its live index to the new model through
        the map; writers embed with the new model and store through it. A dry run stores nothing.
        """
        if self._build is not None:
            raise StateError("ctx.backfill() or ctx.adapt() was called twice in one upgrade()")
        spec = MapSpec(kind, rank, hidden, epochs)
        live = self._require_live("ctx.adapt()")
        new = self.env.load_embedder(self.new, cache=True)
        fitted = adapters.fit_on_live(
            self.env, self.revision, new, live, self.settings, spec, old=self.old_side
        )
        self._build = AdapterBuild(new, fitted)

    def _bridge(self, new: LoadedEmbedder, spec: MapSpec) -> None:
        live = self._require_live("ctx.backfill(bridge=...)")
        with self.env.engine.connect() as conn:
            up = [
                a
                for a in catalog.adapters(conn, self.alias, [catalog.State.BRIDGE])
                if (a.revision, a.index_id, a.fingerprint, a.kind)
                == (self.revision.revision, live.id, new.fingerprint, spec.kind)
            ]
        if up:
            # A rerun (after a failed gate or a kill) finds its bridge up: the backfill resumes.
            log.info("bridge adapter #%d is up", up[0].id)
            return
        fitted = adapters.fit_on_live(
            self.env,
            self.revision,
            new,
            live,
            self.settings,
            spec,
            old=self.old_side,
        )
        path = adapters.write(self.env, self.revision, fitted)
        with self.env.begin() as conn:
            record = adapters.register(
                conn, self.env, self.revision, fitted, path, catalog.State.BRIDGE
            )
            self._record(
                conn,
                "bridge",
                "ok",
                from_index=live.id,
                to_index=live.id,
                message=f"adapter #{record.id}: {spec.describe()} map on {fitted.pairs:,} pairs",
            )

    def _require_live(self, verb: str) -> catalog.IndexRecord:
        if self.live is None or self.old is None:
            raise StateError(
                f"{verb} maps the new model into the live index of {self.alias!r}, and it has "
                "none yet (its first revision): use ctx.backfill()"
            )
        return self.live

    def old_side(self) -> LoadedEmbedder | None:
        """What embedded for the live index as the alias served it (through its adapter, if an
        adapter revision was current): the old side of every comparison."""
        if self.live is None or self.old is None:
            return None
        return self.env.serving_embedder(self.live, self._adapter, cache=True)

    def evaluate(self) -> Report:
        """Compare old and new on the query sample (a dry run: forecast the comparison), check the
        gates, keep the report.

        Raises GateFailed (after recording the verdict) when a gate fails and force is off.
        """
        build = self._build
        if build is None:
            raise StateError("ctx.evaluate() needs ctx.backfill() first")
        report = build.evaluate(self)
        # Canary gates are judged on live traffic, by ctx.canary().
        report.verdict = self.gates.check(
            report.metrics,
            forced=self.force,
            canary=False,
            adapter=isinstance(build, AdapterBuild),
        )
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
        if self.live is None:
            raise StateError(
                f"ctx.canary() compares the shadow with the live index, and {self.alias!r} has "
                "none yet (its first revision)"
            )
        assert self._build is not None
        self._build.canary(self, report, self.settings.canary.with_arguments(fraction, min_queries))

    def swap(self) -> None:
        """Point the alias at the shadow index, atomically, and record it (a dry run records
        its verdict only)."""
        if self.swapped:  # the alias already serves the shadow: say so, change nothing
            log.warning("ctx.swap() called again in %s: already swapped", self.revision.revision)
            return
        if self.report is None:
            self.evaluate()
        assert self.report is not None and self.report.verdict is not None
        build = self._build
        assert build is not None
        if self.gates.on_canary and not build.holds_canary and not self.dry_run:
            raise ScriptError(
                f"the gates of {self.revision.revision} name canary_* metrics, but its "
                "upgrade() calls ctx.swap() without ctx.canary() first"
            )
        verdict = self.report.verdict
        if self.dry_run:
            with self.env.begin() as conn:
                self._record(
                    conn, "dry-run", "ok", verdict=label(verdict), metrics=self._report_dict()
                )
        else:
            build.swap(self, verdict)
        self.swapped = True

    # ---- downgrade ---------------------------------------------------------------------------

    def rollback(self) -> None:
        """Point the alias back at the index that was live before this revision; no re-embedding."""
        if self.rolled_back:
            log.warning(
                "ctx.rollback() called again in %s: already rolled back", self.revision.revision
            )
            return
        rev = self.revision
        with self.env.begin() as conn:
            live = catalog.live_index(conn, self.alias)
            current = catalog.live_adapter(conn, self.alias)
            notes = []
            if live is not None and current is not None and current.revision == rev.revision:
                # An adapter revision: the index stays live, its map stops serving.
                catalog.retire_adapters(conn, self.alias)
                catalog.set_version(conn, self.alias, rev.down_revision)
                notes.append(f"adapter #{current.id} retired")
                previous: catalog.IndexRecord | None = live
            else:
                if live is None or live.revision != rev.revision:
                    raise StateError(
                        f"alias {self.alias} is not live on an index or adapter of revision "
                        f"{rev.revision}; nothing to roll back"
                    )
                previous = None
                if rev.down_revision is not None:
                    previous = catalog.previous_index(conn, live, rev.down_revision)
                    # Readers must find a working index once the pointer moves: check it first.
                    self.env.verify_index(previous)
                self.env.point_alias(conn, self.alias, rev.down_revision, previous)
            if previous is not None and rev.down_revision is not None:
                restored = self._restore_adapter(conn, rev.down_revision, previous.id)
                if restored is not None:
                    notes.append(f"adapter #{restored.id} serves again")
            opened = traffic.open_canary(conn, self.alias)
            if opened is not None:  # it compares against the index that stops being live
                canary.end(conn, opened, traffic.ABANDONED, started_at=self.started)
            self._record(
                conn,
                "downgrade",
                "ok",
                from_index=live.id,
                to_index=previous.id if previous else None,
                message="; ".join(notes) or None,
            )
        self.rolled_back = True

    def _restore_adapter(
        self, conn: Any, revision: str, index_id: int
    ) -> catalog.AdapterRecord | None:
        """The map ``revision`` served ``index_id`` through, if it was an adapter revision: it
        serves again (checked first, as an index is)."""
        for found in catalog.adapters(conn, self.alias, [catalog.State.RETIRED]):
            if (found.revision, found.index_id) == (revision, index_id):
                files.verify(self.env.file_of(found), found.sha256)
                catalog.update_adapter(conn, found.id, state=catalog.State.LIVE)
                return found
        return None

    # ---- history -----------------------------------------------------------------------------

    def _report_dict(self) -> dict[str, Any] | None:
        """The report as history keeps it."""
        return self.report.to_dict() if self.report else None

    def _record(self, conn: Any, action: str, status: str, **values: Any) -> None:
        """A history row of this revision, in ``conn``'s transaction."""
        events.record(
            conn,
            alias=self.alias,
            revision=self.revision.revision,
            action=action,
            status=status,
            started_at=self.started,
            **values,
        )

    def _gate_failed(self, report: Report) -> None:
        """Record the failed verdict, then raise it."""
        assert report.verdict is not None
        build = self._build
        shadow = build.serves if build is not None else None
        with self.env.begin() as conn:
            self._record(
                conn,
                "dry-run" if self.dry_run else "upgrade",
                "gate-failed",
                from_index=self.live.id if self.live else None,
                to_index=shadow.id if shadow else None,
                verdict="fail",
                metrics=report.to_dict(),
            )
        failures = "; ".join(
            check.describe() + _examples(report.distributions, check.metric)
            for check in report.verdict.failures()
        )
        where = build.kept() if build is not None else ""
        raise GateFailed(
            f"gate failed for {self.alias} @ {self.revision.revision}: {failures}{where}"
            " (alias unchanged; --force overrides)",
            report,
        )


def _examples(distributions: Mapping[str, Any], metric: str) -> str:
    """A coverage gate's failure names the first documents concerned, a contract gate's the
    golden queries broken and what each lost."""
    if metric == "contract_failures":
        broken = (distributions.get("contracts") or {}).get("broken") or []
        named = [
            f"{c['id']} lost {', '.join(m['document'] for m in c['missing'])}"
            for c in broken[: carryover.EXAMPLES]
        ]
        more = ", ..." if len(broken) > len(named) else ""
        return f" ({', '.join(named)}{more})" if named else ""
    keys = (distributions.get("coverage") or {}).get(metric.removeprefix("coverage_"))
    return (
        f" ({', '.join(keys)}{', ...' if len(keys) >= carryover.EXAMPLES else ''})" if keys else ""
    )
