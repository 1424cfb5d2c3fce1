"""blob_id on inputs, outputs and call_data (which blob each holds, for blob collection); time indexes for retention

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 22:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TABLES = ("inputs", "outputs", "call_data")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("blob_id", sa.String(40), nullable=True))
            batch_op.create_index(f"ix_{table}_blob_id", ["blob_id"])
    op.create_index("ix_blobs_created_at", "blobs", ["created_at"])
    op.create_index("ix_logs_timestamp", "logs", ["timestamp"])


def downgrade() -> None:
    op.drop_index("ix_logs_timestamp", "logs")
    op.drop_index("ix_blobs_created_at", "blobs")
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(f"ix_{table}_blob_id")
            batch_op.drop_column("blob_id")
