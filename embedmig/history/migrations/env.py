"""Alembic environment for embedmig's own history tables (not for user migrations)."""

from alembic import context

from embedmig.history.db import VERSION_TABLE
from embedmig.history.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
