"""query log and canary comparisons

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "embedmig_query_log",
        sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sha", sa.BigInteger(), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("k", sa.Integer(), nullable=False),
    )
    op.create_index("ix_embedmig_query_log_alias_id", "embedmig_query_log", ["alias", "id"])
    op.create_table(
        "embedmig_canary",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("revision", sa.String(64), nullable=False),
        sa.Column("index_id", sa.Integer(), sa.ForeignKey("embedmig_index.id"), nullable=False),
        sa.Column("live_id", sa.Integer(), nullable=True),
        sa.Column("fraction", sa.Float(), nullable=False),
        sa.Column("k", sa.Integer(), nullable=False),
        sa.Column("min_queries", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("dropped", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("report", sa.Text(), nullable=True),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(
        "uq_embedmig_canary_open",
        "embedmig_canary",
        ["alias"],
        unique=True,
        sqlite_where=sa.text("status = 'open'"),
        postgresql_where=sa.text("status = 'open'"),
    )
    op.create_table(
        "embedmig_canary_result",
        sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("canary_id", sa.Integer(), sa.ForeignKey("embedmig_canary.id"), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("old_ids", sa.LargeBinary(), nullable=False),
        sa.Column("old_scores", sa.LargeBinary(), nullable=False),
        sa.Column("new_ids", sa.LargeBinary(), nullable=False),
        sa.Column("new_scores", sa.LargeBinary(), nullable=False),
    )
    op.create_index(
        "ix_embedmig_canary_result_canary", "embedmig_canary_result", ["canary_id", "id"]
    )


def downgrade() -> None:
    op.drop_table("embedmig_canary_result")
    op.drop_table("embedmig_canary")
    op.drop_table("embedmig_query_log")
