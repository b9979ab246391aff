"""The report as one self-contained HTML file: inline CSS, plots embedded as PNG data URIs.

Plots are drawn from the report's JSON (histograms, threshold map, intervals), not from raw
arrays, so a report recorded in history renders the same later. Needs matplotlib (extra `html`).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from html import escape as e
from typing import Any

from embedmig.errors import ConfigError
from embedmig.metrics.report import HEADLINE, SCHEMA_VERSION, WORST_KINDS, Kind, Report
from embedmig.render import embedding_lines
from embedmig.render.text import MODES

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
.badge { display: inline-block; padding: .15rem .6rem; border-radius: .3rem; color: #fff; font-weight: 600; }
.pass { background: #1a7f37; } .fail { background: #cf222e; } .forced { background: #9a6700; }
.none { background: #57606a; }
table { border-collapse: collapse; margin: .5rem 0; } td, th { padding: .2rem .6rem; text-align: left; }
tr:nth-child(even) { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.bad { color: #cf222e; font-weight: 600; } .ok { color: #1a7f37; }
.plots { display: flex; flex-wrap: wrap; gap: 1rem; } .plots img { width: 520px; border: 1px solid #eee; }
.muted { color: #57606a; }
"""


def render_html(report: Report) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("HTML reports need matplotlib: pip install 'embedmig[html]'") from None
    parts = [
        *_header(report),
        *_gates(report),
        *_contracts(report),
        *_plot_section(_plots(report, plt)),
        *_qrels(report),
        *_segments(report),
        *_thresholds(report),
        *_metrics(report),
        *_worst(report),
        *_notes(report),
        f"<p class=muted>embedmig report, schema_version {SCHEMA_VERSION}.</p></body></html>",
    ]
    return "\n".join(parts)


