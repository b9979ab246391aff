"""Indexes in PostgreSQL with pgvector: tables, the alias a view, swaps in one transaction.

Against a real PostgreSQL 18 with pgvector (tests/postgres_server.py); skips without one, fails
under CI.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import psycopg
import pytest

from embedmig import Config, StoreError, command, open_searcher, open_writer
from embedmig.environment import Environment
from embedmig.store import catalog, pgsearch, pgtables
from tests.postgres_server import connect
from tests.support import (
    CrashRunner,
    cli,
    corpus_rows,
    count_encodes,
    edit,
    embedmig,
    encode,
    indexed,
    one_line_error,
    snapshot,
    with_options,
)

QUERY = "glioblastoma stem cells tumor growth"
SPEC = "halfvec,hnsw,m=8"


@pytest.fixture
def pg(pgvector_config: Config) -> Config:
    return pgvector_config


@pytest.fixture
def reader(pg: Config) -> Iterator[psycopg.Connection]:
    """A plain psycopg connection, as any SQL client of the alias holds one."""
    conn = connect(pg.url)
    yield conn
    conn.close()


def revisions(config: Config, second: str = "models/near", **pgvector_index: str) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.revision(config, "second", alias="docs", new=second, rev_id="r2", **pgvector_index)


def one(reader: psycopg.Connection, query: str) -> Any:
    row = reader.execute(query).fetchone()
    assert row is not None
    return row[0]


def literal(vector: np.ndarray) -> str:
    return "[" + ",".join(str(float(x)) for x in vector) + "]"


def read_alias(
    reader: psycopg.Connection, model: Path, fingerprint: str | None = None
) -> list[tuple[str]]:
    """The documented reader's query: the alias's view, checked against the fingerprint the
    reader embedded with (None: read it from the view first)."""
    if fingerprint is None:
        fingerprint = one(reader, "SELECT fingerprint FROM search.docs LIMIT 1")
    vector = literal(encode(model, [QUERY])[0])
    return reader.execute(
        "SELECT key FROM search.docs WHERE fingerprint = %s "
        "ORDER BY embedding <#> %s::vector LIMIT 5",
        (fingerprint, vector),
    ).fetchall()


def test_full_cycle_through_the_cli_with_an_sql_reader(
    pg: Config,
    reader: psycopg.Connection,
    models: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    def run(line: str) -> None:
        code, _, err = cli(capsys, "-c", str(pg.root / "embedmig.ini"), *shlex.split(line))
        assert code == 0, err

    run("revision -m first --alias docs --new models/a --rev-id r1")
    run("revision -m second --alias docs --new models/near --rev-id r2 --pgvector-index " + SPEC)
    written = next((pg.script_location / "versions").glob("r2_*.py")).read_text()
    assert f"pgvector_index = {SPEC!r}" in written
    run("upgrade r1")
    first = read_alias(reader, models["a"])
    assert len(first) == 5
    assert one(reader, "SELECT DISTINCT revision FROM search.docs") == "r1"
    run("upgrade head")
    assert reader.execute("SELECT DISTINCT revision FROM search.docs").fetchall() == [("r2",)]
    model = one(reader, "SELECT obj_description('search.docs'::regclass)")
    assert "near" in model  # the view names the model to embed queries with
    assert len(read_alias(reader, models["near"])) == 5
    run("downgrade -1")
    assert read_alias(reader, models["a"]) == first
    assert [e.action for e in command.history(pg)] == ["downgrade", "upgrade", "upgrade"]


def test_searcher_answers_from_the_table_as_the_view_does(
    pg: Config, reader: psycopg.Connection, models: dict[str, Path]
) -> None:
    revisions(pg)
    command.upgrade(pg, "r1")
    with open_searcher(pg, "docs") as searcher:
        hits = searcher.search(QUERY, k=5)
        assert [h.key for h in hits] == [row[0] for row in read_alias(reader, models["a"])]
        assert hits[0].snippet and hits[0].revision == "r1"
        batch = searcher.search_many([QUERY, "heart failure"], k=3)
        assert [h.key for h in batch[0]] == [h.key for h in hits[:3]]
        assert len(searcher.search(QUERY, k=1000)) == 300
        with open_writer(pg, "docs") as writer:  # more rows than the table held when opened
            writer.upsert("new-1", "Octopus arms process touch without the central brain")
        assert len(searcher.search(QUERY, k=1000)) == 301


def test_every_acknowledged_write_is_served_before_during_and_after_the_migration(
    pg: Config, reader: psycopg.Connection, models: dict[str, Path]
) -> None:
    revisions(pg)
    command.upgrade(pg, "r1")
    before = "Zebrafish regenerate heart muscle after cryoinjury through cardiomyocyte division"
    after = "Tardigrades survive desiccation by vitrifying their cytoplasm with disordered proteins"
    with open_writer(pg, "docs") as writer:
        writer.upsert("before-1", before)
        writer.delete("33370")
    with open_searcher(pg, "docs") as searcher:
        assert searcher.search(before, k=1)[0].key == "before-1"
        command.upgrade(pg, "head")
        assert searcher.index_record.revision == "r2"
        assert searcher.search(before, k=1)[0].key == "before-1"
        with open_writer(pg, "docs") as writer:
            writer.upsert("after-1", after)
        assert searcher.search(after, k=1)[0].key == "after-1"
        keys = {row[0] for row in reader.execute("SELECT key FROM search.docs")}
        assert {"before-1", "after-1"} <= keys and "33370" not in keys
        command.downgrade(pg, "-1")  # the holdover kept the r1 table current: nothing lost
        assert searcher.index_record.revision == "r1"
        assert searcher.search(after, k=1)[0].key == "after-1"
    served = indexed(pg, "docs")
    np.testing.assert_allclose(served["after-1"], encode(models["a"], [after])[0], atol=1e-5)
    assert "33370" not in served and len(served) == 301


def test_a_rollback_past_the_holdover_brings_the_table_up_to_date(
    pg: Config, reader: psycopg.Connection, models: dict[str, Path]
) -> None:
    config = with_options(pg, writer__holdover=0)
    revisions(config)
    command.upgrade(config, "r1")
    command.upgrade(config, "head")
    text = "Axolotls regrow limbs from a blastema of dedifferentiated cells"
    with open_writer(config, "docs") as writer:  # past the holdover: r2's table alone
        writer.upsert("late-1", text)
    command.downgrade(config, "-1")
    (row,) = reader.execute("SELECT embedding::text FROM search.docs WHERE key = 'late-1'")
    stored = np.array(row[0][1:-1].split(","), dtype=np.float32)
    np.testing.assert_allclose(stored, encode(models["a"], [text])[0], atol=1e-5)


def test_a_reader_of_the_old_model_gets_no_rows_after_the_swap(
    pg: Config, reader: psycopg.Connection, models: dict[str, Path]
) -> None:
    revisions(pg)
    command.upgrade(pg, "r1")
    fingerprint = one(reader, "SELECT fingerprint FROM search.docs LIMIT 1")
    assert len(read_alias(reader, models["a"], fingerprint)) == 5
    command.upgrade(pg, "head")
    assert read_alias(reader, models["a"], fingerprint) == []


def test_a_dimension_change_swaps_the_view_and_an_old_query_is_refused(
    pg: Config, reader: psycopg.Connection, models: dict[str, Path]
) -> None:
    revisions(
        pg,
        second="models/far",
    )
    edit(
        next((pg.script_location / "versions").glob("r2_*.py")),
        "min_overlap_at_10=0.5",
        "min_overlap_at_10=0.0",
    )
    command.upgrade(pg, "r1")
    command.upgrade(pg, "head")
    old_query = literal(encode(models["a"], [QUERY])[0])  # 32 dimensions
    with pytest.raises(psycopg.errors.DataException, match="different vector dimensions"):
        reader.execute(
            "SELECT key FROM search.docs ORDER BY embedding <#> %s::vector LIMIT 5", (old_query,)
        )
    assert len(read_alias(reader, models["far"])) == 5  # 24 dimensions
    command.downgrade(pg, "-1")
    assert len(read_alias(reader, models["a"])) == 5


def test_a_swap_waits_for_a_long_reader_then_reports_who_holds_the_lock(
    pg: Config, reader: psycopg.Connection
) -> None:
    config = with_options(pg, pgvector__lock_timeout_ms=100, pgvector__lock_attempts=2)
    revisions(config)
    command.upgrade(config, "r1")
    reader.autocommit = False
    reader.execute("SELECT count(*) FROM search.docs").fetchone()  # holds the view until commit
    pid = reader.info.backend_pid
    before = snapshot(config, with_history=False)
    with pytest.raises(StoreError, match=f"pid {pid}"):
        command.upgrade(config, "head")
    after = snapshot(config, with_history=False)
    view = [cast(dict[str, object], state["pgvector"])["search.docs"] for state in (before, after)]
    assert view[0] == view[1]  # the view as it was: the shadow is kept, for inspection
    assert command.current(config)[0].revision == "r1"
    reader.rollback()
    command.upgrade(config, "head")  # the shadow kept from the failed swap
    assert command.current(config)[0].revision == "r2"


@pytest.mark.process
def test_killed_load_resumes_with_no_row_twice_and_no_text_embedded_twice(
    pg: Config, crash_runner: CrashRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_crashes import kill_upgrade_at

    config = with_options(pg, checkpoint_every=50)
    revisions(config)
    kill_upgrade_at(crash_runner, config.root, "before-checkpoint", "upgrade", "r1")
    encoded = count_encodes(monkeypatch)
    command.upgrade(config, "r1")
    assert sum(encoded) == 200  # the two checkpointed batches were not embedded again
    (state,) = command.current(config)
    assert state.live is not None and state.live.ntotal == 300
    env = Environment(config)
    with env.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            f"SELECT count(*), count(DISTINCT key) FROM {pgtables.table_of(state.live).qualified}"
        ).one()
    env.dispose()
    assert tuple(rows) == (300, 300)


@pytest.mark.process
@pytest.mark.parametrize(
    "point", ["during-ann-build", "before-ready-commit", "during-swap", "before-swap-commit"]
)
def test_an_upgrade_killed_anywhere_ends_correct_after_a_rerun(
    pg: Config, crash_runner: CrashRunner, models: dict[str, Path], point: str
) -> None:
    from tests.test_crashes import kill_upgrade_at

    revisions(pg)
    command.upgrade(pg, "r1")
    kill_upgrade_at(crash_runner, pg.root, point)
    assert command.current(pg)[0].revision == "r1"
    command.upgrade(pg, "head")
    (state,) = command.current(pg)
    assert state.revision == "r2" and state.live is not None and state.live.ntotal == 300
    served = indexed(pg, "docs")
    texts = {row["id"]: row["text"] for row in corpus_rows(300)}
    keys = ["33370", "8764879"]
    np.testing.assert_allclose(
        np.stack([served[k] for k in keys]),
        encode(models["near"], [texts[k] for k in keys]),
        atol=1e-5,
    )
    env = Environment(pg)
    with env.engine.connect() as conn:
        tables = {r.path for r in catalog.indexes(conn, "docs") if r.state in ("live", "retired")}
        found = (
            conn.exec_driver_sql(
                "SELECT 'embedmig.' || tablename FROM pg_tables WHERE schemaname = 'embedmig'"
            )
            .scalars()
            .all()
        )
    env.dispose()
    assert set(found) == tables and len(tables) == 2  # no table of the killed run is left


def swapped_once(config: Config) -> catalog.IndexRecord:
    """`docs` live on r2, the index r1 built retired: its record."""
    revisions(config)
    command.upgrade(config, "r1")
    command.upgrade(config, "head")
    env = Environment(config)
    with env.engine.connect() as conn:
        (retired,) = [r for r in catalog.indexes(conn, "docs") if r.state == "retired"]
    env.dispose()
    return retired


def test_an_invalid_or_unusable_ann_index_is_refused(pg: Config) -> None:
    retired = swapped_once(pg)
    env = Environment(pg)
    table = pgtables.table_of(retired)
    with env.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE pg_index SET indisvalid = false WHERE indexrelid = %s::regclass",
            (f'embedmig."{table.name}_ann"',),
        )
    before = snapshot(pg)
    with pytest.raises(StoreError, match="not valid"):
        command.downgrade(pg, "-1")
    assert snapshot(pg) == before
    with env.engine.begin() as conn:
        conn.exec_driver_sql(f'DROP INDEX embedmig."{table.name}_ann"')
        conn.exec_driver_sql(  # an operator class the readers' <#> cannot use
            f'CREATE INDEX "{table.name}_ann" ON {table.qualified} USING hnsw (embedding vector_l2_ops)'
        )
        with pytest.raises(StoreError, match="does not use"):
            pgsearch.check_index(conn, table)
    env.dispose()


def test_prune_drops_the_tables_of_dropped_indexes(pg: Config) -> None:
    retired = swapped_once(pg)
    env = Environment(pg)
    with env.engine.connect() as conn:
        assert retired.path is not None and pgtables.exists(conn, retired.path)
    command.prune(pg, "docs", keep=0)
    with env.engine.connect() as conn:
        assert not pgtables.exists(conn, retired.path)
    env.dispose()


def test_pgvector_on_sqlite_is_one_line_naming_the_extension(config: Config) -> None:
    sqlite = with_options(config, index_store="pgvector")
    revisions(sqlite)
    one_line_error(sqlite, "upgrade", "head", match="CREATE EXTENSION vector")


def test_pgvector_without_the_extension_is_one_line_naming_it(postgres_config: Config) -> None:
    bare = with_options(postgres_config, index_store="pgvector")
    revisions(bare)
    one_line_error(bare, "upgrade", "head", match="CREATE EXTENSION vector")


def test_a_bad_pgvector_index_is_one_line_naming_it(pg: Config) -> None:
    revisions(pg)
    path = next((pg.script_location / "versions").glob("r1_*.py"))
    edit(path, "pgvector_index = 'hnsw'", "pgvector_index = 'hnsw,m=1'")
    one_line_error(pg, "upgrade", "head", match="m must be an integer from 2 to 100")


def test_a_dry_run_reads_the_live_table_and_changes_no_table_or_view(pg: Config) -> None:
    revisions(pg)
    command.upgrade(pg, "r1")
    before = snapshot(pg, with_history=False)
    report = command.upgrade(pg, "head", dry_run=True, sample=100)
    assert snapshot(pg, with_history=False) == before
    (forecast,) = [r for r in report if r is not None]
    assert forecast.metrics["overlap_at_10"] is not None


@pytest.mark.process
def test_a_canary_mirrors_live_queries_to_the_shadow_table(pg: Config) -> None:
    from tests.test_canary import canary_revisions, queries_file
    from tests.test_canary import serve as serve_process

    config = canary_revisions(pg, min_queries=20)
    assert embedmig(config.root, "-q", "upgrade", "head").returncode == 4  # canary opened
    stats = serve_process(config.root, queries_file(config.root, 25))
    assert stats["mirrored"] == 25 and stats["failed"] == 0
    assert embedmig(config.root, "upgrade", "head").returncode == 0
    assert command.current(config)[0].revision == "r2"


def test_the_watch_and_its_baseline_search_the_live_table(pg: Config) -> None:
    from tests.test_watch import queries, serve, watched

    config = watched(pg)
    serve(config, queries())
    (report,) = command.watch(config)
    assert report.verdict is not None and report.verdict.passed
    assert report.metrics["watch_queries"] == 60


def test_an_adapter_serves_the_live_table_to_the_new_model(pg: Config) -> None:
    from tests.test_adapter import adapter_revision

    adapter_revision(pg, gates="min_adapter_overlap_at_10=0.0")
    command.upgrade(pg, "head")
    text = "A brand new abstract about zebrafish heart regeneration after injury"
    with open_writer(pg, "docs") as writer:
        writer.upsert("fresh-1", text)
    with open_searcher(pg, "docs") as searcher:
        assert searcher.search(text, k=1)[0].key == "fresh-1"


def test_moving_an_alias_from_faiss_files_into_pgvector_embeds_nothing_again(
    pg: Config, reader: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    from embedmig.embedders import LoadedEmbedder

    config = with_options(pg, index_store="faiss")
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.upgrade(config, "r1")
    command.revision(
        config, "move", alias="docs", new="models/a", rev_id="r2", index_store="pgvector"
    )
    embedded: list[int] = []
    real = LoadedEmbedder.encode_uncached

    def counting(self: LoadedEmbedder, texts: list[str], kind: str, keep: Any = None) -> Any:
        if kind == "document":
            embedded.append(len(texts))
        return real(self, texts, kind, keep)

    monkeypatch.setattr(LoadedEmbedder, "encode_uncached", counting)
    command.upgrade(config, "head")
    assert sum(embedded) == 0  # every document's vector came from the embedding cache
    (state,) = command.current(config)
    assert state.live is not None and state.live.store == "pgvector"
    assert one(reader, "SELECT count(*) FROM search.docs") == 300
    command.downgrade(config, "-1")  # back to the file; the view goes with the alias
    assert command.current(config)[0].live.store == "faiss"  # type: ignore[union-attr]
    assert one(reader, "SELECT to_regclass('search.docs')") is None


@pytest.mark.minilm
def test_a_384_to_256_dimension_change_on_real_models(
    pg: Config, reader: psycopg.Connection, real_models: dict[str, Path]
) -> None:
    from tests.test_real_models import real_project_at

    config = real_project_at(pg.root, real_models)
    command.revision(config, "first", alias="docs", new="models/minilm", rev_id="r1")
    rev = command.revision(config, "static", alias="docs", new="models/static", rev_id="r2")
    edit(
        Path(str(rev.path)),
        "gates = Gates(min_overlap_at_10=0.5, max_score_shift=0.2)",
        "gates = Gates()",
    )
    command.upgrade(config, "r1")
    dims = "SELECT DISTINCT vector_dims(embedding) FROM search.docs"
    assert one(reader, dims) == 384
    old_query = literal(encode(real_models["minilm"], [QUERY])[0])
    command.upgrade(config, "head")
    assert one(reader, dims) == 256
    with pytest.raises(psycopg.errors.DataException, match="different vector dimensions"):
        reader.execute(
            "SELECT key FROM search.docs ORDER BY embedding <#> %s::vector LIMIT 5", (old_query,)
        )
    assert len(read_alias(reader, real_models["static"])) == 5
    command.downgrade(config, "-1")
    assert one(reader, dims) == 384
    assert len(read_alias(reader, real_models["minilm"])) == 5


def test_a_template_older_than_stores_refuses_to_write_a_pgvector_revision(config: Config) -> None:
    template = config.script_location / "script.py.mako"
    text = template.read_text()
    # The template of a project made before index stores: the FAISS line alone.
    old = re.sub(
        r'% if index_store == "pgvector":\n.*?% else:\n(.*?)% endif\n', r"\1", text, flags=re.S
    )
    assert old != text
    template.write_text(old)
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")  # FAISS: fine
    line = "revision -m to-pg --alias docs --new models/a --index-store pgvector"
    one_line_error(config, *line.split(), match="predates index stores")
    assert [p.name[:3] for p in (config.script_location / "versions").glob("*.py")] == ["r1_"]
