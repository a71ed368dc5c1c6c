"""Progress points: a module's training curve (loss and AUC by step, per worker) from module.progress events.

A new table only: nothing already stored changes, so the downgrade just drops it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 21:55:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "progress_points",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_pk", sa.Integer(), nullable=False),
        sa.Column("node", sa.String(length=200), nullable=False),
        sa.Column("module", sa.String(length=200), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker", sa.Integer(), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("steps", sa.BigInteger(), nullable=False),
        sa.Column("loss", sa.Float(), nullable=False),
        sa.Column("auc", sa.Float(), nullable=True),
        sa.Column("examples_per_s", sa.Float(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("ts", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_pk"], ["runs.id"], name=op.f("fk_progress_points_run_pk_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_progress_points")),
    )
    with op.batch_alter_table("progress_points", schema=None) as batch_op:
        batch_op.create_index("ix_progress_points_run_module", ["run_pk", "node", "module"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("progress_points", schema=None) as batch_op:
        batch_op.drop_index("ix_progress_points_run_module")

    op.drop_table("progress_points")
