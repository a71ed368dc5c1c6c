"""A local Airflow for WeiFlow, ready out of the box: what ``./dev airflow`` and the tests start.

Three Airflow 3 components, each its own process (and process group), all bound to 127.0.0.1:

- the API server (UI, REST API v2, and the execution API that task workers call);
- the scheduler, with the LocalExecutor (``--skip-serve-logs``: its log server would listen on
  every interface, and the API server reads task logs from the same disk anyway);
- the DAG processor, reading WeiFlow's :class:`~weiflow.airflow.bundle.SpecBundle`.

``AIRFLOW_HOME`` is ``<var_dir>/airflow``; metadata go to SQLite there unless
``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`` names another database (PostgreSQL). The simple auth
manager gets one admin user with a known password, written to its passwords file before the
API server first starts (else it would generate and print a random one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

from weiflow.airflow.loader import BUNDLE_CLASSPATH
from weiflow.airflow.mapping import DEFAULT_POOL_SLOTS, pool_for
from weiflow.processes import stop_groups

__all__ = ["COMPONENTS", "LOCAL_SETTINGS", "LocalAirflow", "pools_document"]

COMPONENTS: Mapping[str, tuple[str, ...]] = {
    "api-server": ("api-server",),
    "scheduler": ("scheduler", "--skip-serve-logs"),
    "dag-processor": ("dag-processor",),
}

BUNDLE_NAME = "weiflow"

# Airflow imports ``airflow_local_settings`` (from $AIRFLOW_HOME/config) in every one of its
# processes at start-up. The DAG processor forks one process per DAG file from its manager, so
# with WeiFlow's core imported there, a spec's parse costs milliseconds instead of an import
# (bench/bench_dags.py measures both).
LOCAL_SETTINGS_MARK = "# Written by WeiFlow's local Airflow (python -m weiflow.airflow start)."
LOCAL_SETTINGS = f"""{LOCAL_SETTINGS_MARK}
# Imports WeiFlow's core once per Airflow process, so that the DAG processor's forked parsing
# processes inherit it instead of importing it again for every spec file.
import weiflow.dag
import weiflow.registry

weiflow.registry.default_registry()  # the engines' module declarations, loaded once

