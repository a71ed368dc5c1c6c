"""Alembic environment: runs on the engine the caller put in ``config.attributes`` (see ``weiflow.center.db``)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

from weiflow.center.models import Base

engine = context.config.attributes.get("engine")
if not isinstance(engine, Engine):
    raise RuntimeError("run migrations through 'weiflow center migrate' (weiflow.center.db.migrate)")

with engine.connect() as connection:
    # render_as_batch: SQLite cannot ALTER most things; batch mode rebuilds the table instead.
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
