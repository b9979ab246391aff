"""Every bad input is a one-line error and leaves aliases, indexes and history as they were."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, cast

import pytest
import sqlalchemy as sa

from embedmig import (
    Config,
    EmbedderError,
    HistoryError,
    ScriptError,
    StateError,
    StoreError,
    command,
)
from embedmig.cli import main
from tests.support import build_static_model, snapshot


def first_applied(config: Config) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="aaa111")
    command.upgrade(config)


def edit_revision(config: Config, rev_id: str, pattern: str, replacement: str) -> None:
    path = next((config.script_location / "versions").glob(f"{rev_id}_*.py"))
    path.write_text(re.sub(pattern, replacement, path.read_text(), flags=re.M))


def refused(config: Config, error: type[Exception], match: str, target: str = "head") -> None:
    before = snapshot(config)
    with pytest.raises(error, match=match):
        command.upgrade(config, target)
    assert snapshot(config) == before


def test_a_cycle_in_down_revision_is_refused(config: Config) -> None:
    first_applied(config)
    command.revision(config, "second", alias="docs", new="models/near", rev_id="bbb222")
    edit_revision(config, "aaa111", r"^down_revision = None", "down_revision = 'bbb222'")
    refused(config, ScriptError, "(?i)cycle")


def test_a_revision_without_a_revision_id_is_refused(config: Config) -> None:
    first_applied(config)
    command.revision(config, "second", alias="docs", new="models/near", rev_id="bbb222")
    edit_revision(config, "bbb222", r"^revision = .*$", "")
    refused(config, ScriptError, "revision")


def test_an_ambiguous_partial_revision_id_is_refused(config: Config) -> None:
    first_applied(config)
    command.revision(config, "b", alias="docs", new="models/near", rev_id="abc111")
    command.revision(config, "c", alias="docs", new="models/a", rev_id="abc222")
    refused(config, ScriptError, "(?i)multiple|ambiguous", target="abc")


def test_an_old_embedder_with_other_options_than_the_live_index_is_refused(config: Config) -> None:
    first_applied(config)
    command.revision(config, "second", alias="docs", new="models/near", rev_id="bbb222")
    edit_revision(
        config,
        "bbb222",
        r"^old = Embedder\('models/a'\)",
        "old = Embedder('models/a', normalize=False)",
    )
    refused(config, StateError, "does not match")


def test_truncate_dim_beyond_the_model_is_refused(config: Config) -> None:
    first_applied(config)
    command.revision(config, "second", alias="docs", new="models/near", rev_id="bbb222")
    edit_revision(
        config,
        "bbb222",
        r"^new = Embedder\('models/near'\)",
        "new = Embedder('models/near', truncate_dim=999)",
    )
    refused(config, EmbedderError, "truncate_dim=999 is larger")


def test_nan_vectors_from_the_model_are_refused(
    config: Config, project: Path, corpus_texts: list[str]
) -> None:
    from sentence_transformers import SentenceTransformer

    broken = build_static_model(project / "models" / "broken-src", corpus_texts, 32, seed=3)
    model = SentenceTransformer(str(broken), device="cpu")
    weights = cast(Any, model[0]).embedding.weight.data
    weights[5:50] = float("nan")
    model.save(str(project / "models" / "nan"))
    command.revision(config, "first", alias="docs", new="models/nan", rev_id="aaa111")
    refused(config, EmbedderError, "NaN or inf")


def test_a_model_needing_remote_code_is_refused_unless_allowed(config: Config) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="aaa111")
    edit_revision(
        config,
        "aaa111",
        r"^new = Embedder\('models/a'\)",
        "new = Embedder('models/a', trust_remote_code=True)",
    )
    refused(config, EmbedderError, "trust_remote_code")
    allowed = Config(config.path, options={"allow_remote_code": "true"})
    command.upgrade(allowed)
    assert command.current(config)[0].revision == "aaa111"


def test_an_unwritable_index_folder_is_refused_before_embedding(
    config: Config, project: Path
) -> None:
    command.revision(config, "first", alias="docs", new="models/a", rev_id="aaa111")
    blocked = Config(config.path, options={"index_dir": "corpus.jsonl/indexes"})
    command.current(blocked)
    before = snapshot(blocked)
    with pytest.raises(StoreError, match="not writable"):
        command.upgrade(blocked)
    assert snapshot(blocked) == before


def test_a_history_schema_newer_than_embedmig_is_refused(config: Config) -> None:
    first_applied(config)
    engine = sa.create_engine(config.url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE embedmig_schema_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(HistoryError, match="newer than this embedmig"):
        command.current(config)


def test_empty_texts_are_skipped_and_counted(config: Config, project: Path) -> None:
    with (project / "corpus.jsonl").open("a") as fh:
        for i in range(3):
            fh.write(json.dumps({"id": f"empty{i}", "text": "   "}) + "\n")
    command.revision(config, "first", alias="docs", new="models/a", rev_id="aaa111")
    (report,) = command.upgrade(config)
    assert report.corpus_size == 300 and "3 empty document(s) skipped" in report.notes


@pytest.mark.parametrize(
    "argv",
    [
        ["upgrade", "nope"],
        ["downgrade", "nope"],
        ["show", "nope"],
        ["stamp", "nope"],
        ["search", "docs", "query"],
        ["revision", "-m", "x", "--alias", "../x", "--new", "models/a"],
        ["report", "nope"],
        ["unlock", "docs"],
    ],
)
def test_cli_errors_are_one_line(
    project: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    config = Config(project / "embedmig.ini")
    command.current(config)
    before = snapshot(config)
    assert main(argv) == 1
    _, err = capsys.readouterr()
    assert err.startswith("embedmig: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert snapshot(config) == before