__all__: list[str] = []  # no cluster policies here
"""


def pools_document(slots: Mapping[str, int] | None = None) -> dict[str, dict[str, object]]:
    """The priority pools in ``airflow pools import`` form."""
    chosen = {**DEFAULT_POOL_SLOTS, **(slots or {})}
    return {
        pool_for(priority): {
            "slots": count,
            "description": f'WeiFlow pipelines with priority="{priority}"',
            "include_deferred": False,
        }
        for priority, count in chosen.items()
    }


@dataclass
class LocalAirflow:
    """One local Airflow: its configuration (``env``), its setup, and its processes.

    :param home: ``AIRFLOW_HOME``.
    :param specs: the folder of WeiFlow specs the DAG bundle serves.
    :param loader: WeiFlow's DAG loader file (``dags/weiflow_dags.py``).
    :param var_dir: WeiFlow's var directory for the runs' storage and run logs.
    """

    home: Path
    specs: Path
    loader: Path
    var_dir: Path
    port: int = 8080
    user: str = "admin"
    password: str = "admin"
    database_url: str | None = None
    refresh_interval: int = 30
    parallelism: int = 8
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment every Airflow process of this instance runs with."""
        env = dict(os.environ if base is None else base)
        bundle = {
            "name": BUNDLE_NAME,
            "classpath": BUNDLE_CLASSPATH,
            "kwargs": {
                "specs": str(self.specs),
                "loader": str(self.loader),
                "refresh_interval": self.refresh_interval,
            },
        }
        database = self.database_url or env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database or f"sqlite:///{self.home / 'airflow.db'}",
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                # The LocalExecutor starts this many worker processes up front (Airflow's default: 32).
                "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.loader.parent),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{self.user}:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__BASE_URL": self.url,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps([bundle]),
                "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH": str(self.home / "dag_bundles"),
                "WEIFLOW_VAR_DIR": str(self.var_dir),
            }
        )
        url = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        if url.startswith("postgresql+psycopg://") and not env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"):
            # Airflow derives an asyncpg URL for its async engine; psycopg 3 does async by itself.
            env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"] = url
        env.update(self.extra_env)
        return env

    def _airflow(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "airflow", *args]

    def prepare(self, pool_slots: Mapping[str, int] | None = None) -> None:
        """Create the home, the admin's password, the metadata tables and the priority pools."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        passwords = self.home / "passwords.json"
        passwords.write_text(json.dumps({self.user: self.password}) + "\n", encoding="utf-8")
        passwords.chmod(0o600)
        self.write_local_settings()
        env = self.env()
        self._check_call(self._airflow("db", "migrate"), env)
        self.setup_pools(pool_slots, env)

    def write_local_settings(self) -> Path:
        """``airflow_local_settings.py`` that preloads WeiFlow; a user's own file is left alone."""
        path = self.home / "config" / "airflow_local_settings.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text(encoding="utf-8").startswith(LOCAL_SETTINGS_MARK):
            path.write_text(LOCAL_SETTINGS, encoding="utf-8")
        return path

    def setup_pools(self, pool_slots: Mapping[str, int] | None = None, env: Mapping[str, str] | None = None) -> None:
        """Create or update the pools ``weiflow_high``, ``weiflow_medium`` and ``weiflow_low``."""
        pools = self.home / "weiflow_pools.json"
        pools.write_text(json.dumps(pools_document(pool_slots), indent=2) + "\n", encoding="utf-8")
        self._check_call(self._airflow("pools", "import", str(pools)), env or self.env())

    def _check_call(self, argv: list[str], env: Mapping[str, str]) -> None:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[2:])} failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def start(self) -> None:
        """Start the components, each writing its output to ``<home>/logs/<component>.out``."""
        env = self.env()
        for name, args in COMPONENTS.items():
            with (self.logs / f"{name}.out").open("ab") as out:
                self.processes[name] = subprocess.Popen(
                    self._airflow(*args),
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    process_group=0,  # stop() reaches a component's workers through its group
                )

    def health(self) -> dict[str, object] | None:
        """The API server's ``/api/v2/monitor/health``, or None while it does not answer."""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v2/monitor/health", timeout=5) as response:
                body: dict[str, object] = json.load(response)
                return body
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Wait until the API server answers and reports a healthy scheduler and DAG processor."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(
                        f"Airflow {name} exited with status {process.returncode}; see {self.logs / (name + '.out')}"
                    )
            health = self.health()
            if health is not None and all(
                _healthy(health, part) for part in ("metadatabase", "scheduler", "dag_processor")
            ):
                return
            time.sleep(1.0)
        raise TimeoutError(f"Airflow at {self.url} not healthy after {timeout:.0f} s; logs in {self.logs}")

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM every component's process group; SIGKILL what is left after ``grace`` seconds."""
        stop_groups(list(self.processes.values()), grace)  # SIGKILL also reaches workers a component left
        self.processes.clear()

    def __enter__(self) -> LocalAirflow:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def tail(self, name: str, lines: int = 40) -> str:
        """The last lines a component wrote, for error messages."""
        path = self.logs / f"{name}.out"
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _healthy(health: Mapping[str, object], part: str) -> bool:
    status = health.get(part)
    return isinstance(status, dict) and status.get("status") == "healthy"


def print_banner(airflow: LocalAirflow, stream: IO[str] | None = None) -> None:
    out = stream or sys.stdout
    print(f"Airflow UI:   {airflow.url}", file=out)
    print(f"user:         {airflow.user}", file=out)
    print(f"password:     {airflow.password}", file=out)
    print(f"specs:        {airflow.specs}", file=out)
    print(f"AIRFLOW_HOME: {airflow.home}   (component logs in {airflow.logs})", file=out)
