"""lock fencing: each lock row carries its generation, bumped by a takeover

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("embedmig_lock") as batch:
        batch.add_column(sa.Column("token", sa.BigInteger(), nullable=False, server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("embedmig_lock") as batch:
        batch.drop_column("token")
