"""Schema: the Alembic migrations build exactly what the models declare, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect
from sqlalchemy.orm import Session, sessionmaker

from weiflow.center.db import migrate
from weiflow.center.models import Base, Pipeline


def test_migrations_match_the_models(engine: Engine) -> None:
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata)
    assert diff == []
    assert "datasets" in inspect(engine).get_table_names()


def test_migrate_twice_is_a_no_op(engine: Engine) -> None:
    migrate(engine)
    with engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == "0004"


def test_timestamps_come_back_aware_utc(sessions: sessionmaker[Session]) -> None:
    when = datetime(2026, 11, 2, 8, 30, tzinfo=timezone(timedelta(hours=8)))
    with sessions() as session:
        session.add(Pipeline(name="p", created_at=when))
        session.commit()
    with sessions() as session:
        stored = session.query(Pipeline).one().created_at
    assert stored == when
    assert stored.tzinfo is not None and stored.utcoffset() == timedelta(0)
    assert stored.hour == 0


def test_naive_timestamps_are_refused(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        session.add(Pipeline(name="p", created_at=datetime(2026, 11, 2)))
        with pytest.raises(Exception, match="naive datetime"):
            session.commit()
