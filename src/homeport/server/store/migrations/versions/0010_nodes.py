"""nodes: the machines that run containers, as their agents last reported them

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29 22:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.Column("cpu_count", sa.Integer(), nullable=False),
        sa.Column("cpu_busy", sa.Float(), nullable=False),
        sa.Column("memory_budget_mib", sa.Integer(), nullable=False),
        sa.Column("memory_reserved_mib", sa.Integer(), nullable=False),
        sa.Column("gpus", sa.Text(), nullable=False),
        sa.Column("gpus_busy", sa.Integer(), nullable=False),
        sa.Column("containers", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("nodes")
