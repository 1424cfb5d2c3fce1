"""cluster mode: which node runs each task and which control-plane replica owns it;
the replicas themselves (their heartbeats tell the others when one is gone)

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-30 01:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("node_id", sa.String(200), nullable=True))
        batch_op.add_column(sa.Column("server_id", sa.String(40), nullable=True))
        batch_op.create_index("ix_tasks_server_id", ["server_id"])
    op.create_table(
        "servers",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("address", sa.String(300), nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("servers")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_tasks_server_id")
        batch_op.drop_column("server_id")
        batch_op.drop_column("node_id")
