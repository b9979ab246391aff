"""reader clock: each alias counts the catalog changes its readers must follow (swaps, rollbacks,
new files, adapters), beside its journal position, so a searcher learns that nothing changed from
one primary-key read

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("embedmig_sequence") as batch:
        batch.add_column(sa.Column("changes", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("embedmig_sequence") as batch:
        batch.drop_column("changes")
