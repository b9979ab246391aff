"""The report as a summary for a 100-column terminal: verdict, gates, key numbers, worst queries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from embedmig.metrics.report import HEADLINE, WORST_KINDS, Kind, Report
from embedmig.render import embedding_lines

Style = Callable[..., str]


def render_text(report: Report, *, styled: bool = True) -> str:
    """``styled`` adds ANSI colours (click.echo drops them when the output is not a terminal)."""

    def style(text: str, **how: Any) -> str:
        return click.style(text, **how) if styled else text

    lines: list[str] = []
    for part in (
        _header,
        _gates,
        _coverage,
        _contracts,
        _watch,
        _headline,
        _qrels,
        _segments,
        _thresholds,
        _worst,
        _notes,
    ):
        lines += part(report, style)
    return "\n".join(lines)


MODES = {
    Kind.UPGRADE: "upgrade",
    Kind.DRY_RUN: "dry run",
    Kind.CANARY: "canary, live traffic",
    Kind.WATCH: "watch, live traffic since the swap",
}


def _header(report: Report, style: Style) -> list[str]:
    mode = MODES[report.kind]
    if report.verdict is not None and report.verdict.checks:
        label = report.verdict.label.upper()
        colour = {"PASS": "green", "FAIL": "red", "FORCED": "yellow"}[label]
        head = style(label, fg=colour, bold=True)
    else:
        head = style("NO GATES", bold=True)
    lines = [
        f"{head} {report.alias} @ {report.revision} ({mode})",
        *(
            []
            if report.kind == Kind.WATCH
            else [f"  old  {report.old_model or '(none: first index of the alias)'}"]
        ),
        f"  {'live' if report.kind == Kind.WATCH else 'new '} {report.new_model}",
        f"  {report.corpus_size:,} documents; {report.n_queries:,} queries "
        f"({report.query_source}); k={report.k}",
    ]
    if report.kind == Kind.DRY_RUN:
        lines.append(
            style(
                f"  forecast for {report.corpus_size:,} documents from a sample of "
                f"{report.sample_size or 0:,} (95% intervals in brackets)",
                bold=True,
            )
        )
    return lines


def _gates(report: Report, style: Style) -> list[str]:
    lines = []
    for check in report.verdict.checks if report.verdict else ():
        mark = style("ok", fg="green") if check.passed else style("FAILED", fg="red", bold=True)
        op = ">=" if check.bound == "min" else "<="
        value = "not measured" if check.value is None else f"{check.value:.4f}"
        lines.append(f"  gate  {check.metric:<28} {value:>12}  {op} {check.limit:<8g} {mark}")
    return lines


def _coverage(report: Report, style: Style) -> list[str]:
    lines = []
    for kind, keys in (report.distributions.get("coverage") or {}).items():
        more = ", ..." if (report.metrics.get(f"coverage_{kind}") or 0) > len(keys) else ""
        lines.append(f"  coverage {kind}: {', '.join(keys)}{more}")
    return lines


def _contracts(report: Report, style: Style) -> list[str]:
    section = report.distributions.get("contracts")
    if not section:
        return []
    failures, ndcg = (
        report.metrics.get("contract_failures"),
        report.metrics.get("contract_ndcg_at_10"),
    )
    old = report.metrics.get("contract_ndcg_at_10_old")
    summary = f"{section['queries']} golden queries, {failures or 0:g} broken"
    summary += _interval(report, "contract_failures")
    if ndcg is not None:
        summary += f"; nDCG@10 {ndcg:.4f}{_interval(report, 'contract_ndcg_at_10')}"
        summary += f" (old {old:.4f})" if old is not None else ""
    lines = [style("  golden queries", bold=True) + f"  {summary}"]
    for broken in section["broken"]:
        lost = ", ".join(f"{m['document']} (rank {_rank(m['rank'])})" for m in broken["missing"])
        lines.append(
            style("    BROKEN ", fg="red") + f"{broken['id']}: {_clip(broken['query'], 50)!r} "
            f"lost {lost} from its top {broken['k']}"
        )
    return lines


def _watch(report: Report, style: Style) -> list[str]:
    if report.kind != Kind.WATCH:
        return []
    shown = [(n, v) for n, v in report.metrics.items() if n.startswith("watch_") and v is not None]
    lines = [style("  decay since the swap", bold=True)]
    for i in range(0, len(shown), 2):
        lines.append(
            "    " + "    ".join(f"{name:<30}{value:>9.4f}" for name, value in shown[i : i + 2])
        )
    trend = report.distributions.get("watch_trend") or []
    if len(trend) > 1:
        lines.append(style("  trend over the watches of this index", bold=True))
        columns = [c for c in TREND_COLUMNS if any(p.get(c) is not None for p in trend)]
        lines.append("    " + f"{'at (UTC)':<20}" + "".join(f"{c[6:]:>16}" for c in columns))
        for point in trend[-TREND_ROWS:]:
            cells = "".join(
                f"{'-' if point.get(c) is None else format(point[c], '.4f'):>16}" for c in columns
            )
            lines.append(f"    {point['at'][:19].replace('T', ' '):<20}{cells}")
    return lines


# The trend's columns in the terminal (the JSON report has every figure of every watch).
TREND_COLUMNS = (
    "watch_top1_ks",
    "watch_topk_ks",
    "watch_below_threshold_delta",
    "watch_contract_failures",
    "watch_reader_skew",
)
TREND_ROWS = 12


def _headline(report: Report, style: Style) -> list[str]:
    shown = [(n, report.metrics[n]) for n in HEADLINE if report.metrics.get(n) is not None]
    if not shown:
        return []
    lines = [style("  retrieval change", bold=True)]
    width = 2 if report.kind != Kind.DRY_RUN else 1
    for i in range(0, len(shown), width):
        cells = [
            f"{name:<26}{value:>9.4f}{_interval(report, name)}"
            for name, value in shown[i : i + width]
        ]
        lines.append("    " + "    ".join(cells))
    return lines


def _interval(report: Report, name: str) -> str:
    low, high = report.metrics.get(f"{name}_ci_low"), report.metrics.get(f"{name}_ci_high")
    if report.kind != Kind.DRY_RUN or low is None or high is None:
        return ""
    return f"  [{low:.4f}, {high:.4f}]"


def _qrels(report: Report, style: Style) -> list[str]:
    qrels = report.distributions.get("qrels")
    if not qrels:
        return []
    lines = [
        style("  against the judgements          old       new     delta  95% interval", bold=True)
    ]
    for name, row in qrels.items():
        interval = row.get("ci")
        ci = (
            f"[{interval[0]:+.4f}, {interval[1]:+.4f}]" if interval and None not in interval else ""
        )
        old = "" if row.get("old") is None else f"{row['old']:.4f}"
        delta = "" if row.get("delta") is None else f"{row['delta']:+.4f}"
        lines.append(f"    {name:<26}{old:>9} {row['new']:>9.4f} {delta:>9}  {ci}")
    return lines


def _segments(report: Report, style: Style) -> list[str]:
    table = report.distributions.get("segments")
    if not table:
        return []
    lines = [
        style(f"  segments by {table['by']}", bold=True)
        + f"  (at least {table['min_queries']} queries; drops beyond the whole, "
        + ("95% intervals)" if report.kind == Kind.DRY_RUN else "BH-adjusted p)")
    ]
    for row in table["segments"]:
        cells = [f"{_clip(row['label'], 36):<36} {row['queries']:>6}"]
        if "overlap_at_10" in row:
            cells.append(f"overlap@10 {row['overlap_at_10']:.3f} ({_drop(row, 'overlap')})")
        if "recall_at_10_new" in row:
            cells.append(
                f"recall@10 {row['recall_at_10_old']:.3f}->{row['recall_at_10_new']:.3f} "
                f"({_drop(row, 'recall')})"
            )
        mark = style("  FLAGGED", fg="red", bold=True) if row["flagged"] else ""
        lines.append("    " + "  ".join(cells) + mark)
    for row in table["skipped"]:
        lines.append(f"    {_clip(row['label'], 36):<36} {row['queries']:>6}  too few queries")
    return lines


def _drop(row: dict[str, Any], kind: str) -> str:
    """A segment's drop beyond the whole, with its adjusted p (measured) or interval (forecast)."""
    drop = row.get(f"{kind}_drop")
    shown = "drop -" if drop is None else f"{drop:+.2f}"
    if f"{kind}_p" in row:
        return f"{shown}, p {row[f'{kind}_p']:.3f}"
    low, high = row.get(f"{kind}_drop_ci") or (None, None)
    return shown + (f" [{low:+.2f}, {high:+.2f}]" if low is not None and high is not None else "")


