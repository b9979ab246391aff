"""The checks after the swap, for cron and CI: probe, verify, status, watch."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from embedmig.cli import (
    State,
    cli,
    command_module,
    pass_state,
    report_output,
    show_report,
)
from embedmig.errors import (
    ContractBroken,
    EmbedderDrift,
    ReadersBehind,
)

if TYPE_CHECKING:
    from embedmig.metrics.report import Report


@cli.command()
@click.argument("alias", required=False)
@report_output
@pass_state
def watch(state: State, alias: str | None, output: str | None, fmt: str) -> None:
    """Watch each live alias (or ALIAS) once for decay since its swap; recorded in history; exit
    3 when a watch_* gate fails (for cron). -o writes the last alias's report."""
    if output is not None:
        command_module().check_writable(Path(output))
    reports: list[Report] = []
    try:
        command_module().watch(state.config(), alias, on_report=reports.append)
    finally:
        for found in reports:
            show_report(found, output, fmt)
    if not reports:
        click.echo("no alias has a live index to watch")


@cli.command()
@click.argument("alias", required=False)
@pass_state
def probe(state: State, alias: str | None) -> None:
    """Re-embed the probe texts with each live index's embedder (or ALIAS's); exit 1 when one
    drifted below probe.min_cosine, for cron and CI."""
    results = command_module().probe(state.config(), alias)
    if not results:
        click.echo("no live index to probe")
    for r in results:
        if r.lowest is None:
            measured, status = "no probe recorded (built before probes)", "unknown"
        else:
            measured = f"lowest probe cosine {r.lowest:.6f} (min {r.min_cosine:g})"
            status = "DRIFTED" if r.drifted else "ok"
        click.echo(f"{r.alias}: index #{r.index.id}, {measured}: {status}; {r.embedder}")
    drifted = [r for r in results if r.drifted]
    if drifted:
        lowest = min(r.lowest for r in drifted if r.lowest is not None)
        raise EmbedderDrift(
            f"{len(drifted)} alias(es) drifted: {', '.join(r.alias for r in drifted)} "
            f"(lowest probe cosine {lowest:.4f} < probe.min_cosine {drifted[0].min_cosine:g})",
            lowest=lowest,
            threshold=drifted[0].min_cosine,
        )


@cli.command()
@click.argument("alias", required=False)
@pass_state
def verify(state: State, alias: str | None) -> None:
    """Check the golden queries (contracts = FILE) against what each alias (or ALIAS) serves
    now; exit 3 when one lost a document it must keep, for CI and cron."""
    results = command_module().verify(state.config(), alias)
    if not results:
        click.echo("no alias with a live index has golden queries")
    for v in results:
        failures = int(v.metrics["contract_failures"] or 0)
        ndcg = v.metrics["contract_ndcg_at_10"]
        shown = f"; nDCG@10 {ndcg:.4f}" if ndcg is not None else ""
        if v.baseline is not None and v.baseline.get("contract_ndcg_at_10") is not None:
            shown += f" (at the swap {v.baseline['contract_ndcg_at_10']:.4f})"
        queries = v.section["queries"]
        click.echo(
            f"{v.alias}: index #{v.index.id}, {queries} golden queries, {failures} broken{shown}"
        )
        for c in v.broken:
            lost = ", ".join(
                f"{m['document']} ({'rank ' + str(m['rank']) if m['rank'] else 'not found'})"
                for m in c["missing"]
            )
            click.echo(f"  BROKEN {c['id']}: {c['query'][:60]!r} lost {lost} (top {c['k']})")
    broken = [(v.alias, c) for v in results for c in v.broken]
    if broken:
        raise ContractBroken(
            f"{len(broken)} golden queries broken: "
            + "; ".join(
                f"{name}: {c['id']} lost {', '.join(m['document'] for m in c['missing'])}"
                for name, c in broken[:5]
            ),
            alias=broken[0][0],
            broken=[c for _, c in broken],
        )


@cli.command()
@click.argument("alias", required=False)
@pass_state
def status(state: State, alias: str | None) -> None:
    """List the readers of each alias (or ALIAS) and the index each serves; exit 1 on skew (a
    reader on another index past readers.skew_seconds), a reader gone silent or refusing."""
    from embedmig.monitor.status import describe

    found = command_module().status(state.config(), alias)
    if not found:
        click.echo("no alias has a live index or a reader")
    for aliased in found:
        live = f"index #{aliased.live.id}" if aliased.live else "no live index"
        since = f" since {aliased.live_since:%Y-%m-%d %H:%M:%S} UTC" if aliased.live_since else ""
        click.echo(f"{aliased.alias}: {live}{since}; {len(aliased.readers)} reader(s)")
        for r in aliased.readers:
            beat = f"{r.reader.served:,} queries, heartbeat {r.reader.heartbeat_at:%H:%M:%S}"
            click.echo(f"  {describe(r)}; {beat}")
    flagged = [(a.alias, r) for a in found for r in a.flagged]
    if flagged:
        raise ReadersBehind(
            f"{len(flagged)} reader(s) flagged: "
            + "; ".join(f"{name}: {describe(r)}" for name, r in flagged[:5]),
            alias=flagged[0][0],
            readers=[r for _, r in flagged],
        )
