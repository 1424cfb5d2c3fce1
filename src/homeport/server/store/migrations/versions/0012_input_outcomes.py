"""inputs.finished_at and inputs.status: when each input ended and how, for call listings and stats

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29 22:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inputs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("finished_at", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("status", sa.Integer(), nullable=True))
    op.create_index("ix_inputs_function_created", "inputs", ["function_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_inputs_function_created", "inputs")
    with op.batch_alter_table("inputs", schema=None) as batch_op:
        batch_op.drop_column("status")
        batch_op.drop_column("finished_at")
