"""Specs of the migration report: JSON round trip, re-rendering from history, check, HTML."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from embedmig import Config, command
from embedmig.cli import main
from embedmig.metrics.report import Report
from embedmig.render.html import render_html
from embedmig.render.text import render_text
from tests.support import edit, with_judged_queries

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def migrated(config: Config, project: Path) -> Report:
    """An upgrade with queries and judgements, so every section of the report is filled."""
    config = with_judged_queries(project, 60, words=12)
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.revision(config, "second", alias="docs", new="models/near", rev_id="r2")
    path = next((project / "migrations" / "versions").glob("r2_*.py"))
    edit(path, "gates = Gates(", "gates = Gates(thresholds=[0.62], ")
    return command.upgrade(config, "head")[-1]


def test_report_has_every_section(migrated: Report) -> None:
    m = migrated.metrics
    for name in (
        "overlap_at_1",
        "overlap_at_10",
        "overlap_at_100",
        "jaccard_at_10",
        "rbo",
        "score_ks",
        "score_wasserstein",
        "pair_score_ks",
        "new_threshold_for_0_62",
        "ndcg_at_10_delta_ci_low",
        "recall_ratio",
    ):
        assert m[name] is not None, name
    low, mid, high = (m[f"ndcg_at_10_delta{end}"] for end in ("_ci_low", "", "_ci_high"))
    assert low is not None and mid is not None and high is not None and low <= mid <= high
    assert [row["old"] for row in migrated.distributions["threshold_map"]] == [
        0.3,
        0.4,
        0.5,
        0.6,
        0.62,
        0.7,
        0.8,
        0.9,
    ]
    assert migrated.worst["by_overlap"] and "by_rank_drop" in migrated.worst
    assert set(migrated.timings) >= {"encode_s", "search_s", "metrics_s", "total_s"}


def test_report_round_trips_through_json(migrated: Report) -> None:
    again = Report.from_dict(json.loads(migrated.to_json()))
    assert again.to_dict() == migrated.to_dict()


@pytest.mark.parametrize(
    ("flags", "kind"),
    [
        ({"dry_run": False}, "upgrade"),
        ({"dry_run": True, "forecast": True}, "dry-run"),
        ({"dry_run": False, "live": True}, "canary"),
        ({"dry_run": False, "watch": True}, "watch"),
    ],
)
def test_a_report_recorded_before_schema_7_reads_back_with_its_kind(
    migrated: Report, flags: dict[str, bool], kind: str
) -> None:
    """Up to schema 6 a report said what it was with booleans; history keeps such reports."""
    old = {k: v for k, v in migrated.to_dict().items() if k != "kind"}
    assert Report.from_dict({**old, **flags, "schema_version": 6}).kind == kind


def test_text_report_fits_100_columns_without_styling(migrated: Report) -> None:
    text = render_text(migrated, styled=False)
    assert not ANSI.search(text)
    assert max(len(line) for line in text.splitlines()) <= 100
    assert text.splitlines()[0].startswith("PASS docs @ r2")


def test_report_command_re_renders_a_recorded_upgrade(migrated: Report, config: Config) -> None:
    assert command.report(config, "r2").to_dict() == migrated.to_dict()
    (event,) = [e for e in command.history(config) if e.revision == "r2"]
    assert command.report(config, "", event=event.id).to_dict() == migrated.to_dict()


def test_report_cli_writes_html_json_and_text(
    migrated: Report, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("r.html", "r.json", "r.txt"):
        assert main(["report", "r2", "-o", str(project / name)]) == 0
    assert json.loads((project / "r.json").read_text())["revision"] == "r2"
    assert (project / "r.txt").read_text().startswith("PASS docs @ r2")
    assert (project / "r.html").read_text().startswith("<!doctype html>")
    assert main(["report", "nope"]) == 1


def test_html_report_is_self_contained(migrated: Report) -> None:
    page = render_html(migrated)
    images = re.findall(r"<img [^>]*src='([^']+)'", page)
    assert len(images) == 5 and all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r"(src|href)=['\"]?(https?:|//)", page)


def test_check_prints_json_and_exits_3_when_a_gate_fails(
    config: Config, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.revision(config, "second", alias="docs", new="models/far", rev_id="r2")
    command.upgrade(config, "r1")
    capsys.readouterr()
    assert main(["check", "--format", "json", "--sample", "150"]) == 3
    out, err = capsys.readouterr()
    (data,) = json.loads(out)
    assert data["kind"] == "dry-run" and data["verdict"]["result"] == "fail"
    assert "gate failed" in err
    assert command.current(config)[0].revision == "r1"


def test_check_passes_when_nothing_is_pending(
    config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.upgrade(config)
    assert main(["check"]) == 0
    assert "nothing to check" in capsys.readouterr().out


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_html_report_renders_in_headless_chromium_with_every_image(
    migrated: Report, tmp_path: Path
) -> None:
    # After load, the page's title says whether every image decoded to a real picture.
    probe = (
        "<script>addEventListener('load', () => { document.title = [...document.images]"
        ".every(i => i.complete && i.naturalWidth > 0) ? 'IMAGES-OK' : 'IMAGES-BROKEN'; });</script>"
    )
    page = tmp_path / "report.html"
    page.write_text(render_html(migrated).replace("</body>", probe + "</body>"))
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [str(CHROMIUM), *flags, "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "<title>IMAGES-OK</title>" in dom
    subprocess.run(
        [
            str(CHROMIUM),
            *flags,
            "--window-size=1200,2400",
            f"--screenshot={tmp_path / 'shot.png'}",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert (tmp_path / "shot.png").stat().st_size > 10_000
