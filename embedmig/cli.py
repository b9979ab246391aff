"""The ``embedmig`` command: parses, calls :mod:`embedmig.command`, prints.

This is the one place where errors become messages: an EmbedmigError prints one line on stderr and
exits non-zero (1, 3 for a failed gate, 4 while a canary holds the swap); ``--verbose`` adds the
traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import click

from embedmig.config import DEFAULT_SAMPLE, MAX_K, Config, sample_size
from embedmig.embedders.spec import BACKENDS, LOCAL, MAP_KINDS, Embedder
from embedmig.errors import (
    CanaryOpen,
    ContractBroken,
    EmbedderDrift,
    EmbedmigError,
    GateFailed,
    HistoryError,
    ReadersBehind,
)

if TYPE_CHECKING:
    from embedmig.metrics.report import Report

# Only click, the config and the errors load at start: `embedmig --help`, `current`, `history`,
# `heads` and `show` stay fast; each command loads what it uses.

EXIT_ERROR, EXIT_GATE, EXIT_CANARY = 1, 3, 4


class SampleSize(click.ParamType):  # type: ignore[type-arg]  # generic only in newer Click
    """``1000`` (documents) or ``10%`` (a share of the corpus, as a float); a bad value is a
    ConfigError (exit 1) with the rule, as the Python API gives it."""

    name = "N|P%"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int | float:
        return sample_size(value)


SAMPLE = SampleSize()


def _command() -> ModuleType:
    """``embedmig.command``, loaded by the command that runs: ``--help`` needs none of it."""
    from embedmig import command

    return command


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time, not to the one at configuration: a
    program calling ``main`` repeatedly (tests capturing output) may have replaced it since."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


class State:
    def __init__(self) -> None:
        self.verbose = False
        self.bars = False  # progress bars: on a terminal, without -q
        self.config_path: str | None = None

    def config(self) -> Config:
        return Config(self.config_path) if self.config_path else Config.find()


pass_state = click.make_pass_decorator(State)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config_path", help="embedmig.ini or pyproject.toml to use.")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks and debug logging.")
@click.option("-q", "--quiet", is_flag=True, help="Only print results and errors.")
@click.version_option(package_name="embedmig")
@pass_state
def cli(state: State, config_path: str | None, verbose: bool, quiet: bool) -> None:
    """Versioned, reversible migrations of the embedding model behind a FAISS index."""
    state.verbose = verbose
    state.config_path = config_path
    state.bars = not quiet and sys.stderr.isatty()
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("embedmig: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    if not verbose:
        for noisy in (
            "sentence_transformers",
            "transformers",
            "huggingface_hub",
            "alembic",
            "faiss",
            "httpx",  # a line per request
            "httpcore",
        ):
            logging.getLogger(noisy).setLevel(logging.WARNING if not quiet else logging.ERROR)


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False))
@pass_state
def init(state: State, directory: str) -> None:
    """Create an environment in DIRECTORY and embedmig.ini here."""
    ini = _command().init(directory, state.config_path or "embedmig.ini")
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
    adapter: str | None,
) -> None:
    """Write a new revision script for an alias."""
    rev = _command().revision(
        state.config(),
        message,
        alias=alias,
        new=Embedder(
            new, backend=backend, base_url=base_url, api_key_env=api_key_env, dimensions=dimensions
        ),
        old=old,
        rev_id=rev_id,
        index_factory=index_factory,
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
    reports = _command().upgrade(
        state.config(),
        target,
        dry_run=dry_run,
        sample=sample,
        force=force,
        report_path=report_path,
        on_report=_print_report,
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


def _print_report(report: Report) -> None:
    from embedmig.render import render

    click.echo(render(report, styled=True))


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
        _command().check(state.config(), target, sample=sample, on_report=reports.append)
    finally:
        if fmt == "json":
            click.echo(json.dumps([r.to_dict() for r in reports], indent=2))
        else:
            for report in reports:
                _print_report(report)
    if not reports:
        click.echo("nothing to check: every alias is at its head", err=fmt == "json")


def _report_output(function: Callable[..., None]) -> Callable[..., None]:
    """``-o FILE`` and ``--format``, for the commands that show a report."""
    function = click.option(
        "--format",
        "fmt",
        type=click.Choice(["text", "json", "html"]),
        default="text",
        show_default=True,
    )(function)
    return click.option(
        "-o",
        "--output",
        type=click.Path(dir_okay=False),
        help="Write to a file: .json, .html or text.",
    )(function)


def _show(found: Report, output: str | None, fmt: str) -> None:
    if output is not None:
        _command().write_report(found, Path(output))
        click.echo(f"wrote {output}")
    else:
        from embedmig.render import render

        click.echo(render(found, fmt, styled=True))


@cli.command()
@click.argument("rev", required=False)
@click.option("--event", type=int, default=None, help="A history event id (see `history`).")
@_report_output
@pass_state
def report(state: State, rev: str | None, event: int | None, output: str | None, fmt: str) -> None:
    """Render again the report of a recorded upgrade or dry run of REV."""
    if rev is None and event is None:
        raise click.UsageError("name a revision or --event ID")
    _show(_command().report(state.config(), rev or "", event=event), output, fmt)


@cli.command()
@click.argument("alias")
@click.option(
    "--fraction",
    type=float,
    default=None,
    help="Change the share (0 to 1) of queries searchers mirror to the shadow.",
)
@click.option("--close", is_flag=True, help="End the canary without a swap (recorded).")
@_report_output
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
        _command().check_writable(Path(output))
    found = _command().canary(state.config(), alias, fraction=fraction, close=close, wait=wait)
    _show(found, output, fmt)
    if close:
        click.echo(f"closed the canary of {alias}; the alias is unchanged", err=fmt == "json")


@cli.command()
@click.argument("alias", required=False)
@_report_output
@pass_state
def watch(state: State, alias: str | None, output: str | None, fmt: str) -> None:
    """Watch each live alias (or ALIAS) once for decay since its swap; recorded in history; exit
    3 when a watch_* gate fails (for cron). -o writes the last alias's report."""
    if output is not None:
        _command().check_writable(Path(output))
    reports: list[Report] = []
    try:
        _command().watch(state.config(), alias, on_report=reports.append)
    finally:
        for found in reports:
            _show(found, output, fmt)
    if not reports:
        click.echo("no alias has a live index to watch")


