"""Reading and writing the live alias: searcher, writer, the canary mirror, index views.

Nothing here imports ``embedmig.migrate``: a service that only serves loads none of it."""
