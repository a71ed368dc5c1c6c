"""The local Airflow's configuration, the pools command, and the package's public surface."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import weiflow.airflow
from weiflow.airflow.__main__ import main
from weiflow.airflow.local import LOCAL_SETTINGS, LocalAirflow


def local(tmp_path: Path, **kwargs: object) -> LocalAirflow:
    return LocalAirflow(
        home=tmp_path / "home",
        specs=tmp_path / "specs",
        loader=tmp_path / "dags" / "weiflow_dags.py",
        var_dir=tmp_path / "var",
        port=18999,
        **kwargs,  # type: ignore[arg-type]
    )


def test_every_server_binds_to_localhost_and_metadata_default_to_sqlite(tmp_path: Path) -> None:
    env = local(tmp_path).env(base={"AIRFLOW__CORE__EXECUTOR": "CeleryExecutor"})
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18999/execution/"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{tmp_path / 'home' / 'airflow.db'}"
    assert env["AIRFLOW_HOME"] == str(tmp_path / "home") and env["WEIFLOW_VAR_DIR"] == str(tmp_path / "var")
    assert '"classpath": "weiflow.airflow.bundle.SpecBundle"' in env["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"]


def test_a_configured_database_is_kept(tmp_path: Path) -> None:
    postgres = "postgresql+psycopg://airflow@127.0.0.1:5432/airflow"
    env = local(tmp_path).env(base={"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": postgres})
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == postgres
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"] == postgres  # not the asyncpg Airflow would guess


def test_local_settings_preload_weiflow_but_leave_a_users_file_alone(tmp_path: Path) -> None:
    airflow = local(tmp_path)
    path = airflow.write_local_settings()
    assert path.read_text() == LOCAL_SETTINGS
    exec(compile(LOCAL_SETTINGS, str(path), "exec"), {})  # runs without importing Airflow itself
    path.write_text("def task_policy(task): ...\n")
    airflow.write_local_settings()
    assert path.read_text() == "def task_policy(task): ...\n"


def test_setup_creates_the_priority_pools(airflow_db: Path) -> None:
    from airflow.models.pool import Pool

    assert main(["setup", "--slots", "high=3"]) == 0  # `airflow pools import` in this environment
    slots = {name: Pool.get_pool(name).slots for name in ("weiflow_high", "weiflow_medium", "weiflow_low")}  # type: ignore[union-attr]
    assert slots == {"weiflow_high": 3, "weiflow_medium": 8, "weiflow_low": 4}


@pytest.mark.parametrize("bad", ["urgent=3", "high=lots", "high"])
def test_setup_refuses_bad_slots(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["setup", "--slots", bad]) == 2
    assert "expected high=N, medium=N or low=N" in capsys.readouterr().err


def test_exported_members_exist() -> None:
    assert weiflow.airflow.__all__
    for name in weiflow.airflow.__all__:
        assert hasattr(weiflow.airflow, name), name


@pytest.mark.postgres
@pytest.mark.integration
def test_metadata_on_postgresql(tmp_path: Path) -> None:
    psycopg = pytest.importorskip("psycopg")
    server = os.environ.get("WEIFLOW_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    plain = server.replace("postgresql+psycopg://", "postgresql://", 1)
    try:
        admin = psycopg.connect(plain, autocommit=True, connect_timeout=2)
    except psycopg.Error as exc:
        pytest.skip(f"PostgreSQL not reachable at {server} (set WEIFLOW_TEST_POSTGRES_URL): {exc}")
    # A database of its own: Airflow's tables (its alembic_version too) must not meet anyone else's.
    name = f"wf_airflow_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = urlsplit(server)._replace(path=f"/{name}").geturl()
        local(tmp_path, database_url=url).prepare(pool_slots={"low": 2})
        with psycopg.connect(urlsplit(plain)._replace(path=f"/{name}").geturl()) as connection:
            pools = dict(connection.execute("SELECT pool, slots FROM slot_pool WHERE pool LIKE 'weiflow_%'").fetchall())
        assert pools == {"weiflow_high": 16, "weiflow_medium": 8, "weiflow_low": 2}
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
