"""Golden queries: documents a query must keep in its top k, checked by every upgrade and dry run
(a broken one fails the gate, named) and by `embedmig verify` on what the alias serves now."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedmig import Config, ConfigError, GateFailed, command, render
from embedmig.contracts import Contract
from embedmig.metrics import contracts as golden
from embedmig.metrics import figures
from embedmig.metrics import names as metric_names
from embedmig.metrics.relevance import Judgements
from tests.support import corpus_rows, embedmig, encode, snapshot


def ranks(model: Path, queries: list[str]) -> np.ndarray:
    """Each query's ranking of the 300 corpus documents (row i: document positions, best first)."""
    texts = [row["text"] for row in corpus_rows(300)]
    scores = encode(model, queries) @ encode(model, texts).T
    return np.argsort(-scores, axis=1, kind="stable")


def broken_and_kept(models: dict[str, Path]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two contracts: one whose document model `a` ranks 1st and model `far` below 20th (moving
    `docs` from a to far breaks it), one both rank 1st (kept)."""
    rows = corpus_rows(300)
    queries = [" ".join(row["text"].split()[:5]) for row in rows[:60]]
    old, new = ranks(models["a"], queries), ranks(models["far"], queries)
    broken = next(i for i in range(60) if old[i, 0] == i and i not in new[i, :20])
    kept = next(i for i in range(60) if old[i, 0] == i and new[i, 0] == i)

    def contract(name: str, i: int) -> dict[str, Any]:
        return {"id": name, "query": queries[i], "k": 3, "must_contain": [rows[i]["id"]]}

    return contract("breaks", broken), contract("keeps", kept)


def with_contracts(config: Config, lines: list[Any]) -> Config:
    path = config.root / "contracts.jsonl"
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    ini = config.root / "embedmig.ini"
    ini.write_text(ini.read_text() + "contracts = contracts.jsonl\n")
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.revision(config, "second", alias="docs", new="models/far", rev_id="r2")
    return Config(ini)


@pytest.fixture
def contracted(config: Config, models: dict[str, Path]) -> Config:
    """`docs` live on model a with two golden queries; r2 (to model far) breaks one of them."""
    config = with_contracts(config, list(broken_and_kept(models)))
    command.upgrade(config, "r1")
    return config


def test_a_contract_the_migration_breaks_fails_the_upgrade_with_the_query_named(
    contracted: Config,
) -> None:
    with pytest.raises(GateFailed) as failed:
        command.upgrade(contracted, "r2")
    message = str(failed.value)
    assert "contract_failures = 1.0000 (needs <= 0): FAILED (breaks lost " in message
    assert "keeps" not in message
    report = failed.value.report
    assert [c["id"] for c in report.distributions["contracts"]["broken"]] == ["breaks"]
    assert "Golden queries" in render(report, "html") and "BROKEN breaks" in render(report)
    assert report.metrics["contract_failures_old"] == 0
    (docs,) = command.current(contracted)
    assert docs.revision == "r1" and docs.live is not None and docs.live.id == 1


def test_verify_checks_the_live_alias_and_names_what_it_lost(contracted: Config) -> None:
    ran = embedmig(contracted.root, "verify")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("docs: index #1, 2 golden queries, 0 broken")

    command.upgrade(contracted, "r2", force=True)
    ran = embedmig(contracted.root, "verify", "docs")
    assert ran.returncode == 3
    assert "BROKEN breaks:" in ran.stdout and "BROKEN keeps" not in ran.stdout
    (line,) = ran.stderr.strip().splitlines()
    assert line.startswith("embedmig: error: 1 golden queries broken: docs: breaks lost ")
    (verified,) = command.verify(contracted)
    assert verified.index.id == 2 and verified.metrics["contract_failures"] == 1
    assert verified.baseline == {"contract_failures": 1.0, "contract_ndcg_at_10": None}


def test_a_dry_run_forecasts_the_contracts_the_upgrade_measures(contracted: Config) -> None:
    with pytest.raises(GateFailed, match=r"contract_failures = 1\.0000 .* \(breaks lost"):
        command.upgrade(contracted, "r2", dry_run=True, sample=150)
    forecast = command.report(contracted, "r2")  # the dry run recorded it
    assert forecast.kind == "dry-run"
    low, high = (forecast.metrics[f"contract_failures_ci_{end}"] for end in ("low", "high"))
    assert forecast.metrics["contract_failures"] == 1 and low is not None and high is not None
    assert low <= 1 <= high
    (measured,) = command.upgrade(contracted, "r2", force=True)
    assert measured.metrics["contract_failures"] == 1
    assert [c["id"] for c in forecast.distributions["contracts"]["broken"]] == ["breaks"]


def test_ratings_give_the_contracts_ndcg_as_the_report_computes_it() -> None:
    contracts = [
        Contract("q0", "x", 2, ("d1",), {"d1": 2, "d2": 1}),
        Contract("q1", "y", 10, (), {"d3": 1}),
        Contract("q2", "z", 1, ("d9",), {}),  # a document the alias does not hold
    ]
    compiled = golden.compile_(contracts, {"d1": 1, "d2": 2, "d3": 3})
    ids = np.array([[5, 2, 1, -1], [3, 4, 5, 6], [1, 2, 3, -1]])
    judged = golden.judge(ids, compiled)
    assert judged.broken.tolist() == [True, False, True]
    expected = figures.judged_per_query(
        ids[:2], Judgements(np.array([0, 0, 1]), np.array([1, 2, 3]), np.array([2, 1, 1]))
    )["ndcg_at_10"]
    np.testing.assert_allclose(judged.ndcg[:2], expected)
    assert np.isnan(judged.ndcg[2])
    section = golden.section(compiled, judged, None)
    assert section["broken"] == [
        {"id": "q0", "query": "x", "k": 2, "missing": [{"document": "d1", "rank": 3}]},
        {"id": "q2", "query": "z", "k": 1, "missing": [{"document": "d9", "rank": None}]},
    ]
    assert set(golden.metrics(judged, judged)) == set(metric_names.CONTRACT)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 2: not JSON"),
        ({"id": "b", "must_contain": ["x"]}, "line 2: contract 'b': 'query' must be"),
        ({"id": "b", "query": "q", "k": 0, "must_contain": ["x"]}, "'k' must be an integer"),
        ({"id": "b", "query": "q", "must": ["x"]}, "unknown field 'must'"),
        ({"id": "a", "query": "q", "must_contain": ["x"]}, "contract id 'a' appears twice"),
        ({"id": "b", "query": "q"}, "has neither 'must_contain' nor 'ratings'"),
        ({"id": "b", "query": "q", "ratings": [{"_id": "x", "rating": -1}]}, "'ratings' must be"),
        ({"id": "b", "query": "q", "must_contain": "x"}, "'must_contain' must be a list"),
    ],
)
def test_a_malformed_contract_line_is_one_line_and_changes_nothing(
    config: Config, line: Any, message: str
) -> None:
    config = with_contracts(config, [{"id": "a", "query": "q", "must_contain": ["x"]}, line])
    before = snapshot(config)
    for args in (("upgrade", "r1"), ("upgrade", "r1", "--dry-run"), ("verify",)):
        ran = embedmig(config.root, *args)
        (error,) = ran.stderr.strip().splitlines()
        assert ran.returncode == 1 and error.startswith("embedmig: error: ") and message in error
        assert "contracts.jsonl" in error
    assert snapshot(config) == before


def test_a_contract_naming_a_document_the_alias_never_had_is_refused_before_anything_is_embedded(
    contracted: Config, models: dict[str, Path]
) -> None:
    ghost = {"id": "ghost", "query": "anything", "must_contain": ["no-such-doc-999"]}
    path = contracted.root / "contracts.jsonl"
    path.write_text(path.read_text() + json.dumps(ghost) + "\n")
    before = snapshot(contracted)
    for args in (("upgrade", "r2"), ("upgrade", "r2", "--dry-run"), ("verify",)):
        ran = embedmig(contracted.root, *args)
        (error,) = ran.stderr.strip().splitlines()
        assert ran.returncode == 1 and "Traceback" not in ran.stderr
        assert error == (
            "embedmig: error: contract 'ghost' must contain 'no-such-doc-999', which is not in "
            "the corpus of 'docs': fix or remove that line of the contracts file"
        )
    assert snapshot(contracted) == before


def test_a_contract_for_an_alias_the_project_does_not_have_is_warned_about(
    contracted: Config, models: dict[str, Path]
) -> None:
    typo = {"id": "typo", "query": "anything", "must_contain": ["x"], "alias": "dosc"}
    path = contracted.root / "contracts.jsonl"
    path.write_text(path.read_text() + json.dumps(typo) + "\n")
    ran = embedmig(contracted.root, "verify")
    assert ran.returncode == 0 and "docs: index #1, 2 golden queries, 0 broken" in ran.stdout
    assert (
        "'typo' name alias 'dosc', which is no alias of this project (aliases: docs); they are "
        "never checked" in ran.stderr
    )


def test_verify_without_a_contracts_file_says_how_to_set_one(config: Config) -> None:
    with pytest.raises(ConfigError, match="set contracts = FILE"):
        command.verify(config)
