"""What a migration reads from the configuration, typed, built once at the start of a command.

Building them is the validation: ``upgrade`` builds them before it locks or embeds anything, so a
bad value fails at once, and nothing further down reads an option again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from embedmig.config import Config, share
from embedmig.errors import ConfigError
from embedmig.metrics import report as rpt
from embedmig.metrics.segments import SegmentSettings
from embedmig.migrate import executors
from embedmig.migrate.executors import RaySettings


@dataclass(frozen=True)
class EvalSettings:
    """``eval.*``: the query sample, the depth compared, the seeds and resamples."""

    sample: int
    k: int
    seed: int
    rbo_p: float
    resamples: int
    pair_docs: int
    forecast_resamples: int
    segment: SegmentSettings | None = None  # eval.segment_by, when set

    @property
    def clusters(self) -> int | None:
        """K of ``eval.segment_by = cluster:K``; None for a field (or no segments)."""
        by = self.segment.by if self.segment else ""
        return int(by.removeprefix(CLUSTER)) if by.startswith(CLUSTER) else None

    @property
    def segment_field(self) -> str | None:
        if self.segment is None or self.clusters is not None:
            return None
        return self.segment.by

    @classmethod
    def of(cls, config: Config) -> EvalSettings:
        rbo_p = config.get_float("eval.rbo_p")
        if not 0 < rbo_p < 1:
            raise ConfigError(f"option 'eval.rbo_p' must be between 0 and 1, got {rbo_p:g}")
        return cls(
            sample=config.get_int("eval.sample"),
            k=config.get_int("eval.k"),
            seed=config.get_int("eval.seed"),
            rbo_p=rbo_p,
            resamples=config.get_int("eval.resamples"),
            pair_docs=config.get_int("eval.pair_docs"),
            forecast_resamples=config.get_int("eval.forecast_resamples"),
            segment=_segment(config),
        )

    def metrics(self, thresholds: Sequence[float] = (), k: int | None = None) -> rpt.Settings:
        """What the report's figures need, with a revision's ``thresholds`` (and another depth
        ``k``, for a canary whose indexes hold fewer documents)."""
        return rpt.Settings(
            k=self.k if k is None else k,
            rbo_p=self.rbo_p,
            thresholds=tuple(thresholds),
            seed=self.seed,
            resamples=self.resamples,
        )


CLUSTER = "cluster:"
MAX_CLUSTERS = 1_000


def _segment(config: Config) -> SegmentSettings | None:
    """``eval.segment_by``: a field of the queries (or of the logged queries' metadata), or
    ``cluster:K`` (k-means on the old model's query vectors), K from 2 to 1,000."""
    by = config.get("eval.segment_by")
    minimum = config.get_int("eval.segment_min")
    drop = config.get_range("eval.segment_drop", 0.0, 1.0)
    if by is None:
        return None
    if by.startswith(CLUSTER):
        k = by.removeprefix(CLUSTER)
        if not k.isdigit() or not 2 <= int(k) <= MAX_CLUSTERS:
            raise ConfigError(
                f"option 'eval.segment_by' = {by!r}: write cluster:K with K an integer from 2 "
                f"to {MAX_CLUSTERS:,}"
            )
        by = CLUSTER + str(int(k))
    return SegmentSettings(by, minimum, drop)


@dataclass(frozen=True)
class CanarySettings:
    """``canary.*``: the defaults of ``ctx.canary()``."""

    fraction: float
    min_queries: int

    @classmethod
    def of(cls, config: Config) -> CanarySettings:
        return cls(config.get_share("canary.fraction"), config.get_int("canary.min_queries"))

    def with_arguments(self, fraction: object, min_queries: object) -> CanarySettings:
        """These settings with what a revision passed to ``ctx.canary()``, checked."""
        fraction = (
            self.fraction if fraction is None else share(fraction, "ctx.canary(fraction=...)")
        )
        needed = self.min_queries if min_queries is None else min_queries
        if isinstance(needed, bool) or not isinstance(needed, int) or needed < 1:
            raise ConfigError(
                f"ctx.canary(min_queries=...) must be a positive integer, got {needed!r}"
            )
        return CanarySettings(fraction, needed)


@dataclass(frozen=True)
class MigrationSettings:
    """Everything an upgrade reads besides what the environment does (``EnvSettings``)."""

    checkpoint_every: int
    eval: EvalSettings
    canary: CanarySettings
    executor: str  # inprocess or ray
    ray: RaySettings | None  # with executor = ray
    adapter_pairs: int  # documents a map is fitted on (ctx.adapt, a bridge)

    @classmethod
    def of(cls, config: Config) -> MigrationSettings:
        executor = executors.check(config)
        return cls(
            checkpoint_every=config.get_int("checkpoint_every"),
            eval=EvalSettings.of(config),
            canary=CanarySettings.of(config),
            executor=executor,
            ray=RaySettings.of(config) if executor == "ray" else None,
            adapter_pairs=config.get_int("adapter.pairs"),
        )
