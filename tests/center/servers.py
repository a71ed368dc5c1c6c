"""A real ``weiflow center serve`` for tests that talk HTTP to it, over a database of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from tests.center.conftest import PG_URL, _postgres_problem
from weiflow.center.db import make_engine, make_sessionmaker, migrate
from weiflow.center.models import Role
from weiflow.center.repository import create_token, create_user
from weiflow.processes import free_port, stop_groups


@contextmanager
def database_url(kind: str, tmp: Path) -> Iterator[str]:
    """A migrated, empty database: a SQLite file in ``tmp``, or a PostgreSQL schema of its own (dropped after)."""
    if kind == "sqlite":
        url = f"sqlite:///{tmp / 'center.db'}"
        migrate(engine := make_engine(url))
        engine.dispose()
        yield url
        return
    problem = _postgres_problem()
    if problem:
        pytest.skip(problem)
    schema = f"wf_srv_{uuid.uuid4().hex[:8]}"
    admin = make_engine(PG_URL)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    try:
        migrate(engine := make_engine(url))
        engine.dispose()
        yield url
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def add_users(url: str, users: dict[str, tuple[Role, list[str]]]) -> dict[str, str]:
    """Create ``users`` (name -> role, groups); their API tokens by name."""
    engine = make_engine(url)
    tokens = {}
    with make_sessionmaker(engine)() as session:
        for name, (role, groups) in users.items():
            create_user(session, name, role, groups=groups)
            tokens[name] = create_token(session, name)
    engine.dispose()
    return tokens


@contextmanager
def running_center(tmp: Path, url: str, *, workers: int, **env_vars: str) -> Iterator[tuple[str, dict[str, str]]]:
    """``weiflow center serve`` over ``url`` on a free port, storage in ``tmp/storage``: its base URL and
    the environment it runs with (for CLI commands against the same center).

    Its output goes to ``tmp/center.log`` (a pipe nobody drains would block the server once it
    had logged 64 KiB); a traceback there fails the test when the server stops.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIFLOW_")}
    env.update(WEIFLOW_VAR_DIR=str(tmp / "var"), WEIFLOW_DATABASE_URL=url, WEIFLOW_STORAGE=f"file://{tmp / 'storage'}")
    env.update(env_vars)
    (tmp / "storage").mkdir(exist_ok=True)
    port = free_port()
    log = tmp / "center.log"
    argv = ["center", "serve", "--port", str(port), "--workers", str(workers), "--sweep-every=0"]
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "weiflow", *argv],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{base}/api/openapi.json", timeout=1)
                break
            except httpx.TransportError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the center did not start: {log.read_text()[-3000:]}") from None
                time.sleep(0.2)
        yield base, env
    finally:
        stop_groups([server], grace_s=10)
    assert "Traceback" not in log.read_text(), f"the center logged an unhandled error: {log}"
