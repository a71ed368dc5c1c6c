"""The center mirrors each model's routing: repository, generation, labels, version metrics, the change trail.

Columns added to existing tables get a server default, so rows already there stay valid.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 18:37:54.362474
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "model_changes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=20), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("traffic", sa.Integer(), nullable=True),
        sa.Column("who", sa.String(length=100), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("before", sa.JSON(), nullable=False),
        sa.Column("after", sa.JSON(), nullable=False),
        sa.Column("via", sa.String(length=20), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_model_changes_model_id_models"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_changes")),
        sa.UniqueConstraint("model_id", "generation", name=op.f("uq_model_changes_model_id")),
    )
    with op.batch_alter_table("model_changes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_changes_model_id"), ["model_id"], unique=False)

    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("metrics", sa.JSON(), nullable=False, server_default=sa.text("'{}'")))
        batch_op.add_column(sa.Column("publisher", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("removed_at", sa.DateTime(), nullable=True))

    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("repository", sa.String(length=1024), nullable=True))
        batch_op.add_column(sa.Column("generation", sa.Integer(), nullable=False, server_default=sa.text("0")))
        batch_op.add_column(sa.Column("labels", sa.JSON(), nullable=False, server_default=sa.text("'{}'")))
        batch_op.add_column(sa.Column("mirrored_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("mirror_error", sa.String(length=1000), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_column("mirror_error")
        batch_op.drop_column("mirrored_at")
        batch_op.drop_column("labels")
        batch_op.drop_column("generation")
        batch_op.drop_column("repository")

    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_column("removed_at")
        batch_op.drop_column("publisher")
        batch_op.drop_column("metrics")

    with op.batch_alter_table("model_changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_changes_model_id"))

    op.drop_table("model_changes")
