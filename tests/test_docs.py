"""The README and the docs say what the code does: each promise they make is checked here."""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
from pathlib import Path

import click
import numpy as np
import pytest

import embedmig
from embedmig import cli, gates
from embedmig.config import DEFAULTS, KNOWN
from embedmig.metrics import names as metric_names
from embedmig.metrics import report
from embedmig.metrics.relevance import Judgements
from tests.support import with_judged_queries

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def section(title: str, page: Path = README) -> str:
    text = page.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_the_readme_is_an_entry_page() -> None:
    """The manual lives in docs/; the README says what embedmig is, how to start, and where to
    read on."""
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)\)", text))
    assert linked == {page.name for page in DOCS.glob("*.md")}


def table_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not re.match(r"^\|[-| ]+\|$", line):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            rows.append(cells)
    return rows[1:]  # without the header


def test_the_commands_table_lists_every_cli_command_with_its_options() -> None:
    documented: dict[str, set[str]] = {}
    for first, _ in table_rows(section("Commands")):
        synopsis = first.strip("`").replace("\\|", "|")
        name = synopsis.split()[0]
        documented[name] = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", synopsis))
    commands = cli.cli.commands
    assert sorted(documented) == sorted(commands)
    for name, command in commands.items():
        options = [p for p in command.params if isinstance(p, click.Option)]
        for option in options:
            if option.name == "help":
                continue
            assert documented[name] & set(option.opts), f"{name}: {option.opts} not documented"
        known = {opt for option in options for opt in option.opts}
        assert documented[name] <= known, f"{name}: documents {documented[name] - known}"


def test_every_command_is_a_function_of_embedmig_command() -> None:
    from embedmig import command

    for name in cli.cli.commands:
        assert callable(getattr(command, name)), name


def test_the_configuration_table_matches_the_defaults() -> None:
    documented: dict[str, str | None] = {}
    for first, second, _ in table_rows((DOCS / "configuration.md").read_text()):
        keys = re.findall(r"`([a-z_.]+)`", first)
        parts = [p.strip() for p in re.split(r" / |, ", second)]
        assert len(parts) == len(keys), first
        for key, default in zip(keys, parts, strict=True):
            documented[key] = default.strip("`") if default.startswith("`") else None
    assert sorted(documented) == sorted(KNOWN)
    for key, default in documented.items():
        if key in DEFAULTS:
            assert default == DEFAULTS[key], key
        else:
            assert default in (None, "false"), key


def computed_metric_names() -> set[str]:
    rng = np.random.default_rng(0)

    def results(n: int) -> report.Results:
        # query i finds its judged document i first, then 99 others
        ids = np.stack(
            [np.r_[i, rng.permutation(np.setdiff1d(np.arange(300), [i]))[:99]] for i in range(n)]
        ).astype(np.int64)
        scores = -np.sort(-rng.random((n, 100)), axis=1).astype(np.float32)
        return report.Results(ids, scores)

    judged = Judgements(
        np.arange(20, dtype=np.int64), np.arange(20, dtype=np.int64), np.ones(20, dtype=np.int64)
    )
    pairs = rng.random(50).astype(np.float32)
    done = report.compute(
        results(20),
        results(20),
        candidates=299,
        settings=report.Settings(k=10, thresholds=(1.0, -0.2)),
        judged=judged,
        pairs_old=pairs,
        pairs_new=pairs,
    )
    return set(done.metrics)


def test_gates_metrics_are_exactly_what_the_report_fills() -> None:
    filled = computed_metric_names()
    thresholds = {name for name in filled if name.startswith("new_threshold_for_")}
    # coverage_* come from the backfill, canary_* from live traffic (next spec), adapter_* from an
    # adapter's evaluation (tests/test_adapter.py), contract_* from the golden queries
    # (tests/test_contracts.py), watch_* from a watch (tests/test_watch.py), not from compute()
    canary = {name for name in metric_names.METRICS if name.startswith(metric_names.CANARY_PREFIX)}
    others = (
        set(metric_names.COVERAGE)
        | set(metric_names.ADAPTER)
        | set(metric_names.CONTRACT)
        | set(metric_names.WATCH)
    )
    others |= set(metric_names.SEGMENT)  # with eval.segment_by (tests/test_segments.py)
    others |= canary
    assert filled - thresholds == set(metric_names.METRICS) - others
    for name in thresholds:
        assert metric_names.is_metric(name), name
        gates.Gates(**{f"min_{name}": 0.0})  # type: ignore[arg-type]


def test_a_dry_run_forecasts_exactly_the_metrics_the_upgrade_measures(
    config: embedmig.Config, project: Path
) -> None:
    config = with_judged_queries(project, 40, words=12)
    embedmig.command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    embedmig.command.revision(config, "second", alias="docs", new="models/near", rev_id="r2")
    embedmig.command.upgrade(config, "r1")
    (forecast,) = embedmig.command.upgrade(config, "head", dry_run=True, sample=150)
    (measured,) = embedmig.command.upgrade(config, "head", force=True)

    def names(found: report.Report) -> set[str]:
        return {n for n in found.metrics if not n.endswith(("_ci_low", "_ci_high"))}

    assert (forecast.kind, measured.kind) == ("dry-run", "upgrade")
    assert names(forecast) == names(measured)
    assert "recall_ratio" in names(measured) and "overlap_at_10_p5" in names(measured)
    # Every forecast figure carries its interval, but the exact ones: coverage is counted on the
    # whole corpus, and random document pairs need no extrapolation from a uniform sample.
    exact = ("coverage_", "pair_score_")
    assert {f"{n}_ci_low" for n in names(forecast) if not n.startswith(exact)} <= set(
        forecast.metrics
    )
    assert set(forecast.distributions["qrels"]) == set(measured.distributions["qrels"])


