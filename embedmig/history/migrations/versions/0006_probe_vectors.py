"""probe vectors of each index's embedder

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Indexes built before this revision have none: drift is not measured against them.
    with op.batch_alter_table("embedmig_index") as batch:
        batch.add_column(sa.Column("probe", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("embedmig_index") as batch:
        batch.drop_column("probe")
