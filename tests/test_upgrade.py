"""Specs of upgrade, downgrade and the alias swap."""

from __future__ import annotations

from embedmig import Config, command


def first_and_second(config: Config, second_model: str = "models/near") -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.revision(config, "second", alias="docs", new=second_model, rev_id="r2")


def test_upgrade_head_builds_the_first_index_and_points_the_alias(config: Config) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    reports = command.upgrade(config, "head")
    assert len(reports) == 1
    (state,) = command.current(config)
    assert state.alias == "docs" and state.revision == "r1" and state.is_head
    assert state.live is not None and state.live.ntotal == 300


def test_upgrade_to_a_near_model_swaps_and_reports_high_overlap(config: Config) -> None:
    first_and_second(config)
    reports = command.upgrade(config, "head")
    assert [r.revision for r in reports] == ["r1", "r2"]
    metrics = reports[1].metrics
    assert metrics["overlap_at_10"] is not None and metrics["overlap_at_10"] > 0.6
    assert command.current(config)[0].revision == "r2"
