"""The operations of embedmig, one function per CLI command, usable from Python.

Each takes a :class:`~embedmig.config.Config` (except ``init``, which makes one) and returns data;
printing is the CLI's business. Errors are :mod:`embedmig.errors` exceptions.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from embedmig.config import DEFAULT_SAMPLE, Config, sample_size, share
from embedmig.embedders import Embedder
from embedmig.environment import Environment
from embedmig.errors import ConfigError, GateFailed, ScriptError, StateError
from embedmig.store import catalog, events, locks

if TYPE_CHECKING:
    from embedmig.metrics.report import Report
    from embedmig.migrate.compaction import Compaction
    from embedmig.migrate.maintenance import Pruned, Recovery
    from embedmig.monitor.probe import ProbeResult
    from embedmig.monitor.status import AliasReaders
    from embedmig.monitor.verify import Verified
    from embedmig.script import Revision
    from embedmig.serve.searcher import Hit
    from embedmig.sources import Document

log = logging.getLogger("embedmig")

# Commands that only read history (current, history, heads, show) start without FAISS, numpy's
# heavy users or the models: the modules behind the others load inside them.

_INI_TEMPLATE = "embedmig.ini.tmpl"


@dataclass(frozen=True)
class AliasState:
    alias: str
    revision: str | None
    live: catalog.IndexRecord | None
    is_head: bool
    adapter: catalog.AdapterRecord | None = None  # the map the live index is served through


@contextmanager
def _opened(config: Config, *, create: bool = False) -> Iterator[Environment]:
    """The environment of one command; only ``create`` ones may create the history database."""
    env = Environment(config, create=create)
    try:
        yield env
    finally:
        env.dispose()


def init(directory: str | Path, config_path: str | Path = "embedmig.ini") -> Path:
    """Create an environment in ``directory`` and ``embedmig.ini`` next to it; overwrite nothing."""
    directory, ini = Path(directory), Path(config_path)
    if ini.exists():
        raise ConfigError(f"{ini} already exists; refusing to overwrite it")
    if directory.exists() and any(directory.iterdir()):
        raise ConfigError(f"{directory} exists and is not empty; refusing to overwrite it")
    # Shipped as the package embedmig.migrations_template (the repository's migrations_template/).
    template = Path(str(resources.files("embedmig.migrations_template")))
    ignore = shutil.ignore_patterns(_INI_TEMPLATE, "__init__.py", "__pycache__")
    shutil.copytree(template, directory, ignore=ignore, dirs_exist_ok=True)
    try:
        location = directory.resolve().relative_to(ini.resolve().parent)
    except ValueError:
        location = directory.resolve()
    text = (template / _INI_TEMPLATE).read_text(encoding="utf-8")
    ini.write_text(text.replace("{script_location}", location.as_posix()), encoding="utf-8")
    # The history database too: writers and searchers never create one (a missing database is
    # one deleted under them), so writes before the first upgrade need it to exist now.
    with _opened(Config(ini), create=True) as env:
        env.engine  # noqa: B018
    return ini


def revision(
    config: Config,
    message: str,
    *,
    alias: str,
    new: str | Embedder,
    old: str | Embedder | None = None,
    rev_id: str | None = None,
    index_factory: str = "Flat",
    adapter: str | None = None,
    index_store: str | None = None,
    pgvector_index: str = "hnsw",
) -> Revision:
    """Write a revision script moving ``alias`` to ``new`` on top of the alias's current head.

    A string is a sentence-transformers model; an :class:`Embedder` may name any backend.
    ``old`` defaults to the head's ``new``. ``adapter`` (``"procrustes"``, ``"affine"``,
    ``"mlp"``) writes an adapter revision: ``ctx.adapt(adapter)`` in place of a backfill.
    ``index_store`` (default: the option ``index_store``) is where the index lives: ``"faiss"``
    (``index_factory``) or ``"pgvector"`` (``pgvector_index``: see docs/pgvector.md).
    """
    scripts = Environment(config).scripts
    return scripts.generate(
        rev_id=rev_id or uuid.uuid4().hex[-12:],
        message=message,
        alias=alias,
        old=Embedder(old) if isinstance(old, str) else old,
        new=Embedder(new) if isinstance(new, str) else new,
        index_factory=index_factory,
        adapter=adapter,
        index_store=index_store,
        pgvector_index=pgvector_index,
    )


def upgrade(
    config: Config,
    target: str = "head",
    *,
    dry_run: bool = False,
    sample: int | float | None = None,
    force: bool = False,
    report_path: str | Path | None = None,
    on_report: Callable[[Report], None] | None = None,
    wait: float = 0.0,
    executor: str | None = None,
    progress: bool = False,
    wait_readers: float | None = None,
) -> list[Report]:
    """Migrate to ``target``: backfill, evaluate, gate and swap each revision on the way.

    With ``dry_run`` every revision is forecast for the full corpus from a seeded sample (``sample``
    documents, default 1000, or a share of the corpus when a float in (0, 1]) and nothing but a
    history row changes; an upgrade embeds the whole corpus and refuses a ``sample``. ``report_path`` receives the last report (``.json``: JSON, ``.html``:
    HTML, else text). A migration of an alias that another run holds fails at once, or after
    waiting up to ``wait`` seconds for it. ``executor`` (``inprocess`` or ``ray``) overrides the
    option of that name; ``progress`` draws progress bars (on stderr) instead of log lines.
    ``wait_readers`` seconds: after the swaps, wait until every reader still reporting serves
    the new live index (each report's ``timings["readers_converged_s"]``), or raise
    :class:`~embedmig.errors.ReadersBehind` naming those that do not (the swaps stay done).
    """
    if sample is not None and not dry_run:
        raise ConfigError(
            "--sample is for a dry run (add --dry-run): an upgrade embeds the whole corpus"
        )
    if wait_readers is not None and (dry_run or not 0 <= wait_readers <= _MAX_WAIT):
        raise ConfigError(
            "--wait-readers is for an upgrade (a dry run swaps nothing)"
            if dry_run
            else f"--wait-readers must be 0 to {_MAX_WAIT:g} seconds, got {wait_readers:g}"
        )
    sample = DEFAULT_SAMPLE if sample is None else sample_size(sample)
    if report_path is not None:
        check_writable(Path(report_path))
    written: list[Report] = []

    def keep(report: Report) -> None:
        written.append(report)
        if report_path is not None:
            write_report(report, Path(report_path))
        if on_report is not None:
            on_report(report)

    from embedmig.migrate import runner

    if executor is not None:
        config = config.with_options(executor=executor)
    with _opened(config, create=True) as env:
        env.progress = progress
        reports = runner.upgrade(
            env, target, dry_run=dry_run, sample=sample, force=force, on_report=keep, wait=wait
        )
        if wait_readers is not None:
            from embedmig.monitor import status

            last = {report.alias: report for report in reports}  # the final swap of each alias
            for alias, report in last.items():
                waited = status.await_readers(env, alias, wait_readers)
                report.timings["readers_converged_s"] = waited
        return reports


_MAX_WAIT = 86_400.0  # a day: longer is a typo, not a rollout


def downgrade(config: Config, target: str, *, wait: float = 0.0) -> list[Revision]:
    """Roll back to ``target`` (``-1``, ``ALIAS@-1``, ``base``, a revision); no re-embedding."""
    from embedmig.migrate import runner

    with _opened(config) as env:
        return runner.downgrade(env, target, wait=wait)


def prune(config: Config, alias: str, *, keep: int = 1, wait: float = 0.0) -> Pruned:
    """Drop ``alias``'s retired indexes but the ``keep`` most recent (each is one rollback step),
    and any shadow never swapped in (``.dropped``); bound the embedding cache to ``cache.max_mb``
    (``.cache``). Files go after the drop commits: a crash in between leaves an orphan file,
    never a catalog row pointing at a missing one."""
    from embedmig.migrate import maintenance

    with _opened(config) as env:
        return maintenance.prune(env, alias, keep=keep, wait=wait)


def compact(config: Config, alias: str, *, wait: float = 0.0) -> Compaction:
    """Fold the journal into new index snapshots of ``alias`` and delete what no index needs.

    Holds the alias's lock (waits ``wait`` seconds for a running migration); writers and
    searchers go on meanwhile.
    """
    from embedmig.migrate import compaction

    with _opened(config) as env:
        return compaction.compact(env, alias, wait=wait)


def recover(config: Config, alias: str, *, dry_run: bool = False, wait: float = 0.0) -> Recovery:
    """Point ``alias``, recorded at a revision but live on no index, back at the last index it
    served (checked by its sha256), recording that index's revision; ``dry_run`` says what it
    would do and changes nothing."""
    from embedmig.migrate import maintenance

    with _opened(config) as env:
        return maintenance.recover(env, alias, dry_run=dry_run, wait=wait)


def unlock(config: Config, alias: str, *, force: bool = False) -> locks.Holder:
    """Remove the lock of ``alias`` left by a dead run; refuses a live holder unless ``force``."""
    with _opened(config) as env:
        return locks.unlock(env.engine, alias, force=force, lease=env.settings.lock_lease)


def current(config: Config) -> list[AliasState]:
    """Every alias with a revision or a live index: where it is and what it serves."""
    with _opened(config) as env:
        if not env.has_history():
            return []
        with env.engine.connect() as conn:
            versions = catalog.versions(conn)
            records = catalog.indexes(conn)
            adapters = {a.alias: a for a in catalog.adapters(conn, states=[catalog.State.LIVE])}
    live = {r.alias: r for r in records if r.state == catalog.State.LIVE}
    try:
        heads = {rev.alias: rev.revision for rev in env.scripts.heads()}
    except ScriptError as exc:  # what is live is in SQL: show it, and name what is broken
        log.warning("%s; shown without knowing the heads", exc)
        heads = {}
    aliases = sorted(set(versions) | {r.alias for r in records})
    return [
        AliasState(
            alias=alias,
            revision=versions.get(alias),
            live=live.get(alias),
            is_head=alias in versions and heads.get(alias) == versions[alias],
            adapter=adapters.get(alias),
        )
        for alias in aliases
    ]


def probe(config: Config, alias: str | None = None) -> list[ProbeResult]:
    """Re-embed the probe texts with the embedder of each live index (or ``alias``'s) and compare
    them with the vectors recorded when the index was built; changes nothing."""
    from embedmig.monitor import probe as probing

    with _opened(config) as env:
        return probing.probe(env, alias)


def status(config: Config, alias: str | None = None) -> list[AliasReaders]:
    """Every reader of each alias (or of ``alias``), from its heartbeat: the index it serves, since
    when, its queries, and whether it is on the live index, behind it, past
    ``readers.skew_seconds`` behind it (skew), silent or refusing to serve."""
    from embedmig.monitor import status as survey

    with _opened(config) as env:
        return survey.aliases(env, alias)


def verify(config: Config, alias: str | None = None) -> list[Verified]:
    """Search the golden queries (``contracts = FILE``) on what each alias (or ``alias``) serves
    now and judge them as the upgrade did; with the baseline its swap recorded. Changes nothing."""
    from embedmig.monitor import verify as verifying

    with _opened(config) as env:
        if env.all_contracts() is None:
            raise ConfigError(
                "no golden queries: set contracts = FILE (JSONL) in the configuration"
            )
        found = []
        for name in _live_aliases(env, alias, "verify"):
            contracts = env.contracts(name)
            if contracts is None:
                if alias is not None:
                    raise ConfigError(f"no line of the contracts file applies to alias {alias!r}")
                continue
            found.append(verifying.verify(env, name, contracts))
        return found


def watch(
    config: Config, alias: str | None = None, *, on_report: Callable[[Report], None] | None = None
) -> list[Report]:
    """Watch each live alias (or ``alias``) once: the traffic since its swap against the baseline
    kept at the swap, its golden queries, probes and readers; each watch is recorded in history.
    When a ``watch_*`` gate fails, every alias is still watched and recorded, then the first
    failure is raised as GateFailed."""
    from embedmig.migrate.settings import EvalSettings
    from embedmig.monitor import watch as watching

    k = EvalSettings.of(config).k
    reports: list[Report] = []
    failed: list[GateFailed] = []
    with _opened(config) as env:
        for name in _live_aliases(env, alias, "watch"):
            try:
                report = watching.watch(env, name, k)
            except GateFailed as exc:
                failed.append(exc)
                report = exc.report
            reports.append(report)
            if on_report is not None:
                on_report(report)
    if failed:
        raise failed[0]
    return reports


def _live_aliases(env: Environment, alias: str | None, verb: str) -> list[str]:
    """``[alias]`` when it has a live index (else StateError), or every alias that has one."""
    live: list[str] = []
    if env.has_history():
        with env.engine.connect() as conn:
            live = sorted(r.alias for r in catalog.live_indexes(conn))
    if alias is None:
        return live
    if alias not in live:
        raise StateError(f"alias {alias!r} has no live index to {verb}")
    return [alias]


def history(config: Config, alias: str | None = None) -> list[events.HistoryRecord]:
    """Recorded upgrades, downgrades, dry runs and stamps, newest first."""
    with _opened(config) as env:
        if not env.has_history():
            return []
        with env.engine.connect() as conn:
            return events.history(conn, alias)


def heads(config: Config) -> list[Revision]:
    return Environment(config).scripts.heads()


def show(config: Config, rev: str) -> tuple[Revision, list[events.HistoryRecord]]:
    """A revision script and what history recorded for it."""
    with _opened(config) as env:
        found = env.scripts.resolve(rev)
        if len(found) != 1:
            raise ScriptError(f"{rev!r} names {len(found)} revisions; name one")
        if not env.has_history():
            return found[0], []
        with env.engine.connect() as conn:
            return found[0], events.history(conn, found[0].alias, found[0].revision)


def stamp(config: Config, target: str, *, wait: float = 0.0) -> list[tuple[str, str | None]]:
    """Set aliases' recorded revision without running anything; live indexes are untouched.

    ``target`` is a revision (or ``heads``, ``ALIAS@head``), ``base`` or ``ALIAS@base``.
    """
    from embedmig.migrate import maintenance

    with _opened(config, create=True) as env:
        return maintenance.stamp(env, target, wait=wait)


def search(config: Config, alias: str, query: str, k: int = 10) -> list[Hit]:
    """Top-``k`` documents of ``alias``'s live index for ``query``."""
    from embedmig.serve.searcher import Searcher

    with _opened(config) as env, Searcher(env, alias) as searcher:
        return searcher.search(query, k)


def search_file(
    config: Config, alias: str, path: Path, k: int = 10, *, batch: int = 256
) -> Iterator[tuple[Document, list[Hit]]]:
    """Top-``k`` documents for each query of a JSONL file (``{"id": ..., "text": ...}`` a line;
    other fields are the query's ``meta``, logged with it), answered ``batch`` at a time by one
    searcher (``Searcher.search_many``), in the file's order. A bad line is a SourceError
    naming it, raised before its batch is searched."""
    from embedmig.serve.searcher import Searcher
    from embedmig.sources import JsonlSource

    queries = iter(JsonlSource(Path(path), with_meta=True))
    with _opened(config) as env, Searcher(env, alias) as searcher:
        while part := list(itertools.islice(queries, batch)):
            found = searcher.search_many([q.text for q in part], k, metas=[q.meta for q in part])
            yield from zip(part, found, strict=True)


def canary(
    config: Config,
    alias: str,
    *,
    fraction: float | None = None,
    close: bool = False,
    wait: float = 0.0,
) -> Report:
    """The live comparison of ``alias``'s open canary so far, as a report judged by the canary
    gates of its revision. ``fraction`` changes the share of queries searchers mirror; ``close``
    ends the canary without a swap (recorded in history; the shadow stays ``ready``)."""
    if fraction is not None:
        fraction = share(fraction, "--fraction")
    from embedmig.migrate import canary as canaries
    from embedmig.migrate.settings import EvalSettings

    settings = EvalSettings.of(config)
    with _opened(config) as env:
        return canaries.show(env, alias, settings, fraction=fraction, close=close, wait=wait)


def report(config: Config, rev: str, *, event: int | None = None) -> Report:
    """The report recorded for a revision's latest upgrade or dry run (or history event ``event``)."""
    if event is None and not rev.strip():
        raise ScriptError("name a revision (or a history event with --event)")
    with _opened(config) as env:
        if not env.has_history():
            raise StateError("no upgrade or dry run was recorded yet (no history database)")
        with env.engine.connect() as conn:
            chosen = events.with_report(conn, rev, event)
    assert chosen.metrics is not None
    from embedmig.metrics.report import Report

    try:
        return Report.from_dict(chosen.metrics)
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError(
            f"history event #{chosen.id} holds a report this version cannot read: {exc}"
        ) from None


def check(
    config: Config,
    target: str = "heads",
    *,
    sample: int | float = DEFAULT_SAMPLE,
    on_report: Callable[[Report], None] | None = None,
) -> list[Report]:
    """A dry run of every pending revision up to ``target``: for CI, fails on a failed gate."""
    return upgrade(config, target, dry_run=True, sample=sample, on_report=on_report)


def check_writable(path: Path) -> None:
    """Refuse, before anything changes, a report path that could not be written at the end."""
    from embedmig.store import files

    reason = files.unwritable(path)
    if reason is not None:
        raise ConfigError(f"cannot write report {path}: {reason}")


def write_report(report: Report, path: Path) -> None:
    """Write ``report`` as JSON (``.json``), self-contained HTML (``.html``) or text."""
    from embedmig.render import format_of, render

    text = render(report, format_of(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write report {path}: {exc.strerror}") from None
