"""change journal for live writes

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "embedmig_index", sa.Column("base_seq", sa.BigInteger(), nullable=False, server_default="0")
    )
    op.add_column("embedmig_doc", sa.Column("meta", sa.Text(), nullable=True))
    op.create_table(
        "embedmig_sequence",
        sa.Column("alias", sa.String(length=64), nullable=False),
        sa.Column("next_doc_id", sa.BigInteger(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("alias"),
    )
    # Ids keep counting from where each alias's documents left off.
    op.execute(
        "INSERT INTO embedmig_sequence (alias, next_doc_id, last_seq) "
        "SELECT alias, MAX(id) + 1, 0 FROM embedmig_doc GROUP BY alias"
    )
    op.create_table(
        "embedmig_journal",
        sa.Column("alias", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("op", sa.String(length=8), nullable=False),
        sa.Column("doc_id", sa.BigInteger(), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("meta", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("alias", "seq"),
    )
    op.create_table(
        "embedmig_journal_vector",
        sa.Column("alias", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("index_id", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("alias", "seq", "index_id"),
    )


def downgrade() -> None:
    op.drop_table("embedmig_journal_vector")
    op.drop_table("embedmig_journal")
    op.drop_table("embedmig_sequence")
    op.drop_column("embedmig_doc", "meta")
    op.drop_column("embedmig_index", "base_seq")
