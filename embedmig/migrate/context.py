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
from embedmig.gates import Gates, Verdict
from embedmig.metrics.report import Report
from embedmig.migrate import adapter as adapters
from embedmig.migrate import canary, carryover, forecast
from embedmig.migrate import evaluate as ev
from embedmig.migrate.backfill import CorpusStats, Shadow, backfill
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
        self._live = live
        self._adapter = adapter
        self._fitted: adapters.Fitted | None = None  # ctx.adapt()'s map
        self._swapped_adapter: catalog.AdapterRecord | None = None  # its row, once it serves
        self._started = clock.now()
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
    def serving_adapter(self) -> catalog.AdapterRecord | None:
        """The map the alias serves ``serving`` through once this context is done."""
        if not self.swapped or self.dry_run:
            return self._adapter
        return self._swapped_adapter

    @property
    def new_fingerprint(self) -> str | None:
        """The new model's fingerprint, once ``backfill`` loaded it."""
        return self._new.fingerprint if self._new is not None else None

    @cached_property
    def _queries(self) -> ev.QuerySource:
        return ev.QuerySource.of(self.env, self.alias, first_index=self.old is None)

    # ---- upgrade steps -----------------------------------------------------------------------

    def backfill(self, bridge: str | None = None) -> None:
        """Embed the corpus with the new model into a shadow index (a dry run reads a sample of
        it instead); an open canary of this revision is continued, without re-embedding.

        ``bridge`` (a map kind, ``"procrustes"``) first fits a map from the new model into the
        live index, so searchers opened with the new model get adapted results from the live
        index while the shadow builds; the swap drops it."""
        if self._new is not None:
            raise StateError("ctx.backfill() or ctx.adapt() was called twice in one upgrade()")
        spec = MapSpec(bridge) if bridge is not None else None
        if self.dry_run:
            forecast.refuse_gates_not_forecast(self.gates, self.revision.revision)
        self._new = new = self.env.load_embedder(self.new, cache=True)
        if spec is not None and not self.dry_run:
            self._bridge(new, spec)
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
        attached = canary.attach(
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
        if self._new is not None:
            raise StateError("ctx.backfill() or ctx.adapt() was called twice in one upgrade()")
        spec = MapSpec(kind, rank, hidden, epochs)
        live = self._require_live("ctx.adapt()")
        self._new = new = self.env.load_embedder(self.new, cache=True)
        self._fitted = adapters.fit_on_live(
            self.env,
            self.revision,
            new,
            live,
            self.settings,
            spec,
            old=self._old_side,
        )

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
            old=self._old_side,
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
        if self._live is None or self.old is None:
            raise StateError(
                f"{verb} maps the new model into the live index of {self.alias!r}, and it has "
                "none yet (its first revision): use ctx.backfill()"
            )
        return self._live

    def _old_side(self) -> LoadedEmbedder | None:
        """What embedded for the live index as the alias served it (through its adapter, if an
        adapter revision was current): the old side of every comparison."""
        if self._live is None or self.old is None:
            return None
        return self.env.serving_embedder(self._live, self._adapter, cache=True)

    def evaluate(self) -> Report:
        """Compare old and new on the query sample (a dry run: forecast the comparison), check the
        gates, keep the report.

        Raises GateFailed (after recording the verdict) when a gate fails and force is off.
        """
        new = self._new
        if new is None:
            raise StateError("ctx.evaluate() needs ctx.backfill() first")
        if self._fitted is not None:
            old = self._old_side()
            assert old is not None and self._live is not None
            report = adapters.evaluate(
                self.env, self.revision, self._fitted, old, self._live, self.settings
            )
        elif self._canary is not None and self._canary.report is not None:
            # The shadow was evaluated when its canary opened; writers kept it current since.
            report = Report.from_dict(self._canary.report)
        else:
            if self._dry is not None:
                covered = self._dry.coverage
                report = self._dry.forecast(
                    self.env, self.revision, new, self._live, self._old_side, self.settings.eval
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
                    self._old_side(),
                    self._queries,
                    self.settings.eval,
                )
            report.metrics.update(covered.counts)
            if covered.examples:
                report.distributions["coverage"] = covered.examples
        # Canary gates are judged on live traffic, by ctx.canary().
        report.verdict = self.gates.check(
            report.metrics, forced=self.force, canary=False, adapter=self._fitted is not None
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
        live = self._live
        if live is None:
            raise StateError(
                f"ctx.canary() compares the shadow with the live index, and {self.alias!r} has "
                "none yet (its first revision)"
            )
        if self._fitted is not None:
            raise StateError(
                "ctx.canary() mirrors queries to a shadow index, and an adapter revision builds "
                "none: its map is measured by ctx.evaluate()"
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
            raise canary.open_on(
                self.env, report, self._shadow.record, live, wanted, self.k, self._started
            )
        canary.hold(
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
            with self.env.begin() as conn:
                self._record(
                    conn, "dry-run", "ok", verdict=_label(verdict), metrics=self._metrics()
                )
            self.swapped = True
            return
        if self._fitted is not None:
            self._swap_to_adapter(verdict)
            return
        shadow = self._shadow
        assert shadow is not None
        if self._canary is not None:
            # Built by an earlier run: readers must find a working file once the pointer moves.
            # A shadow built by this run was hashed from the very bytes it wrote.
            files.verify(self.env.file_of(shadow.record), shadow.record.sha256)
        if self._new is not None and self._new.remote:
            # Readers will embed with it from now on: it must still be the model that built it.
            self.env.recheck(self._new, shadow.record, "since its index was built")
        expected = self._live.id if self._live else None
        with self.env.begin() as conn:
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

    def _swap_to_adapter(self, verdict: Verdict) -> None:
        """The alias keeps its live index and serves it through the fitted map from now on."""
        fitted = self._fitted
        assert fitted is not None and self._live is not None
        path = adapters.write(self.env, self.revision, fitted)
        with self.env.begin() as conn:
            live = catalog.live_index(conn, self.alias)
            if live is None or live.id != self._live.id:
                raise StateError(
                    f"the live index of {self.alias} changed during this migration; re-run the "
                    "upgrade"
                )
            catalog.retire_adapters(conn, self.alias)
            record = adapters.register(
                conn, self.env, self.revision, fitted, path, catalog.State.LIVE
            )
            catalog.set_version(conn, self.alias, self.revision.revision)
            self._record(
                conn,
                "adapter",
                "forced" if not verdict.passed else "ok",
                from_index=live.id,
                to_index=live.id,
                verdict=_label(verdict),
                forced=not verdict.passed,
                metrics=self._metrics(),
                message=f"adapter #{record.id}: {fitted.spec.describe()} map",
            )
        self.swapped = True
        self._swapped_adapter = record
        log.info("%s serves index #%d through adapter #%d", self.alias, live.id, record.id)

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
                    files.verify(self.env.file_of(previous), previous.sha256)
                catalog.point_alias(
                    conn, self.alias, rev.down_revision, previous.id if previous else None
                )
            if previous is not None and rev.down_revision is not None:
                restored = self._restore_adapter(conn, rev.down_revision, previous.id)
                if restored is not None:
                    notes.append(f"adapter #{restored.id} serves again")
            opened = traffic.open_canary(conn, self.alias)
            if opened is not None:  # it compares against the index that stops being live
                canary.end(conn, opened, traffic.ABANDONED, started_at=self._started)
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

    def _metrics(self) -> dict[str, Any] | None:
        return self.report.to_dict() if self.report else None

    def _record(self, conn: Any, action: str, status: str, **values: Any) -> None:
        events.record(
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
        with self.env.begin() as conn:
            self._record(
                conn,
                "dry-run" if self.dry_run else "upgrade",
                "gate-failed",
                from_index=self._live.id if self._live else None,
                to_index=shadow_id,
                verdict="fail",
                metrics=report.to_dict(),
            )
        failures = "; ".join(
            check.describe() + _examples(report.distributions, check.metric)
            for check in report.verdict.failures()
        )
        where = "" if self.dry_run else f"; shadow index #{shadow_id} kept for inspection"
        if self._fitted is not None:
            where = (
                f"; the {self._fitted.spec.kind} map is not good enough to stand in for a full "
                "re-embed: a revision whose upgrade() calls ctx.backfill() is the way"
            )
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


def _label(verdict: Verdict) -> str | None:
    """The verdict as history records it; None when the revision has no gates."""
    return verdict.label if verdict.checks else None
