"""BEIR SciFact from ../shared/data, as an embedmig project's corpus, queries and test qrels.
Used by the SciFact test and the evaluate benchmark."""

from __future__ import annotations

from pathlib import Path

from embedmig import Config, command

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"


def project(root: Path) -> Config:
    """A fresh environment in ``root`` reading SciFact's abstracts (title + text), claims and
    test-split judgements."""
    command.init(root / "migrations", root / "embedmig.ini")
    ini = root / "embedmig.ini"
    text = ini.read_text()
    for old, new in {
        "corpus = corpus.jsonl": f"corpus = {SCIFACT / 'corpus.jsonl'}",
        "corpus.id_field = id": "corpus.id_field = _id",
        "# corpus.title_field = title": "corpus.title_field = title",
        "# queries = queries.jsonl": f"queries = {SCIFACT / 'queries.jsonl'}",
        "# qrels = qrels.tsv": f"qrels = {SCIFACT / 'qrels' / 'test.tsv'}",
    }.items():
        text = text.replace(old, new)
    ini.write_text(text)
    return Config(ini)
