"""History in SQL: embedmig's tables, their schema migrations, and the queries on them."""
