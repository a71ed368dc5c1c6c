"""Engines, sessions and migrations for the center's database (SQLite by default, PostgreSQL in production)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from alembic import command
from alembic.config import Config
from sqlalchemy import CursorResult, Engine, Result, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

__all__ = [
    "CONNECT_TIMEOUT_S",
    "MIGRATIONS",
    "alembic_config",
    "changed",
    "dialect_insert",
    "make_engine",
    "make_sessionmaker",
    "migrate",
]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
CONNECT_TIMEOUT_S = 5  # a database server that does not answer a connection attempt in this long is down


def make_engine(url: str, *, schema: str | None = None, **kwargs: Any) -> Engine:
    """An engine for ``url``. ``schema`` (PostgreSQL) puts every table in that schema: how tests share a database.

    SQLite gets WAL (readers never wait for the writer), a 30 s busy timeout (two sweeps or a
    sweep and ingestion take turns instead of failing), and enforced foreign keys. A database
    server's pooled connections are pinged before use, so connections the server (or the network)
    dropped are replaced instead of failing a request after it is back; connecting gives up after
    ``CONNECT_TIMEOUT_S``, so a server that does not answer costs a request an error, never a hang.
    """
    parsed = make_url(url)
    connect_args: dict[str, Any] = kwargs.pop("connect_args", {})
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        connect_args.setdefault("timeout", 30)
        connect_args.setdefault("check_same_thread", False)
    else:
        kwargs.setdefault("pool_pre_ping", True)
        if parsed.get_backend_name() == "postgresql":
            connect_args.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
        if schema is not None:
            connect_args["options"] = f"-csearch_path={schema}"
    engine = create_engine(parsed, connect_args=connect_args, **kwargs)
    if parsed.get_backend_name() == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (idempotent: an up-to-date database is left alone)."""
    command.upgrade(alembic_config(engine), revision)


def changed(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE changed: how a conditional state transition tells who won."""
    return int(cast("CursorResult[Any]", result).rowcount)


def dialect_insert(session: Session) -> Any:
    """The session's database's own INSERT, which has ``ON CONFLICT`` (SQLite and PostgreSQL both do)."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