# ignore_unknown_options lets `downgrade -1` through as a target, as alembic's CLI does.
@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("target")
@click.option("--wait", default=0.0, show_default=True, help="Seconds to wait for a locked alias.")
@pass_state
def downgrade(state: State, target: str, wait: float) -> None:
    """Roll back to TARGET (-1, ALIAS@-1, base, a revision) without re-embedding."""
    undone = _command().downgrade(state.config(), target, wait=wait)
    for rev in undone:
        click.echo(f"rolled back {rev.alias}: {rev.revision} -> {rev.down_revision or 'base'}")
    if not undone:
        click.echo(f"nothing to do: already at {target}")


@cli.command()
@pass_state
def current(state: State) -> None:
    """Show each alias's revision and live index."""
    states = _command().current(state.config())
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
@click.argument("alias", required=False)
@pass_state
def probe(state: State, alias: str | None) -> None:
    """Re-embed the probe texts with each live index's embedder (or ALIAS's); exit 1 when one
    drifted below probe.min_cosine, for cron and CI."""
    results = _command().probe(state.config(), alias)
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
    results = _command().verify(state.config(), alias)
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

    found = _command().status(state.config(), alias)
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


@cli.command()
@click.option("--alias", default=None, help="Only this alias.")
@click.option("-v", "--verbose", "detail", is_flag=True, help="Show verdicts, gates and metrics.")
@pass_state
def history(state: State, alias: str | None, detail: bool) -> None:
    """Recorded upgrades, downgrades, dry runs and stamps, newest first."""
    for event in _command().history(state.config(), alias):
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
    for rev in _command().heads(state.config()):
        click.echo(
            f"{rev.revision} ({rev.alias}) (head)  {rev.message.splitlines()[0] if rev.message else ''}"
        )