def _header(report: Report) -> list[str]:
    verdict = report.verdict
    label = verdict.label if verdict is not None and verdict.checks else "none"
    rows = [
        ("old", e(report.old_model or "(none: first index of the alias)")),
        ("new", e(report.new_model)),
        ("corpus", f"{report.corpus_size:,} documents"),
        ("queries", f"{report.n_queries:,} ({e(report.query_source)}), k={report.k}"),
    ]
    if report.kind == Kind.DRY_RUN:
        rows.append(
            (
                "forecast",
                f"for {report.corpus_size:,} documents from a sample of "
                f"{report.sample_size or 0:,}; brackets are 95% intervals",
            )
        )
    return [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>embedmig report: {e(report.alias)} @ {e(report.revision)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1><span class='badge {label}'>{e(label.upper() if label != 'none' else 'NO GATES')}"
        f"</span> {e(report.alias)} @ {e(report.revision)} "
        f"{_mode(report)}"
        "</h1>",
        "<table>",
        *(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in rows),
        "</table>",
    ]


def _mode(report: Report) -> str:
    return "" if report.kind == Kind.UPGRADE else f"({MODES[report.kind]})"


def _gates(report: Report) -> list[str]:
    verdict = report.verdict
    if verdict is None or not verdict.checks:
        return []
    parts = ["<h2>Gates</h2><table><tr><th>metric</th><th>value</th><th>bound</th><th></th></tr>"]
    for c in verdict.checks:
        value = "not measured" if c.value is None else f"{c.value:.4f}"
        op = "&ge;" if c.bound == "min" else "&le;"
        mark = "<span class=ok>ok</span>" if c.passed else "<span class=bad>FAILED</span>"
        parts.append(
            f"<tr><td>{e(c.metric)}</td><td class=num>{value}</td><td>{op} {c.limit:g}</td>"
            f"<td>{mark}</td></tr>"
        )
    for kind, keys in (report.distributions.get("coverage") or {}).items():
        parts.append(f"<tr><td colspan=4>coverage {kind}: {e(', '.join(keys))}</td></tr>")
    parts.append("</table>")
    return parts


def _contracts(report: Report) -> list[str]:
    section = report.distributions.get("contracts")
    if not section:
        return []
    failures = report.metrics.get("contract_failures") or 0
    ndcg = report.metrics.get("contract_ndcg_at_10")
    parts = [
        "<h2>Golden queries</h2>",
        f"<p>{section['queries']} golden queries, {failures:g} broken"
        + (f"; nDCG@10 {ndcg:.4f}" if ndcg is not None else "")
        + "</p>",
    ]
    if section["broken"]:
        parts.append("<table><tr><th>contract</th><th>query</th><th>lost (rank now)</th></tr>")
        for broken in section["broken"]:
            lost = ", ".join(
                f"{m['document']} ({m['rank'] if m['rank'] else '-'})" for m in broken["missing"]
            )
            parts.append(
                f"<tr><td class=bad>{e(broken['id'])}</td><td>{e(broken['query'])}</td>"
                f"<td>{e(lost)} from its top {broken['k']}</td></tr>"
            )
        parts.append("</table>")
    return parts


def _plot_section(plots: list[tuple[str, str]]) -> list[str]:
    if not plots:
        return []
    return [
        "<h2>Plots</h2><div class=plots>",
        *(f"<img alt='{e(title)}' src='data:image/png;base64,{data}'>" for title, data in plots),
        "</div>",
    ]


def _qrels(report: Report) -> list[str]:
    qrels = report.distributions.get("qrels")
    if not qrels:
        return []
    parts = [
        "<h2>Against the judgements</h2><table><tr><th>metric</th><th>old</th><th>new</th>"
        "<th>delta</th><th>95% interval</th></tr>"
    ]
    for name, row in qrels.items():
        ci = row.get("ci")
        parts.append(
            f"<tr><td>{e(name)}</td><td class=num>{_fmt(row.get('old'))}</td>"
            f"<td class=num>{_fmt(row.get('new'))}</td>"
            f"<td class=num>{_fmt(row.get('delta'), signed=True)}</td>"
            f"<td class=num>{'' if not ci else f'[{ci[0]:+.4f}, {ci[1]:+.4f}]'}</td></tr>"
        )
    parts.append("</table>")
    return parts


def _segments(report: Report) -> list[str]:
    table = report.distributions.get("segments")
    if not table:
        return []
    parts = [
        f"<h2>Segments by {e(table['by'])}</h2><p class=muted>Segments of at least "
        f"{table['min_queries']} queries; a drop is relative, beyond the whole; p-values are "
        "Benjamini-Hochberg-adjusted across segments.</p>",
        "<table><tr><th>segment</th><th>queries</th><th>overlap@10</th><th>drop</th><th>p</th>"
        "<th>recall@10 old</th><th>new</th><th>drop</th><th>p</th><th></th></tr>",
    ]
    for row in table["segments"]:
        mark = "<span class=bad>FLAGGED</span>" if row["flagged"] else ""
        parts.append(
            f"<tr><td>{e(row['label'])}</td><td class=num>{row['queries']}</td>"
            + "".join(
                f"<td class=num>{_significance(row, key[:-2]) if key.endswith('_p') else _fmt(row.get(key), signed=key.endswith('drop'))}</td>"
                for key in (
                    "overlap_at_10",
                    "overlap_drop",
                    "overlap_p",
                    "recall_at_10_old",
                    "recall_at_10_new",
                    "recall_drop",
                    "recall_p",
                )
            )
            + f"<td>{mark}</td></tr>"
        )
    for row in table["skipped"]:
        parts.append(
            f"<tr><td>{e(row['label'])}</td><td class=num>{row['queries']}</td>"
            "<td colspan=8 class=muted>too few queries</td></tr>"
        )
    parts.append("</table>")
    return parts


def _thresholds(report: Report) -> list[str]:
    mapping = report.distributions.get("threshold_map") or []
    if not mapping:
        return []
    return [
        "<h2>Score thresholds</h2><p class=muted>An old-model cut-off and the new-model score "
        "that keeps the same share of query&rarr;top-k results.</p>",
        "<table><tr><th>old threshold</th><th>share at or below</th><th>new threshold</th></tr>",
        *(
            f"<tr><td class=num>{row['old']:g}</td><td class=num>{_fmt(row['share'])}</td>"
            f"<td class=num>{_fmt(row['new'])}</td></tr>"
            for row in mapping
        ),
        "</table>",
    ]


def _metrics(report: Report) -> list[str]:
    parts = ["<h2>Metrics</h2><table>"]
    names = [*HEADLINE, *(n for n in report.metrics if n not in HEADLINE)]
    for name in names:
        if report.metrics.get(name) is None or _is_bound(report, name):
            continue
        low, high = report.metrics.get(f"{name}_ci_low"), report.metrics.get(f"{name}_ci_high")
        interval = f"[{low:.4f}, {high:.4f}]" if low is not None and high is not None else ""
        parts.append(
            f"<tr><td>{e(name)}</td><td class=num>{report.metrics[name]:.4f}</td>"
            f"<td class=num>{interval}</td></tr>"
        )
    parts.append("</table>")
    return parts


def _worst(report: Report) -> list[str]:
    parts = []
    for key, title in WORST_KINDS:
        rows = report.worst.get(key) or []
        if not rows:
            continue
        parts.append(
            f"<h2>Most affected queries: {title}</h2><table><tr><th>query</th><th></th>"
            "<th>old top 5</th><th>new top 5</th></tr>"
        )
        for row in rows:
            tag = (
                f"overlap {row['overlap']:.2f}"
                if key == "by_overlap"
                else f"{e(row['document'])}: rank {row['old_rank'] or '-'} &rarr; "
                f"{row['new_rank'] or '-'}"
            )
            parts.append(
                f"<tr><td>{e(row['query'])}</td><td>{tag}</td>"
                f"<td>{e(', '.join(row['old_top']))}</td><td>{e(', '.join(row['new_top']))}</td></tr>"
            )
        parts.append("</table>")
    return parts


def _notes(report: Report) -> list[str]:
    notes = [*embedding_lines(report.embedding), *report.notes]
    if not notes:
        return []
    return ["<h2>Notes</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>"]


Plot = tuple[str, Callable[[Any], None]]  # a title, and what draws it on a matplotlib Axes


def _plots(report: Report, plt: Any) -> list[tuple[str, str]]:
    """Every plot the report has data for, as (title, base64 PNG)."""
    plots: list[tuple[str, str]] = []
    for build in _PLOTS:
        for title, draw in build(report):
            fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
            try:
                draw(ax)
                ax.set_title(title, fontsize=11)
                fig.tight_layout()
                buffer = io.BytesIO()
                fig.savefig(buffer, format="png")
            finally:
                plt.close(fig)
            plots.append((title, base64.b64encode(buffer.getvalue()).decode("ascii")))
    return plots


def _score_plots(report: Report) -> list[Plot]:
    found = []
    for key, title in (
        ("scores", "query→top-k cosine scores"),
        ("pair_scores", "random document pairs (background)"),
    ):
        hist = (report.distributions.get(key) or {}).get("histogram") or {}
        if hist.get("edges"):
            found.append((title, _two_histograms(hist)))
    return found


def _overlap_plot(report: Report) -> list[Plot]:
    overlap = (report.distributions.get("overlap") or {}).get(str(report.k))
    if not overlap or not overlap.get("histogram"):
        return []

    def draw(ax: Any) -> None:
        counts = overlap["histogram"]
        edges = [i / len(counts) for i in range(len(counts) + 1)]
        ax.bar(edges[:-1], counts, width=1 / len(counts), align="edge", color="#0969da", ec="white")
        ax.set_xlabel(f"overlap@{report.k}")
        ax.set_ylabel("queries")

    return [(f"overlap@{report.k} per query", draw)]


def _threshold_plot(report: Report) -> list[Plot]:
    mapping = [
        row for row in report.distributions.get("threshold_map") or [] if row["new"] is not None
    ]
    if not mapping:
        return []

    def draw(ax: Any) -> None:
        xs = [row["old"] for row in mapping]
        new = [row["new"] for row in mapping]
        ax.plot(xs, new, marker="o", color="#cf222e", label="new threshold")
        ax.plot(xs, xs, linestyle="--", color="#999", label="unchanged")
        ax.set_xlabel("old-model threshold")
        ax.set_ylabel("new-model threshold")
        ax.legend()

    return [("threshold map (same share of results)", draw)]


def _qrels_plot(report: Report) -> list[Plot]:
    qrels = {
        name: row
        for name, row in (report.distributions.get("qrels") or {}).items()
        if row.get("ci")
    }
    if not qrels:
        return []

    def draw(ax: Any) -> None:
        names = list(qrels)
        deltas = [qrels[n]["delta"] for n in names]
        low = [qrels[n]["delta"] - qrels[n]["ci"][0] for n in names]
        high = [qrels[n]["ci"][1] - qrels[n]["delta"] for n in names]
        colours = ["#cf222e" if d < 0 else "#1a7f37" for d in deltas]
        ax.bar(names, deltas, yerr=[low, high], capsize=6, color=colours)
        ax.axhline(0, color="#333", linewidth=0.8)
        ax.set_ylabel("new − old (95% bootstrap interval)")

    return [("retrieval quality change", draw)]


def _forecast_plot(report: Report) -> list[Plot]:
    metrics = report.metrics
    shown = [
        name
        for name in (*HEADLINE, "recall_at_10_new", "ndcg_at_10_new", "recall_ratio")
        if report.kind == Kind.DRY_RUN
        and metrics.get(name) is not None
        and metrics.get(f"{name}_ci_low") is not None
    ]
    if not shown:
        return []

    def draw(ax: Any) -> None:
        values = [float(metrics[n] or 0.0) for n in shown]
        low = [v - float(metrics[f"{n}_ci_low"] or v) for n, v in zip(shown, values, strict=True)]
        high = [float(metrics[f"{n}_ci_high"] or v) - v for n, v in zip(shown, values, strict=True)]
        ax.errorbar(values, shown, xerr=[low, high], fmt="o", capsize=4, color="#0969da")
        ax.invert_yaxis()
        ax.set_xlabel("forecast with its 95% interval")

    return [("forecast for the full corpus", draw)]


def _segment_plot(report: Report) -> list[Plot]:
    rows = (report.distributions.get("segments") or {}).get("segments") or []
    measure = next(
        (m for m in ("recall_at_10_new", "overlap_at_10") if any(m in r for r in rows)), None
    )
    if measure is None:
        return []

    def draw(ax: Any) -> None:
        labels = [r["label"][:24] for r in rows]
        colours = ["#cf222e" if r["flagged"] else "#0969da" for r in rows]
        ax.barh(labels, [r.get(measure) or 0.0 for r in rows], color=colours)
        if measure == "recall_at_10_new":
            old = [r["recall_at_10_old"] for r in rows]
            ax.scatter(old, labels, color="#333", marker="|", s=200, label="old model", zorder=3)
            ax.legend(fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(measure.replace("_at_10_new", "@10, new model").replace("_at_10", "@10"))

    return [("per segment (red: flagged)", draw)]


def _trend_plot(report: Report) -> list[Plot]:
    trend = report.distributions.get("watch_trend") or []
    drawn = (
        [n for n in _TREND if any(p.get(n) is not None for p in trend)] if len(trend) > 1 else []
    )
    if not drawn:
        return []

    def draw(ax: Any) -> None:
        for name in drawn:
            points = [(i, p[name]) for i, p in enumerate(trend) if p.get(name) is not None]
            ax.plot(*zip(*points, strict=True), marker="o", label=name.removeprefix("watch_"))
        ax.set_xticks(range(len(trend)), [p["at"][5:16].replace("T", " ") for p in trend])
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
        ax.set_ylabel("against the baseline at the swap")
        ax.legend(fontsize=8)

    return [("decay watch: trend over the watches of this index", draw)]


_PLOTS = (
    _score_plots,
    _overlap_plot,
    _threshold_plot,
    _qrels_plot,
    _forecast_plot,
    _segment_plot,
    _trend_plot,
)


# The trend lines the HTML report draws: the shifts, on one scale (0 = the baseline).
_TREND = ("watch_top1_ks", "watch_topk_ks", "watch_below_threshold_delta")


def _is_bound(report: Report, name: str) -> bool:
    """An interval end shown beside its metric rather than on a row of its own."""
    base = name.removesuffix("_ci_low").removesuffix("_ci_high")
    return base != name and base in report.metrics


def _two_histograms(hist: dict[str, list[float]]) -> Callable[[Any], None]:
    def draw(ax: Any) -> None:
        for side, colour in (("old", "#0969da"), ("new", "#cf222e")):
            counts = hist.get(side) or []
            if any(counts):
                ax.stairs(counts, hist["edges"], fill=True, alpha=0.35, color=colour, label=side)
        ax.set_xlabel("cosine similarity")
        ax.set_ylabel("count")
        ax.legend()

    return draw


def _significance(row: dict[str, Any], kind: str) -> str:
    """A segment's adjusted p (measured), or the 95% interval of its drop (a forecast)."""
    if f"{kind}_p" in row:
        return _fmt(row[f"{kind}_p"])
    low, high = row.get(f"{kind}_drop_ci") or (None, None)
    return "" if low is None or high is None else f"[{low:+.3f}, {high:+.3f}]"


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:+.4f}" if signed else f"{value:.4f}"