def _thresholds(report: Report, style: Style) -> list[str]:
    mapping = report.distributions.get("threshold_map") or []
    cells = [f"{row['old']:g}->{row['new']:.3f}" for row in mapping if row["new"] is not None]
    if not cells:
        return []
    lines = [style("  score thresholds, old -> new (same share of results)", bold=True)]
    lines += ["    " + "  ".join(cells[i : i + 6]) for i in range(0, len(cells), 6)]
    return lines


def _worst(report: Report, style: Style) -> list[str]:
    lines = []
    for key, title in WORST_KINDS:
        rows = report.worst.get(key) or []
        if not rows:
            continue
        lines.append(style(f"  most affected queries: {title}", bold=True))
        for row in rows:
            tag = (
                f"overlap {row['overlap']:.2f}"
                if key == "by_overlap"
                else f"{row['document']} rank {_rank(row['old_rank'])}->{_rank(row['new_rank'])}"
            )
            lines.append(f"    {_clip(row['query'], 60):<60}  {tag}")
            lines.append(f"      old {_clip(', '.join(row['old_top']), 88)}")
            lines.append(f"      new {_clip(', '.join(row['new_top']), 88)}")
    return lines


def _notes(report: Report, style: Style) -> list[str]:
    return [f"  {line}" for line in embedding_lines(report.embedding)] + [
        f"  note: {note}" for note in report.notes
    ]


def _rank(rank: int | None) -> str:
    return "-" if rank is None else str(rank)


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
