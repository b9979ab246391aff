"""The commands that change an alias or its history: init, revision, upgrade, check, canary,
downgrade, stamp, prune, recover, compact, unlock."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from embedmig.cli import (
    SAMPLE,
    State,
    cli,
    command_module,
    pass_state,
    print_report,
    report_output,
    show_report,
)
from embedmig.config import DEFAULT_SAMPLE
from embedmig.embedders.spec import BACKENDS, LOCAL, MAP_KINDS, Embedder

if TYPE_CHECKING:
    from embedmig.metrics.report import Report


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False))
@pass_state
def init(state: State, directory: str) -> None:
    """Create an environment in DIRECTORY and embedmig.ini here."""
    ini = command_module().init(directory, state.config_path or "embedmig.ini")
    click.echo(f"created {directory}/ (env.py, script.py.mako, versions/) and {ini}")
    click.echo(
        f"next: set `corpus` in {ini}, then `embedmig revision -m MSG --alias NAME --new MODEL`"
    )


@cli.command()
@click.option("-m", "--message", required=True, help="What this revision does.")
@click.option("--alias", required=True, help="The alias the revision migrates.")
@click.option(
    "--new",
    "new",
    required=True,
    help="Model to move to: a hub name or local folder; with --backend, an endpoint's model name "
    "or an import path.",
)
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default=LOCAL,
    show_default=True,
    help="How --new is reached.",
)
@click.option(
    "--base-url", default=None, help="--backend openai: the endpoint, like https://host/v1."
)
@click.option(
    "--api-key-env", default=None, help="--backend openai: the environment variable with the key."
)
@click.option(
    "--dimensions", type=click.IntRange(1), default=None, help="--backend openai: shorter vectors."
)
@click.option("--old", default=None, help="Model the alias is on now (default: its head's new).")
@click.option("--rev-id", default=None, help="Revision id to use instead of a random one.")
@click.option(
    "--index-factory", default="Flat", show_default=True, help="faiss.index_factory string."
)
@click.option(
    "--index-store",
    type=click.Choice(["faiss", "pgvector"]),
    default=None,
    help="Where the index lives (default: the option index_store).",
)
@click.option(
    "--pgvector-index",
    default="hnsw",
    show_default=True,
    help="With pgvector: [vector|halfvec,]hnsw[,m=..], ivfflat[,lists=..] or exact.",
)
@click.option(
    "--adapter",
    type=click.Choice(MAP_KINDS),
    default=None,
    help="An adapter revision: serve the live index to --new through a map of this kind.",
)
@pass_state
def revision(
    state: State,
    message: str,
    alias: str,
    new: str,
    backend: str,
    base_url: str | None,
    api_key_env: str | None,
    dimensions: int | None,
    old: str | None,
    rev_id: str | None,
    index_factory: str,
    index_store: str | None,
    pgvector_index: str,
    adapter: str | None,
) -> None:
    """Write a new revision script for an alias."""
    rev = command_module().revision(
        state.config(),
        message,
        alias=alias,
        new=Embedder(
            new, backend=backend, base_url=base_url, api_key_env=api_key_env, dimensions=dimensions
        ),
        old=old,
        rev_id=rev_id,
        index_factory=index_factory,
        index_store=index_store,
        pgvector_index=pgvector_index,
        adapter=adapter,
    )
    click.echo(f"wrote {rev.path} ({rev.revision}, alias {rev.alias})")


@cli.command()
@click.argument("target", default="head")
@click.option(
    "--dry-run", is_flag=True, help="Forecast the full corpus from a sample; change nothing."
)
@click.option(
    "--sample",
    type=SAMPLE,
    default=None,
    help=f"A dry run's sample: documents (default {DEFAULT_SAMPLE}) or a share of the corpus (10%).",
)
@click.option("--force", is_flag=True, help="Swap even if a gate fails (recorded as forced).")
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False),
    help="Write the report (.json, .html or text).",
)
@click.option("--wait", default=0.0, show_default=True, help="Seconds to wait for a locked alias.")
@click.option(
    "--executor",
    default=None,
    help="Where the backfill embeds: inprocess or ray (default: config).",
)
@click.option(
    "--wait-readers",
    type=float,
    default=None,
    help="After the swap, wait up to this many seconds for every reader to serve the new index.",
)
@pass_state
def upgrade(
    state: State,
    target: str,
    dry_run: bool,
    sample: int | float | None,
    force: bool,
    report_path: str | None,
    wait: float,
    executor: str | None,
    wait_readers: float | None,
) -> None:
    """Migrate to TARGET (head, heads, ALIAS@head, +N, a revision)."""
    reports = command_module().upgrade(
        state.config(),
        target,
        dry_run=dry_run,
        sample=sample,
        force=force,
        report_path=report_path,
        on_report=print_report,
        wait=wait,
        executor=executor,
        progress=state.bars,
        wait_readers=wait_readers,
    )
    for report in reports:
        if "readers_converged_s" in report.timings:
            seconds = report.timings["readers_converged_s"]
            click.echo(f"{report.alias}: every reader serves the new index ({seconds:.1f} s)")
    if not reports:
        click.echo(f"nothing to do: already at {target}")


@cli.command()
@click.argument("target", default="heads")
@click.option(
    "--sample",
    type=SAMPLE,
    default=str(DEFAULT_SAMPLE),
    show_default=True,
    help="The dry run's sample: documents or a share of the corpus (10%).",
)
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@pass_state
def check(state: State, target: str, sample: int | float, fmt: str) -> None:
    """Dry-run every pending revision up to TARGET; exit 3 when a gate fails (for CI)."""
    reports: list[Report] = []
    try:
        command_module().check(state.config(), target, sample=sample, on_report=reports.append)
    finally:
        if fmt == "json":
            click.echo(json.dumps([r.to_dict() for r in reports], indent=2))
        else:
            for report in reports:
                print_report(report)
    if not reports:
        click.echo("nothing to check: every alias is at its head", err=fmt == "json")


@cli.command()
@click.argument("alias")
@click.option(
    "--fraction",
    type=float,
    default=None,
    help="Change the share (0 to 1) of queries searchers mirror to the shadow.",
)
@click.option("--close", is_flag=True, help="End the canary without a swap (recorded).")
@report_output
@click.option("--wait", default=0.0, show_default=True, help="Seconds to wait for a locked alias.")
@pass_state
def canary(
    state: State,
    alias: str,
    fraction: float | None,
    close: bool,
    output: str | None,
    fmt: str,
    wait: float,
) -> None:
    """Compare ALIAS's shadow with its live index on the queries searchers mirrored."""
    if output is not None:
        command_module().check_writable(Path(output))
    found = command_module().canary(
        state.config(), alias, fraction=fraction, close=close, wait=wait
    )
    show_report(found, output, fmt)
    if close:
        click.echo(f"closed the canary of {alias}; the alias is unchanged", err=fmt == "json")


