"""Retrievers where applications are: the real LangChain package, over a real alias."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from embedmig import Config, command

pytest.importorskip(
    "langchain_core", reason='the retriever needs pip install "embedmig[langchain]"'
)

from embedmig.integrations.langchain import EmbedmigRetriever

QUERY = "glioblastoma stem cells tumor growth"


@pytest.fixture(params=["faiss", "pgvector"])
def any_store(request: pytest.FixtureRequest) -> Config:
    """The project with its indexes in FAISS files, then in pgvector tables."""
    config: Config = request.getfixturevalue(
        "pgvector_config" if request.param == "pgvector" else "config"
    )
    return config


def test_a_langchain_app_keeps_answering_across_a_swap_and_a_rollback(any_store: Config) -> None:
    config = any_store
    command.revision(config, "first", alias="docs", new="models/a", rev_id="r1")
    command.revision(config, "second", alias="docs", new="models/far", rev_id="r2")
    command.upgrade(config, "r1")
    retriever = EmbedmigRetriever.open(config, "docs", k=3)
    try:
        before = retriever.invoke(QUERY)
        assert [d.metadata["rank"] for d in before] == [1, 2, 3]
        assert {d.metadata["revision"] for d in before} == {"r1"}
        expected = command.search(config, "docs", QUERY, k=3)
        assert [(d.metadata["key"], d.page_content) for d in before] == [
            (h.key, h.snippet) for h in expected
        ]
        command.upgrade(config, "r2", force=True)  # the app is not restarted
        after = retriever.invoke(QUERY)
        assert {d.metadata["revision"] for d in after} == {"r2"}
        assert after[0].metadata["index"] != before[0].metadata["index"]
        command.downgrade(config, "-1")
        assert retriever.invoke(QUERY) == before
        with ThreadPoolExecutor(8) as pool:  # a server's request threads share it
            answers = list(pool.map(retriever.invoke, [QUERY] * 16))
        assert all(answer == before for answer in answers)
    finally:
        retriever.close()
