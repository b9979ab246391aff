"""The house: which part of embedmig may import which, read from every import statement (also
those inside functions, which load lazily but load all the same)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "embedmig"


def imports_of(path: Path) -> set[str]:
    """Every embedmig module a file imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("embedmig")}


def modules_under(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py")) if folder else [PACKAGE / "environment.py"]


def reaches(path: Path, forbidden: str) -> list[str]:
    return sorted(
        name for name in imports_of(path) if name == forbidden or name.startswith(forbidden + ".")
    )


# What each folder may import besides itself: the rules of the house, one row per folder. A part
# lower in the table never reaches one above it; cli/ and command.py, at the top, import any.
_SERVING = {"config", "embedders", "environment", "errors", "history", "names", "store"}
MAY_IMPORT = {
    "history": {"errors"},  # tables and their migrations
    "embedders": {"config", "errors", "history", "names"},  # history: only its IN-list bound
    "store": {"config", "errors", "history", "names"},  # SQL and files: no numbers, no models
    "metrics": {"contracts", "errors", "gates"},  # pure functions on arrays (gates: verdicts)
    "render": {"errors", "gates", "metrics"},  # a report in, text or HTML out
    "serve": _SERVING,  # the request path: nothing of migrating or of the checks after it
    "monitor": _SERVING | {"contracts", "gates", "metrics", "serve"},  # reads what serve serves
    # Retrievers for RAG frameworks: searchers, as applications hold them.
    "integrations": {"config", "errors", "serve"},
    # Building and judging a new index; it keeps the watch's baseline at the swap (monitor).
    "migrate": _SERVING
    | {"contracts", "gates", "metrics", "migrate", "monitor", "script", "serve", "sources"},
}
TOP = {"cli", "command"}
# The CLI parses, calls command and prints: the top of the house, it may reach any part.
MAY_IMPORT["cli"] = {p.stem for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()}


def parts_imported(path: Path) -> set[str]:
    return {name.split(".")[1] for name in imports_of(path) if name.count(".") >= 1}


@pytest.mark.parametrize("folder", sorted(MAY_IMPORT))
def test_each_folder_imports_only_what_the_house_allows_it(folder: str) -> None:
    allowed = MAY_IMPORT[folder] | {folder}
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(parts_imported(path) - allowed)
        for path in modules_under(folder)
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_every_folder_has_its_rules() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders - {"migrations_template"} == set(MAY_IMPORT)


def test_nothing_below_the_commands_imports_them() -> None:
    below = [
        path
        for path in PACKAGE.rglob("*.py")
        if path.relative_to(PACKAGE).parts[0] not in {"cli", "command.py", "__init__.py"}
    ]
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(parts_imported(path) & TOP) for path in below
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_environment_is_shared_by_both_halves_and_imports_neither() -> None:
    assert not parts_imported(PACKAGE / "environment.py") & {"migrate", "serve", "monitor"}


def test_migrate_serve_and_monitor_are_the_three_rooms_of_the_runtime() -> None:
    assert {p.stem for p in (PACKAGE / "serve").glob("*.py")} >= {
        "searcher",
        "writer",
        "mirror",
        "view",
        "heartbeat",
    }
    assert {p.stem for p in (PACKAGE / "monitor").glob("*.py")} >= {
        "verify",
        "watch",
        "status",
        "probe",
    }
    assert {p.stem for p in (PACKAGE / "migrate").glob("*.py")} >= {
        "runner",
        "context",
        "backfill",
        "evaluate",
        "forecast",
        "canary",
        "executors",
    }
    assert not (PACKAGE / "runtime").exists()


def test_the_import_reader_sees_lazy_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from embedmig.migrate import runner\n")
    assert reaches(sample, "embedmig.migrate") == ["embedmig.migrate", "embedmig.migrate.runner"]
