"""index stores: each index records where it lives, a FAISS file or a pgvector table

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("embedmig_index") as batch:
        batch.add_column(sa.Column("store", sa.String(16), nullable=False, server_default="faiss"))


def downgrade() -> None:
    with op.batch_alter_table("embedmig_index") as batch:
        batch.drop_column("store")
