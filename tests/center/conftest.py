"""Center fixtures: a migrated database on SQLite (always) and PostgreSQL (when one answers).

PostgreSQL tests share one schema per test session (``wf_<pid>_<random>``), emptied between
tests and dropped at the end, so parallel sessions on one server never collide.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from tests.secrets_plugin import register_secret
from weiflow.center.db import make_engine, make_sessionmaker, migrate
from weiflow.center.ingest import ingest_events
from weiflow.center.models import Base, Role
from weiflow.center.repository import create_token, create_user
from weiflow.config import load_settings
from weiflow.dag import compile_file
from weiflow.runtime import RunContext, run_pipeline
from weiflow.tracking import Event, MemoryTracker

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


EXAMPLES = Path(__file__).resolve().parents[2] / "xml_specs"
PASSWORD = "correct horse battery staple"
register_secret(PASSWORD)  # no log of the whole run may hold it (tests/secrets_plugin.py)


def activity_run_events(run_id: str = "r1") -> list[Event]:
    """The events of a real local run of xml_specs/user_activity_report.xml (python engine, ~50 ms)."""
    tracker = MemoryTracker()
    dag = compile_file(EXAMPLES / "user_activity_report.xml")
    run_pipeline(RunContext.create(dag, settings=load_settings(), tracker=tracker, run_id=run_id, ds=date(2026, 11, 2)))
    return list(tracker.events)


TEAM = (
    ("root", Role.ADMIN, []),
    ("alice", Role.OWNER, ["ranking"]),
    ("bob", Role.OWNER, ["ads"]),
    ("vera", Role.VIEWER, []),
)


def add_team(sessions: sessionmaker[Session], *, password: str | None = None) -> dict[str, dict[str, str]]:
    """root (admin), alice (owner, group ranking), bob (owner, group ads), vera (viewer): their API headers.

    With ``password``, they can log in to the console too (each hash costs 40-50 ms of Argon2id).
    """
    headers = {}
    with sessions() as session:
        for name, role, groups in TEAM:
            create_user(session, name, role, groups=groups, password=password)
            headers[name] = {"Authorization": f"Bearer {create_token(session, name)}"}
    return headers


@pytest.fixture
def activity_center(sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    """A center holding one real run of user_activity_report (owner 'growth') and console users with passwords:
    root (admin), gina (owner, group growth), otto (owner, group ads), vera (viewer)."""
    with sessions() as session:
        ingest_events(session, activity_run_events())
        for name, role, groups in (
            ("root", Role.ADMIN, []),
            ("gina", Role.OWNER, ["growth"]),
            ("otto", Role.OWNER, ["ads"]),
            ("vera", Role.VIEWER, []),
        ):
            create_user(session, name, role, password=PASSWORD, groups=groups)
    return sessions