# ignore_unknown_options lets `downgrade -1` through as a target, as alembic's CLI does.
@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("target")
@click.option("--wait", default=0.0, show_default=True, help="Seconds to wait for a locked alias.")
@pass_state
def downgrade(state: State, target: str, wait: float) -> None:
    """Roll back to TARGET (-1, ALIAS@-1, base, a revision) without re-embedding."""
    undone = command_module().downgrade(state.config(), target, wait=wait)
    for rev in undone:
        click.echo(f"rolled back {rev.alias}: {rev.revision} -> {rev.down_revision or 'base'}")
    if not undone:
        click.echo(f"nothing to do: already at {target}")


@cli.command()
@click.argument("target")
@click.option("--wait", default=0.0, show_default=True, help="Seconds to wait for a locked alias.")
@pass_state
def stamp(state: State, target: str, wait: float) -> None:
    """Record TARGET as an alias's revision without running migrations."""
    for alias, rev in command_module().stamp(state.config(), target, wait=wait):
        click.echo(f"stamped {alias} at {rev or 'base'}")


@cli.command()
@click.argument("alias")
@click.option("--keep", default=1, show_default=True, help="Retired indexes to keep for rollback.")
@click.option("--wait", default=0.0, show_default=True, help="Seconds to wait for a locked alias.")
@pass_state
def prune(state: State, alias: str, keep: int, wait: float) -> None:
    """Delete ALIAS's old retired indexes and unswapped shadows (rollback needs the kept ones)."""
    pruned = command_module().prune(state.config(), alias, keep=keep, wait=wait)
    for record in pruned.dropped:
        click.echo(f"dropped index #{record.id} ({record.revision}, was {record.state})")
    for adapter in pruned.adapters:
        click.echo(f"dropped adapter #{adapter.id} ({adapter.revision}, was {adapter.state})")
    for record in pruned.held:
        click.echo(f"kept index #{record.id} ({record.revision}): a reader still serves it")
    if pruned.forgotten:
        click.echo(f"forgot {pruned.forgotten} reader(s) gone silent")
    if not pruned.dropped and not pruned.adapters and not pruned.cache.removed and not pruned.held:
        click.echo("nothing to prune")
    if pruned.cache.removed:
        click.echo(
            f"embedding cache: {pruned.cache.removed} embedder(s) removed, "
            f"{pruned.cache.freed_bytes / 2**20:,.1f} MB freed"
        )


@cli.command()
@click.argument("alias")
@click.option("--dry-run", is_flag=True, help="Say what it would do; change nothing.")
@click.option("--wait", default=0.0, show_default=True, help="Seconds to wait for a locked alias.")
@pass_state
def recover(state: State, alias: str, dry_run: bool, wait: float) -> None:
    """Point ALIAS, live on no index, back at the last index it served."""
    click.echo(
        command_module().recover(state.config(), alias, dry_run=dry_run, wait=wait).describe()
    )


@cli.command()
@click.argument("alias")
@click.option("--wait", default=0.0, show_default=True, help="Seconds to wait for a locked alias.")
@pass_state
def compact(state: State, alias: str, wait: float) -> None:
    """Fold ALIAS's change journal into new index snapshots; trim the journal."""
    result = command_module().compact(state.config(), alias, wait=wait)
    for folded in result.folded:
        what = f"{folded.changes} change(s) folded" if folded.changes else "already current"
        click.echo(f"index #{folded.index_id} ({folded.state}): {what}, {folded.ntotal} vectors")
    click.echo(f"journal: {result.journal_removed} entries removed")


@cli.command()
@click.argument("alias")
@click.option("--force", is_flag=True, help="Remove the lock even though its holder looks alive.")
@pass_state
def unlock(state: State, alias: str, force: bool) -> None:
    """Remove ALIAS's migration lock left behind by a dead run."""
    removed = command_module().unlock(state.config(), alias, force=force)
    click.echo(f"unlocked {alias} (was: {removed.describe()})")
