"""The wheel ships what `embedmig init` and the history schema need, and works outside the repo."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parents[1]
PIP_WHEEL = (sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q")


def test_the_wheel_runs_embedmig_init_in_a_fresh_venv(tmp_path: Path) -> None:
    # Built from a copy of the tracked files: a build/ folder of earlier builds would otherwise
    # put stale modules into the wheel.
    source = tmp_path / "source"
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    for name in tracked:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [*PIP_WHEEL, "-w", str(tmp_path / "dist"), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("embedmig-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in (
        "embedmig/migrations_template/env.py",
        "embedmig/migrations_template/script.py.mako",
        "embedmig/migrations_template/embedmig.ini.tmpl",
        "embedmig/migrations_template/versions/README",
        "embedmig/history/migrations/env.py",
        "embedmig/py.typed",
    ):
        assert shipped in names, shipped

    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )
    # The dependencies come from this environment's site-packages, not from an index; a plain
    # path entry does not run that folder's .pth files, so the editable embedmig stays out.
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    project = tmp_path / "project"
    project.mkdir()
    where = subprocess.run(
        [str(python), "-c", "import embedmig, pathlib; print(pathlib.Path(embedmig.__file__))"],
        cwd=project,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert where.startswith(str(site)), where  # the wheel's embedmig, not the repository's
    init = subprocess.run(
        [str(venv / "bin" / "embedmig"), "init", "migrations"],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
    )
    assert init.returncode == 0, init.stderr
    assert sorted(p.name for p in (project / "migrations").iterdir()) == [
        "README",
        "env.py",
        "script.py.mako",
        "versions",
    ]
    assert "script_location = migrations" in (project / "embedmig.ini").read_text()
    current = subprocess.run(
        [str(venv / "bin" / "embedmig"), "current"], cwd=project, capture_output=True, text=True
    )
    assert current.returncode == 0 and "no alias has been migrated yet" in current.stdout


def test_render_stays_callable_when_a_render_submodule_was_imported_first() -> None:
    # A fresh interpreter: the order of imports is the point.
    code = (
        "import embedmig.render.text\n"
        "from embedmig import Report, render\n"
        "report = Report(alias='docs', revision='r1', old_model=None, new_model='m',\n"
        "    kind='upgrade', corpus_size=1, query_source='corpus', n_queries=1, k=1,\n"
        "    metrics={}, distributions={})\n"
        "print(render(report, 'json')[:1], render(report).splitlines()[0])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("{ NO GATES docs @ r1 (upgrade)")


def test_every_package_of_the_tree_is_in_the_wheel() -> None:
    """setuptools lists packages by hand here: a new folder left out of the list would be
    missing from every install but an editable one."""
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    folders = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "embedmig").rglob("__init__.py")
        if "migrations" not in init.parent.relative_to(ROOT / "embedmig").parts
    }
    assert folders <= listed, sorted(folders - listed)
