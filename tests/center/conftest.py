"""Center fixtures: a migrated database on SQLite (always) and PostgreSQL (when one answers).

PostgreSQL tests share one schema per test session (``wf_<pid>_<random>``), emptied between
tests and dropped at the end, so parallel sessions on one server never collide.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from weiflow.center.db import make_engine, make_sessionmaker, migrate
from weiflow.center.models import Base

PG_URL = os.environ.get("WEIFLOW_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _postgres_problem() -> str | None:
    try:
        engine = make_engine(PG_URL, connect_args={"connect_timeout": 2})
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        return f"PostgreSQL not reachable at {PG_URL} (set WEIFLOW_TEST_POSTGRES_URL): {type(exc).__name__}: {exc}"
    return None


@pytest.fixture(scope="session")
def postgres_schema() -> Iterator[tuple[str, str]]:
    problem = _postgres_problem()
    if problem:
        pytest.skip(problem)
    schema = f"wf_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = make_engine(PG_URL)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = make_engine(PG_URL, schema=schema)
    migrate(engine)
    engine.dispose()
    yield PG_URL, schema
    with admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'center.db'}")
        migrate(engine)
    else:
        url, schema = request.getfixturevalue("postgres_schema")
        engine = make_engine(url, schema=schema)
        tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        with engine.begin() as connection:
            connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)
