"""image builds: layers, config and build logs

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 07:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("layers", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("config", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("top_key", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("built_at", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("build_seconds", sa.Float(), nullable=True))
    op.create_table(
        "image_build_logs",
        sa.Column("image_id", sa.String(length=40), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("image_id", "seq"),
    )
    # Images recorded before builds existed have no layers: build them on next use.
    op.execute("UPDATE images SET status = 0 WHERE layers IS NULL")


def downgrade() -> None:
    op.drop_table("image_build_logs")
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_column("build_seconds")
        batch_op.drop_column("built_at")
        batch_op.drop_column("top_key")
        batch_op.drop_column("config")
        batch_op.drop_column("layers")
