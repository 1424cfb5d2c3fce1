"""app_deployments: every deployment of an app, by version (modal app history)

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-29 22:50:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "app_deployments",
        sa.Column("app_id", sa.String(40), primary_key=True),
        sa.Column("version", sa.Integer(), primary_key=True),
        sa.Column("deployed_at", sa.Float(), nullable=False),
        sa.Column("client_version", sa.String(40), nullable=False),
        sa.Column("deployed_by", sa.String(200), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("app_deployments")
