"""Where this environment's documents and evaluation queries come from.

embedmig calls these functions with the project's Config and an alias name. The defaults read the
files named in embedmig.ini (`corpus`, and optionally `queries` and `qrels`); edit them to read
from anywhere else, for example:

    from embedmig import SqlSource, IterableSource
    return SqlSource("postgresql+psycopg://db/app", "SELECT id, body AS text FROM articles ORDER BY id")
    return IterableSource(lambda: ((row.id, row.text) for row in my_store.scan()))

Keep the corpus order stable: a killed backfill resumes by position.
"""

from embedmig import sources


def corpus(config, alias):
    """The documents of `alias`: an iterable of embedmig.Document(key, text)."""
    return sources.corpus_from_config(config)


def queries(config, alias):
    """Evaluation queries, or None to sample documents of the corpus as queries."""
    return sources.queries_from_config(config)


def qrels(config, alias):
    """Relevance judgements {query key: {document key: grade}}, or None."""
    return sources.qrels_from_config(config)
