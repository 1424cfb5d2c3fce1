"""index pending inputs by when they may run

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-30 14:10:00
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inputs", schema=None) as batch_op:
        batch_op.create_index("ix_inputs_runnable", ["state", "not_before", "function_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("inputs", schema=None) as batch_op:
        batch_op.drop_index("ix_inputs_runnable")
