"""Airflow 3's plugins manager loads the center's plugin and its API server mounts the console at /weiflow-center."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from weiflow.center.db import make_engine, migrate

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("airflow") is None, reason="apache-airflow is not installed (the [airflow] extra)"
)

REPO = Path(__file__).resolve().parents[2]

# In a child process: Airflow reads its configuration (plugins folder, home) once per process.
CHECK = textwrap.dedent("""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from airflow import plugins_manager
    from airflow.api_fastapi.app import init_plugins

    apps, _ = plugins_manager.get_fastapi_plugins()
    assert [(a["name"], a["url_prefix"]) for a in apps] == [("WeiFlow center", "/weiflow-center")], apps
    app = FastAPI()
    init_plugins(app)  # what Airflow's API server does with every plugin's fastapi_apps
    client = TestClient(app)
    login = client.get("/weiflow-center/login")
    assert login.status_code == 200 and 'action="/weiflow-center/login"' in login.text, login.text[:500]
    assert client.get("/weiflow-center/api/v1/me").status_code == 401
    print("mounted")
""")


def test_airflow_plugins_manager_loads_the_plugin_and_mounts_the_center(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'center.db'}"
    migrate(make_engine(database))
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "weiflow_center.py").write_text("from weiflow.center.airflow_plugin import WeiFlowCenterPlugin\n")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'airflow.db'}",
        "WEIFLOW_DATABASE_URL": database,
        "PYTHONPATH": str(REPO),
    }
    result = subprocess.run(
        [sys.executable, "-c", CHECK], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "mounted" in result.stdout, result.stderr[-3000:]
