"""The query log: searchers record a share of what they serve, off the request path, and upgrades,
dry runs and `check` can evaluate on it (`queries = log`)."""

from __future__ import annotations

import json
import threading

import pytest
import sqlalchemy as sa

from embedmig import Config, ConfigError, command, open_searcher
from embedmig.environment import Environment
from embedmig.history import schema
from embedmig.serve import mirror
from embedmig.store import traffic
from tests.support import corpus_rows, embedmig, snapshot, with_options


def built(config: Config) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.upgrade(config, "r1")


def user_queries(n: int) -> list[str]:
    return [" ".join(row["text"].split()[:5]) for row in corpus_rows(n)]


def logged(config: Config) -> list[tuple[str | None, int]]:
    env = Environment(config)
    with env.engine.connect() as conn:
        rows = conn.execute(
            sa.select(schema.query_log.c.text, schema.query_log.c.k).order_by(schema.query_log.c.id)
        ).all()
    env.dispose()
    return [(text, k) for text, k in rows]


def test_a_searcher_logs_every_query_it_serves_at_share_one(config: Config) -> None:
    built(config)
    config = with_options(config, searcher__log_queries=1)
    queries = user_queries(25)
    with open_searcher(config, "docs") as searcher:
        for text in queries:
            searcher.search(text, k=7)
    assert logged(config) == [(text, 7) for text in queries]
    assert searcher.traffic.logged == 25 and searcher.traffic.dropped == 0


def test_the_log_is_off_by_default_and_samples_its_share(config: Config) -> None:
    built(config)
    with open_searcher(config, "docs") as searcher:
        for text in user_queries(20):
            searcher.search(text)
    assert logged(config) == []
    config = with_options(config, searcher__log_queries=0.5)
    with open_searcher(config, "docs") as searcher:
        for text in user_queries(200):
            searcher.search(text)
    # Binomial(200, 0.5): outside 60..140 once in 10^8 runs.
    assert 60 <= len(logged(config)) <= 140


def test_the_log_keeps_only_its_newest_log_max_queries(config: Config) -> None:
    built(config)
    config = with_options(config, searcher__log_queries=1, searcher__log_max=5)
    queries = user_queries(12)
    with open_searcher(config, "docs") as searcher:
        for text in queries:
            searcher.search(text)
    assert [text for text, _ in logged(config)] == queries[-5:]


def test_the_cli_search_is_logged_too(config: Config) -> None:
    built(config)
    with_options(config, searcher__log_queries=1)
    done = embedmig(config.root, "search", "docs", "protein folding in cells")
    assert done.returncode == 0, done.stderr
    assert logged(config) == [("protein folding in cells", 10)]


def test_a_failing_log_write_never_fails_a_search(config: Config) -> None:
    built(config)
    config = with_options(config, searcher__log_queries=1)
    env = Environment(config)
    with env.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE embedmig_query_log"))
    env.dispose()
    with open_searcher(config, "docs") as searcher:
        hits = [searcher.search(text) for text in user_queries(10)]
    assert all(len(h) == 10 for h in hits)
    assert (searcher.traffic.logged, searcher.traffic.failed) == (0, 10)


def test_a_full_queue_drops_queries_and_counts_each_one(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    built(config)
    config = with_options(config, searcher__log_queries=1, searcher__queue_size=2)
    release = threading.Event()
    real = mirror.Mirror._write

    def slow_write(self: mirror.Mirror, items: list[object]) -> None:
        release.wait(30)  # a database that is slow to write
        real(self, items)  # type: ignore[arg-type]

    monkeypatch.setattr(mirror.Mirror, "_write", slow_write)
    with open_searcher(config, "docs") as searcher:
        for text in user_queries(40):
            searcher.search(text)
        release.set()
    stats = searcher.traffic
    assert stats.dropped > 0
    assert stats.logged + stats.dropped + stats.failed == 40
    assert len(logged(config)) == stats.logged


def test_an_upgrade_evaluates_on_the_logged_queries(config: Config) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.revision(config, "second", alias="docs", new="models/near", rev_id="r2")
    command.upgrade(config, "r1")
    queries = user_queries(40)
    served = with_options(config, searcher__log_queries=1)
    with open_searcher(served, "docs") as searcher:
        for text in queries + queries[:10]:  # repeated queries count once
            searcher.search(text)
    from_log = with_options(config, queries="log")
    (report,) = command.upgrade(from_log, "head", dry_run=True, sample=300)
    assert report.query_source == "query log: queries searchers served"
    assert report.n_queries == 40
    # The same texts from a queries file give the same comparison.
    path = config.root / "same.jsonl"
    path.write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(queries))
    )
    (same,) = command.upgrade(
        with_options(config, queries="same.jsonl"), "head", dry_run=True, sample=300
    )
    for name in ("overlap_at_10", "score_old_mean", "score_new_mean"):
        assert report.metrics[name] == pytest.approx(same.metrics[name], abs=1e-6), name
    latest = with_options(config, queries="log:15")
    (report,) = command.upgrade(latest, "head", dry_run=True, sample=300)
    assert report.n_queries == 15


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"queries": "log"}, "the query log of 'docs' is empty; set searcher.log_queries"),
        ({"queries": "log:zero"}, "write log or log:N with N a positive integer"),
        ({"queries": "log", "qrels": "qrels.tsv"}, "queries = log cannot be judged by qrels"),
    ],
)
def test_queries_from_an_unusable_log_are_one_line_and_change_nothing(
    config: Config, options: dict[str, str], message: str
) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.revision(config, "second", alias="docs", new="models/near", rev_id="r2")
    command.upgrade(config, "r1")
    with_options(config, **options)
    before = snapshot(config)
    failed = embedmig(config.root, "upgrade", "head")
    assert failed.returncode == 1
    (line,) = failed.stderr.strip().splitlines()
    assert line.startswith("embedmig: error: ") and message in line
    assert snapshot(config) == before


def test_an_aliases_first_index_builds_with_queries_from_the_log_before_any_traffic(
    config: Config,
) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    (report,) = command.upgrade(with_options(config, queries="log"), "r1")
    assert report.query_source != "query log: queries searchers served"
    assert command.current(config)[0].revision == "r1"


def test_a_log_of_hashes_counts_traffic_but_cannot_be_evaluated_on(config: Config) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.revision(config, "second", alias="docs", new="models/near", rev_id="r2")
    command.upgrade(config, "r1")
    private = with_options(config, searcher__log_queries=1, searcher__log_text="false")
    with open_searcher(private, "docs") as searcher:
        for text in user_queries(8):
            searcher.search(text)
    assert [text for text, _ in logged(config)] == [None] * 8
    env = Environment(config)
    with env.engine.connect() as conn:
        assert traffic.log_counts(conn, "docs") == traffic.LogCounts(8, 0)
    env.dispose()
    with_options(config, queries="log")
    before = snapshot(config)
    failed = embedmig(config.root, "check")
    assert failed.returncode == 1
    assert "holds 8 queries as hashes only (searcher.log_text = false)" in failed.stderr
    assert snapshot(config) == before


def test_an_unknown_share_is_refused_when_the_searcher_opens(config: Config) -> None:
    built(config)
    for bad in ("1.5", "-0.1", "nan", "often"):
        broken = with_options(config, searcher__log_queries=bad)
        with pytest.raises(ConfigError, match=r"searcher\.log_queries"):
            open_searcher(broken, "docs")
