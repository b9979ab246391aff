"""A LangChain retriever over an embedmig alias: ``pip install "embedmig[langchain]"``.

    from embedmig import Config
    from embedmig.integrations.langchain import EmbedmigRetriever

    retriever = EmbedmigRetriever.open(Config("embedmig.ini"), "docs", k=4)
    docs = retriever.invoke("how do I rotate keys")

It is a searcher underneath, so an application keeps answering across a swap, a rollback or a
write with no restart, and it is safe to share between threads. Each ``Document`` holds the
snippet embedmig keeps of the text (200 characters) as its ``page_content``; its metadata holds
the document's ``key`` (to fetch the full text from where it lives), the ``score``, the
``rank``, the ``index`` that answered and the ``revision`` that built it (which model's space
the score is in), and the document's own metadata under ``meta``.
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from embedmig.config import Config
from embedmig.serve.searcher import Searcher, open_searcher


class EmbedmigRetriever(BaseRetriever):
    """The top ``k`` documents of an alias's live index for a query, as LangChain documents."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    searcher: Searcher
    k: int = 4

    @classmethod
    def open(cls, config: Config, alias: str, k: int = 4, **kwargs: Any) -> EmbedmigRetriever:
        """A retriever on its own searcher of ``alias`` (close it with ``close()``)."""
        return cls(searcher=open_searcher(config, alias), k=k, **kwargs)

    def close(self) -> None:
        self.searcher.close()

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        return [
            Document(
                page_content=hit.snippet,
                metadata={
                    "key": hit.key,
                    "score": hit.score,
                    "rank": hit.rank,
                    "index": hit.index_id,
                    "revision": hit.revision,
                    "meta": hit.metadata,
                },
            )
            for hit in self.searcher.search(query, self.k)
        ]