@cli.command()
@click.argument("rev")
@pass_state
def show(state: State, rev: str) -> None:
    """Show a revision script and its recorded history."""
    script, events = _command().show(state.config(), rev)
    click.echo(f"Rev: {script.revision}")
    click.echo(f"Parent: {script.down_revision or '<base>'}")
    click.echo(f"Alias: {script.alias}")
    click.echo(f"Old: {script.old.describe() if script.old else '(none: first index)'}")
    click.echo(f"New: {script.new.describe()}")
    click.echo(f"Gates: {script.gates!r}")
    click.echo(f"Index factory: {script.index_factory}")
    click.echo(f"Path: {script.path}")
    click.echo("")
    click.echo("    " + script.message.replace("\n", "\n    "))
    for event in events:
        message = f" ({event.message})" if event.message else ""
        click.echo(
            f"  {event.finished_at:%Y-%m-%d %H:%M:%S} {event.action} {event.status}{message}"
        )


@cli.command()
@click.argument("target")
@click.option("--wait", default=0.0, show_default=True, help="Seconds to wait for a locked alias.")
@pass_state
def stamp(state: State, target: str, wait: float) -> None:
    """Record TARGET as an alias's revision without running migrations."""
    for alias, rev in _command().stamp(state.config(), target, wait=wait):
        click.echo(f"stamped {alias} at {rev or 'base'}")


@cli.command()
@click.argument("alias")
@click.option("--keep", default=1, show_default=True, help="Retired indexes to keep for rollback.")
@click.option("--wait", default=0.0, show_default=True, help="Seconds to wait for a locked alias.")
@pass_state
def prune(state: State, alias: str, keep: int, wait: float) -> None:
    """Delete ALIAS's old retired indexes and unswapped shadows (rollback needs the kept ones)."""
    pruned = _command().prune(state.config(), alias, keep=keep, wait=wait)
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
    click.echo(_command().recover(state.config(), alias, dry_run=dry_run, wait=wait).describe())


@cli.command()
@click.argument("alias")
@click.option("--wait", default=0.0, show_default=True, help="Seconds to wait for a locked alias.")
@pass_state
def compact(state: State, alias: str, wait: float) -> None:
    """Fold ALIAS's change journal into new index snapshots; trim the journal."""
    result = _command().compact(state.config(), alias, wait=wait)
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
    removed = _command().unlock(state.config(), alias, force=force)
    click.echo(f"unlocked {alias} (was: {removed.describe()})")


@cli.command()
@click.argument("alias")
@click.argument("query")
@click.option(
    "-k", type=click.IntRange(1, MAX_K), default=10, show_default=True, help="Number of hits."
)
@pass_state
def search(state: State, alias: str, query: str, k: int) -> None:
    """Search ALIAS's live index; one tab-separated line per hit: rank, key, score, text."""
    for hit in _command().search(state.config(), alias, query, k):
        snippet = " ".join(hit.snippet.split())[:80]
        click.echo(f"{hit.rank}\t{hit.key}\t{hit.score:.4f}\t{snippet}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: the one error boundary."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    state = State()
    try:
        cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="embedmig",  # not "python -c" or a test runner's name
            obj=state,
            standalone_mode=False,
        )
    except (GateFailed, ContractBroken) as exc:
        return _fail(state, exc, EXIT_GATE)
    except CanaryOpen as exc:  # not a failure: the swap waits for live traffic
        click.echo(f"embedmig: {exc}", err=True)
        return EXIT_CANARY
    except EmbedmigError as exc:
        return _fail(state, exc, EXIT_ERROR)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return int(exc.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        return EXIT_ERROR
    except OSError as exc:
        return _fail(state, exc, EXIT_ERROR)
    except Exception as exc:
        # A database failing mid-command (read-only, full, gone); no SQLAlchemy loaded, no such.
        sa = sys.modules.get("sqlalchemy")
        if sa is None or not isinstance(exc, sa.exc.DBAPIError):
            raise
        from embedmig.history import db

        return _fail(state, HistoryError(f"history database error: {db.reason(exc)}"), EXIT_ERROR)
    return 0


def _fail(state: State, exc: BaseException, code: int) -> int:
    if state.verbose:
        traceback.print_exception(exc)
    message = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    click.echo(f"embedmig: error: {message}", err=True)
    return code


def run() -> None:
    sys.exit(main())
