"""index inputs in claim order

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 04:05:00
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inputs", schema=None) as batch_op:
        batch_op.drop_index("ix_inputs_queue")
        batch_op.create_index("ix_inputs_claim_order", ["function_id", "state", "created_at"], unique=False)
        batch_op.create_index("ix_inputs_task", ["task_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("inputs", schema=None) as batch_op:
        batch_op.drop_index("ix_inputs_task")
        batch_op.drop_index("ix_inputs_claim_order")
        batch_op.create_index("ix_inputs_queue", ["function_id", "state", "not_before"], unique=False)
