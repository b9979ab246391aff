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


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("serve", "embedmig.migrate"),  # a service that only serves loads nothing of migrating
        ("store", "embedmig.migrate"),
        ("store", "embedmig.serve"),
        ("metrics", "embedmig.migrate"),
        ("metrics", "embedmig.serve"),
        ("metrics", "embedmig.store"),  # kernels and figures are pure functions on arrays
        ("history", "embedmig.migrate"),
        ("history", "embedmig.serve"),
        ("", "embedmig.migrate"),  # environment.py: shared by both halves
        ("", "embedmig.serve"),
    ],
)
def test_a_lower_part_never_imports_a_higher_one(folder: str, forbidden: str) -> None:
    offenders = {
        str(path.relative_to(PACKAGE)): reaches(path, forbidden) for path in modules_under(folder)
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_migrate_and_serve_are_the_two_halves_of_the_runtime() -> None:
    assert {p.stem for p in (PACKAGE / "serve").glob("*.py")} >= {
        "searcher",
        "writer",
        "mirror",
        "view",
        "heartbeat",
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
