"""The commands that read what is recorded and served: current, history, heads, show, report,
search."""

from __future__ import annotations

import json
from pathlib import Path

import click

from embedmig.cli import (
    State,
    cli,
    command_module,
    pass_state,
    report_output,
    show_report,
)
from embedmig.config import MAX_K
from embedmig.embedders.spec import Embedder


@cli.command()
@click.argument("rev", required=False)
@click.option("--event", type=int, default=None, help="A history event id (see `history`).")
@report_output
@pass_state
def report(state: State, rev: str | None, event: int | None, output: str | None, fmt: str) -> None:
    """Render again the report of a recorded upgrade or dry run of REV."""
    if rev is None and event is None:
        raise click.UsageError("name a revision or --event ID")
    show_report(command_module().report(state.config(), rev or "", event=event), output, fmt)


@cli.command()
@pass_state
def current(state: State) -> None:
    """Show each alias's revision and live index."""
    states = command_module().current(state.config())
    if not states:
        click.echo("no alias has been migrated yet")
    for s in states:
        head = " (head)" if s.is_head else ""
        live = (
            f"index #{s.live.id}, {s.live.ntotal} vectors, dim {s.live.dim}, {s.live.factory}"
            if s.live
            else "no live index"
        )
        through = ""
        if s.adapter is not None:
            model = Embedder.from_json(s.adapter.model).describe()
            through = f"; through adapter #{s.adapter.id} ({s.adapter.kind} map from {model})"
        click.echo(f"{s.alias}: {s.revision or 'base'}{head}; {live}{through}")


@cli.command()
@click.option("--alias", default=None, help="Only this alias.")
@click.option("-v", "--verbose", "detail", is_flag=True, help="Show verdicts, gates and metrics.")
@pass_state
def history(state: State, alias: str | None, detail: bool) -> None:
    """Recorded upgrades, downgrades, dry runs and stamps, newest first."""
    for event in command_module().history(state.config(), alias):
        when = event.finished_at.strftime("%Y-%m-%d %H:%M:%S")
        move = f"#{event.from_index or '-'} -> #{event.to_index or '-'}"
        verdict = f" gates:{event.verdict}" if event.verdict else ""
        message = f"  ({event.message})" if event.message else ""
        click.echo(
            f"#{event.id:<4} {when}  {event.alias:<12} {event.action:<9} {event.revision or 'base':<14} "
            f"{event.status:<11} {move}{verdict}  {event.user}@{event.host}{message}"
        )
        if detail and event.metrics:
            verdict_detail = event.metrics.get("verdict") or {}
            for check in verdict_detail.get("checks", []):
                shown = "n/a" if check["value"] is None else f"{check['value']:.4f}"
                mark = "ok" if check["passed"] else "FAILED"
                click.echo(
                    f"    gate {check['bound']}_{check['metric']} {check['limit']}: {shown} {mark}"
                )
            from embedmig.metrics.report import HEADLINE

            metrics = event.metrics.get("metrics") or {}
            for name in HEADLINE:
                if metrics.get(name) is not None:
                    click.echo(f"    {name:<28} {metrics[name]:.4f}")


@cli.command()
@pass_state
def heads(state: State) -> None:
    """Show the head revision of every alias."""
    for rev in command_module().heads(state.config()):
        click.echo(
            f"{rev.revision} ({rev.alias}) (head)  {rev.message.splitlines()[0] if rev.message else ''}"
        )


@cli.command()
@click.argument("rev")
@pass_state
def show(state: State, rev: str) -> None:
    """Show a revision script and its recorded history."""
    script, events = command_module().show(state.config(), rev)
    click.echo(f"Rev: {script.revision}")
    click.echo(f"Parent: {script.down_revision or '<base>'}")
    click.echo(f"Alias: {script.alias}")
    click.echo(f"Old: {script.old.describe() if script.old else '(none: first index)'}")
    click.echo(f"New: {script.new.describe()}")
    click.echo(f"Gates: {script.gates!r}")
    click.echo(f"Index: {script.index_store} {script.index_spec}")
    click.echo(f"Path: {script.path}")
    click.echo("")
    click.echo("    " + script.message.replace("\n", "\n    "))
    for event in events:
        message = f" ({event.message})" if event.message else ""
        click.echo(
            f"  {event.finished_at:%Y-%m-%d %H:%M:%S} {event.action} {event.status}{message}"
        )


@cli.command()
@click.argument("alias")
@click.argument("query", required=False)
@click.option(
    "-k", type=click.IntRange(1, MAX_K), default=10, show_default=True, help="Number of hits."
)
@click.option(
    "--file",
    "path",
    type=click.Path(dir_okay=False, allow_dash=False),
    default=None,
    help='Queries to answer, JSONL ({"id": ..., "text": ...} a line): one JSON line of hits each.',
)
@pass_state
def search(state: State, alias: str, query: str | None, k: int, path: str | None) -> None:
    """Search ALIAS's live index; one tab-separated line per hit: rank, key, score, text. With
    --file, every query of a JSONL file, answered in batches: one JSON line per query."""
    if (query is None) == (path is None):
        raise click.UsageError("give a QUERY or --file, one of them")
    if path is not None:
        for asked, hits in command_module().search_file(state.config(), alias, Path(path), k):
            found = [
                {"rank": h.rank, "key": h.key, "score": h.score, "snippet": h.snippet} for h in hits
            ]
            click.echo(json.dumps({"id": asked.key, "hits": found}, ensure_ascii=False))
        return
    assert query is not None
    for hit in command_module().search(state.config(), alias, query, k):
        snippet = " ".join(hit.snippet.split())[:80]
        click.echo(f"{hit.rank}\t{hit.key}\t{hit.score:.4f}\t{snippet}")