def test_canary_metrics_are_exactly_what_a_canary_fills() -> None:
    from embedmig.migrate import canary

    measured = canary.gateable(dict.fromkeys(computed_metric_names(), 0.5), 20, 0)
    assert set(measured) == {name for name in metric_names.METRICS if name.startswith("canary_")}
    assert all(value is not None for value in measured.values())


@pytest.mark.parametrize("threshold", [1.0, -0.2, 0.0, 0.62, 1e-5, -1.0])
def test_every_threshold_the_report_can_produce_is_a_valid_gate_name(threshold: float) -> None:
    name = metric_names.threshold_metric(threshold)
    assert metric_names.is_metric(name)
    gates.Gates(**{f"max_{name}": 0.5})  # type: ignore[arg-type]


def python_api_names() -> list[str]:
    text = (DOCS / "python-api.md").read_text()
    block = re.search(r"Public names \(`embedmig\.__all__`\):\n\n(.*?)\n\n", text, re.S)
    assert block, "the Python API section lists the public names"
    return sorted(re.findall(r"`([A-Za-z_]+)`", block.group(1)))


def test_the_public_names_are_the_documented_ones() -> None:
    assert python_api_names() == sorted(embedmig.__all__)
    for name in embedmig.__all__:
        assert getattr(embedmig, name) is not None


def test_every_name_the_readme_and_the_docs_import_from_embedmig_exists() -> None:
    imported: set[str] = set()
    pages = "".join(page.read_text() for page in (README, *DOCS.glob("*.md")))
    for block in re.findall(r"```python\n(.*?)```", pages, re.S):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and node.module == "embedmig":
                imported |= {alias.name for alias in node.names}
    assert imported
    for name in imported:
        assert name in embedmig.__all__, name
        getattr(embedmig, name)


def test_every_error_class_says_when_it_is_raised() -> None:
    from embedmig import errors

    classes = [
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, errors.EmbedmigError)
    ]
    assert len(classes) == 15
    for cls in classes:
        assert cls.__doc__ and len(cls.__doc__) > 40, cls
        assert cls.__name__ in errors.__doc__, cls  # drawn in the module's tree
        assert cls is errors.EmbedmigError or cls.__name__ in embedmig.__all__


def test_the_error_tree_is_drawn_once_and_names_real_attributes() -> None:
    """The docs' tree is the module docstring's, and each ``.attribute`` it names is one that an
    instance of the class has."""
    from embedmig import errors

    tree = re.search(r"::\n\n(.*?)\n$", errors.__doc__ or "", re.S)
    assert tree
    drawn = "\n".join(line.removeprefix("    ") for line in tree.group(1).rstrip().splitlines())
    assert f"```\n{drawn}\n```" in (DOCS / "python-api.md").read_text()
    for line in drawn.splitlines():
        name = re.search(r"\w+", line)
        assert name, line
        cls = getattr(errors, name.group(0))
        source = ast.parse(textwrap.dedent(inspect.getsource(cls)))
        has = {
            target.attr
            for node in ast.walk(source)
            for target in (node.targets if isinstance(node, ast.Assign) else [])
            if isinstance(target, ast.Attribute)
        } | {n.name for n in ast.walk(source) if isinstance(n, ast.FunctionDef)}
        for attribute in re.findall(r"\.(\w+)", line):
            assert attribute in has, f"{cls.__name__} has no .{attribute}"


def test_the_schema_head_embedmig_opens_without_alembic_is_alembics_head() -> None:
    from alembic.script import ScriptDirectory

    from embedmig.history import db

    assert ScriptDirectory(str(db._MIGRATIONS)).get_heads() == [db.SCHEMA_HEAD]


def test_every_relative_link_of_the_readme_and_the_docs_leads_to_a_file() -> None:
    broken = []
    for page in (README, ROOT / "benchmarks" / "README.md", *DOCS.glob("*.md")):
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            remote = target.startswith(("http://", "https://"))
            if not remote and not (page.parent / target).exists():
                broken.append(f"{page.name}: {target}")
    assert broken == []


def test_the_architecture_page_names_every_module_and_nothing_else() -> None:
    """Its layout block names each file of the package, or each folder with every module of it."""
    text = (DOCS / "architecture.md").read_text()
    layout = re.search(r"## Layout\n\n```\n(.*?)```", text, re.S)
    assert layout
    named = set(re.findall(r"^(embedmig/\S+)", layout.group(1), re.M))
    package = ROOT / "embedmig"
    for path in package.rglob("*.py"):
        relative = path.relative_to(ROOT).as_posix()
        if "/history/migrations/" in relative or (
            path.name == "__init__.py" and path.parent != package
        ):
            continue
        folder = relative.rsplit("/", 1)[0] + "/"
        if relative in named:
            continue
        assert folder in named, f"{relative} is not in docs/architecture.md"
        described = layout.group(1).split(folder, 1)[1].split("\nembedmig/", 1)[0]
        if folder.endswith(("history/", "render/")):
            continue  # described as a whole
        assert path.stem in described, f"{relative} is not described under {folder}"
    for name in named:
        assert (ROOT / name).exists(), f"docs/architecture.md names {name}, which does not exist"
