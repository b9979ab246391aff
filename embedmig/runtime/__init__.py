"""Running migrations (context, backfill, evaluation) and reading live indexes (searcher)."""
