"""Trust boundaries: which pipeline owns a model, and failed console logins for the login throttle.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 15:05:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pipeline_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(batch_op.f("fk_models_pipeline_id_pipelines"), "pipelines", ["pipeline_id"], ["id"])
    op.create_table(
        "login_failures",
        sa.Column("key", sa.String(length=300), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_failure", sa.DateTime(), nullable=False),
        sa.Column("blocked_until", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_login_failures")),
    )


def downgrade() -> None:
    op.drop_table("login_failures")
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_models_pipeline_id_pipelines"), type_="foreignkey")
        batch_op.drop_column("pipeline_id")
