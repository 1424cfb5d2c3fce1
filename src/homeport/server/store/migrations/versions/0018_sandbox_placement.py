"""record where each sandbox runs and which replica started it

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-30 17:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("image_id", sa.String(40), nullable=True))
        batch_op.add_column(sa.Column("node_id", sa.String(200), nullable=True))
        batch_op.add_column(sa.Column("server_id", sa.String(40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.drop_column("server_id")
        batch_op.drop_column("node_id")
        batch_op.drop_column("image_id")
