"""usage: what each container used and reserved, from start to stop, for billing

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29 22:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage",
        sa.Column("task_id", sa.String(40), primary_key=True),
        sa.Column("workspace_id", sa.String(40), nullable=False),
        sa.Column("app_id", sa.String(40), nullable=False),
        sa.Column("function_id", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("node_id", sa.String(200), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("stopped_at", sa.Float(), nullable=False),
        sa.Column("cpu_seconds", sa.Float(), nullable=False),
        sa.Column("cpu_reserved_cores", sa.Float(), nullable=False),
        sa.Column("memory_reserved_mib", sa.Integer(), nullable=False),
        sa.Column("memory_peak_mib", sa.Float(), nullable=False),
        sa.Column("gpu_type", sa.String(40), nullable=False),
        sa.Column("gpu_count", sa.Integer(), nullable=False),
    )
    op.create_index("ix_usage_workspace_started", "usage", ["workspace_id", "started_at"])


def downgrade() -> None:
    op.drop_index("ix_usage_workspace_started", "usage")
    op.drop_table("usage")
