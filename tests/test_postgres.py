"""The same guarantees with the history on a real PostgreSQL server (skips without one)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from embedmig import Config, GateFailed, Locked, command, open_searcher
from tests.support import CrashRunner, cli, edit, snapshot

QUERY = "glioblastoma stem cells tumor growth"


def revisions(config: Config, second: str = "models/near") -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.revision(config, "second", alias="docs", new=second, rev_id="r2")


def test_full_cycle_on_postgres(postgres_config: Config) -> None:
    config = postgres_config
    revisions(config)
    command.upgrade(config, "r1")
    searcher = open_searcher(config, "docs")
    first = searcher.search(QUERY, k=5)
    before = snapshot(config, with_history=False)
    command.upgrade(config, "head", dry_run=True, sample=100)
    assert snapshot(config, with_history=False) == before
    command.upgrade(config, "head")
    assert searcher.index_record.revision == "r2"
    command.downgrade(config, "-1")
    assert searcher.search(QUERY, k=5) == first
    searcher.close()
    assert [e.action for e in command.history(config)] == [
        "downgrade",
        "upgrade",
        "dry-run",
        "upgrade",
    ]


def test_failing_gate_leaves_alias_unchanged_on_postgres(postgres_config: Config) -> None:
    config = postgres_config
    revisions(config, second="models/far")
    command.upgrade(config, "r1")
    path = next((config.script_location / "versions").glob("r2_*.py"))
    edit(path, "min_overlap_at_10=0.5", "min_overlap_at_10=0.99")
    with pytest.raises(GateFailed):
        command.upgrade(config, "head")
    assert command.current(config)[0].revision == "r1"


@pytest.mark.process
def test_locks_on_postgres(postgres_config: Config) -> None:
    config = postgres_config
    revisions(config)
    command.upgrade(config, "r1")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        from tests.test_locks import plant_lock

        plant_lock(config, "docs", sleeper.pid)
        with pytest.raises(Locked, match=f"pid {sleeper.pid}"):
            command.upgrade(config, "head")
    finally:
        sleeper.kill()
        sleeper.wait()
    command.upgrade(config, "head")  # the dead holder's lock is taken over
    assert command.current(config)[0].revision == "r2"


@pytest.mark.process
@pytest.mark.parametrize("point", ["before-checkpoint", "after-index-rename", "before-swap-commit"])
def test_killed_upgrade_recovers_on_postgres(
    postgres_config: Config,
    project: Path,
    models: dict[str, Path],
    point: str,
    crash_runner: CrashRunner,
) -> None:
    from tests.test_crashes import assert_correct_final_state, kill_upgrade_at, prepared

    config = prepared(project)
    assert config.url.startswith("postgresql")
    kill_upgrade_at(crash_runner, project, point)
    assert command.current(config)[0].revision == "r1"
    command.upgrade(config, "head")
    assert_correct_final_state(config, models)


def test_the_database_password_comes_from_the_environment_and_is_stored_nowhere(
    postgres_config: Config, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import uuid

    import sqlalchemy as sa

    from tests.support import postgres_admin_url

    url = sa.make_url(postgres_config.url)
    # A role of the test's own, with a password found nowhere else, owning the database.
    role, secret = f"embedmig_{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex}"
    admin = sa.create_engine(str(postgres_admin_url()), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE ROLE {role} LOGIN PASSWORD '{secret}'"))
        conn.execute(sa.text(f'ALTER DATABASE "{url.database}" OWNER TO {role}'))
    admin.dispose()
    try:
        _password_from_the_environment(postgres_config, role, secret, monkeypatch, capsys)
    finally:
        # What the role owns goes back to the admin, so the database and the role can go.
        on_test_db = sa.make_url(str(postgres_admin_url())).set(database=url.database)
        admin = sa.create_engine(on_test_db, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f"REASSIGN OWNED BY {role} TO CURRENT_USER"))
            conn.execute(sa.text(f"DROP ROLE {role}"))
        admin.dispose()


def _password_from_the_environment(
    postgres_config: Config,
    role: str,
    secret: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import sqlalchemy as sa

    url = sa.make_url(postgres_config.url)
    ini = postgres_config.path
    assert ini is not None
    edit(
        ini,
        url.render_as_string(hide_password=False),
        url.set(username=role, password="PASSWORD").render_as_string(hide_password=False),
    )
    edit(ini, ":PASSWORD@", ":${EMBEDMIG_TEST_DB_PASSWORD}@")
    config = Config(ini)
    monkeypatch.delenv("EMBEDMIG_TEST_DB_PASSWORD", raising=False)
    code, _, err = cli(capsys, "-q", "-c", str(ini), "current")
    assert code == 1 and err.strip() == (
        "embedmig: error: option 'sqlalchemy.url' reads ${EMBEDMIG_TEST_DB_PASSWORD} from the "
        "environment, and EMBEDMIG_TEST_DB_PASSWORD is not set"
    )
    monkeypatch.setenv("EMBEDMIG_TEST_DB_PASSWORD", secret)
    revisions(config)
    (report,) = command.upgrade(config, "r1")
    assert command.current(config)[0].revision == "r1"
    assert secret not in ini.read_text() and secret not in report.to_json()
    assert secret not in repr(snapshot(config))  # history, catalog, indexes
    monkeypatch.setenv("EMBEDMIG_TEST_DB_PASSWORD", "wrong-" + secret)
    code, _, err = cli(capsys, "-q", "-c", str(ini), "current")
    assert code == 1 and err.startswith("embedmig: error: cannot open history database")
    assert secret not in err and "***" in err
