"""readers: each searcher's heartbeat, so the index every reader serves is in view; logged
queries keep their metadata (segments)

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "embedmig_reader",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("index_id", sa.Integer(), nullable=True),
        sa.Column("since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("served", sa.BigInteger(), nullable=False),
        sa.Column("drift", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_embedmig_reader_alias", "embedmig_reader", ["alias"])
    with op.batch_alter_table("embedmig_query_log") as batch:
        batch.add_column(sa.Column("meta", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("embedmig_query_log") as batch:
        batch.drop_column("meta")
    op.drop_index("ix_embedmig_reader_alias", table_name="embedmig_reader")
    op.drop_table("embedmig_reader")
