"""per-index document manifests (coverage) and resume digests

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("embedmig_checkpoint", sa.Column("progress", sa.Text(), nullable=True))
    # Indexes built before this revision have no rows: their coverage is reported as unknown.
    op.create_table(
        "embedmig_manifest",
        sa.Column("index_id", sa.Integer(), nullable=False),
        sa.Column("doc_id", sa.BigInteger(), nullable=False),
        sa.Column("corpus_sha", sa.BigInteger(), nullable=True),
        sa.Column("sha", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["index_id"], ["embedmig_index.id"]),
        sa.PrimaryKeyConstraint("index_id", "doc_id"),
    )


def downgrade() -> None:
    op.drop_table("embedmig_manifest")
    with op.batch_alter_table("embedmig_checkpoint") as batch:
        batch.drop_column("progress")
