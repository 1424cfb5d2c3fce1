"""sandboxes (modal.Sandbox): one row each, its name unique within its app, its result
once it has finished

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-30 04:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sandboxes",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("workspace_id", sa.String(40), nullable=False),
        sa.Column("app_id", sa.String(40), nullable=False, index=True),
        sa.Column("environment_name", sa.String(200), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("tags", sa.Text, nullable=False),
        sa.Column("task_id", sa.String(40), nullable=False, unique=True),
        sa.Column("idempotency_key", sa.String(100), nullable=True, unique=True),
        sa.Column("created_at", sa.Float, nullable=False, index=True),
        sa.Column("result", sa.LargeBinary, nullable=True),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.UniqueConstraint("app_id", "name", name="uq_sandboxes_app_name"),
    )


def downgrade() -> None:
    op.drop_table("sandboxes")
