"""Fixtures for the Airflow integration.

Airflow reads its configuration once, when it is first imported, so this module points
``AIRFLOW_HOME`` at a fresh temporary directory before anything imports airflow: no test
reads or writes the developer's own Airflow.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest

from tests.conftest import EXAMPLES, REPO
from tests.secrets_plugin import register_log_root, register_secret

_HOME = Path(tempfile.mkdtemp(prefix="weiflow-airflow-tests-"))
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
register_log_root(_HOME)
os.environ.update(
    {
        "AIRFLOW_HOME": str(_HOME),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_HOME / 'airflow.db'}",
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH": str(_HOME / "dag_bundles"),
    }
)
for _key in ("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", "AIRFLOW_CONFIG"):
    os.environ.pop(_key, None)

pytest.importorskip("airflow", reason="the airflow extra is not installed")

if TYPE_CHECKING:
    from weiflow.airflow.local import LocalAirflow

LOADER = REPO / "dags" / "weiflow_dags.py"


@pytest.fixture
def spec_dir(tmp_path: Path) -> Callable[..., Path]:
    """A folder of specs: copies of the named examples (with their Python steps) and extra files."""

    def make(*examples: str, extra: dict[str, str] | None = None) -> Path:
        folder = tmp_path / "specs"
        folder.mkdir(exist_ok=True)
        for name in examples:
            shutil.copy(EXAMPLES / name, folder / name)
        shutil.copy(EXAMPLES / "activity_steps.py", folder / "activity_steps.py")
        for name, text in (extra or {}).items():
            (folder / name).write_text(text, encoding="utf-8")
        return folder

    return make


@pytest.fixture(scope="session")
def airflow_db() -> Iterator[Path]:
    """Airflow's metadata tables, created once in the session's SQLite database."""
    with warnings.catch_warnings():
        # Airflow's database code imports its API server, and so starlette's test client, which
        # warns about its httpx dependency: not a warning about anything here.
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from airflow.utils.db import initdb

        initdb()
    yield _HOME


# --- a live Airflow: API server, scheduler and DAG processor on 127.0.0.1 ----------------------

SLOW_SPEC = """<pipeline xmlns="urn:weiflow:pipeline:1" name="slow_node">
  <datasets><dataset name="out" uri="${storage}/slow/${run_id}" format="files"/></datasets>
  <node id="wait" engine="python">
    <module id="m" type="call" callable="slow_steps:wait" writes="out" pids="PIDS"/>
  </node>
</pipeline>
"""

SLOW_STEPS = """import os, subprocess, time
from pathlib import Path

def wait(step):
    child = subprocess.Popen(["sleep", "300"])  # work the node started: must not outlive the task
    Path(step.attrs["pids"]).write_text(f"{os.getpid()} {child.pid}")
    with step.write("out") as out:
        time.sleep(300)
"""


# A node whose first attempt works for five minutes and whose later attempts finish at once; each attempt notes
# its pid, and whether an earlier attempt was still alive when it began (two attempts side by side).
ORPHAN_SPEC = """<pipeline xmlns="urn:weiflow:pipeline:1" name="orphan_node" retries="1">
  <datasets><dataset name="out" uri="${storage}/orphan/${run_id}" format="files"/></datasets>
  <node id="work" engine="python">
    <module id="m" type="call" callable="orphan_steps:work" writes="out" notes="NOTES"/>
  </node>
</pipeline>
"""

ORPHAN_STEPS = """import os, time
from pathlib import Path

def alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"

def work(step):
    notes = Path(step.attrs["notes"]) / step.run_id.replace(":", "_").replace("+", "_")
    notes.mkdir(parents=True, exist_ok=True)
    earlier = [int(p.name) for p in notes.iterdir() if p.name.isdigit()]
    (notes / str(os.getpid())).write_text(" ".join(str(pid) for pid in earlier if alive(pid)))
    with step.write("out") as out:
        if not earlier:
            time.sleep(300)
        (out.path / "by.txt").write_text(str(os.getpid()))
"""


class Api:
    """Airflow's REST API v2, authenticated with a JWT from ``/auth/token`` (simple auth manager)."""

    def __init__(self, url: str, user: str, password: str) -> None:
        self.url = url
        token = self.call("POST", "/auth/token", {"username": user, "password": password}, auth=False)
        self.token = str(token["access_token"])
        register_secret(self.token)

    def call(self, method: str, path: str, body: object = None, *, auth: bool = True) -> Any:
        request = urllib.request.Request(self.url + path, method=method)
        request.add_header("Content-Type", "application/json")
        if auth:
            request.add_header("Authorization", f"Bearer {self.token}")
        data = None if body is None else json.dumps(body).encode()
        try:
            with urllib.request.urlopen(request, data, timeout=30) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path}: HTTP {exc.code}: {exc.read().decode()[:2000]}") from None
        return json.loads(text) if text else None

    def get(self, path: str) -> Any:
        return self.call("GET", path)

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = 180.0, every: float = 1.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                result = check()
            except AssertionError:
                result = None
            if result:
                return result
            time.sleep(every)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")

    def run_state(self, dag_id: str, run_id: str) -> str:
        return str(self.get(f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}")["state"])

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 240.0) -> str:
        """The final state of a run, once it has one."""
        final = ("success", "failed")
        return str(
            self.wait_for(f"run {run_id}", lambda: (s := self.run_state(dag_id, run_id)) in final and s, timeout)
        )

    def wait_idle(self, dag_id: str, timeout: float = 240.0) -> None:
        """Until no run of the DAG is queued or running (the scheduled run that unpausing starts)."""

        def idle() -> bool:
            runs = self.get(f"/api/v2/dags/{dag_id}/dagRuns?state=queued&state=running")["dag_runs"]
            return not runs

        self.wait_for(f"{dag_id} to be idle", idle, timeout, every=2.0)


LIVE_DAGS = ("user_activity_report", "slow_node", "orphan_node")
LIVE_PASSWORD = "s3cret-for-tests"
register_secret(LIVE_PASSWORD)


@dataclass
class Live:
    airflow: LocalAirflow
    api: Api
    specs: Path
    var_dir: Path
    pids: Path
    orphan_notes: Path


@pytest.fixture(scope="session")
def live_airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """Airflow started for this session on a free port with AIRFLOW_HOME in a temporary directory."""
    from weiflow.airflow.local import LocalAirflow
    from weiflow.processes import free_port

    root = tmp_path_factory.mktemp("live-airflow")
    specs = root / "specs"
    specs.mkdir()
    for name in ("user_activity_report.xml", "activity_steps.py"):
        shutil.copy(EXAMPLES / name, specs / name)
    bad = (EXAMPLES / "user_activity_report.xml").read_text().replace('reads="events"', 'reads="event"')
    (specs / "broken.xml").write_text(bad.replace('name="user_activity_report"', 'name="broken_report"'))
    (specs / "slow_node.xml").write_text(SLOW_SPEC.replace("PIDS", str(root / "pids")))
    (specs / "slow_steps.py").write_text(SLOW_STEPS)
    (specs / "orphan_node.xml").write_text(ORPHAN_SPEC.replace("NOTES", str(root / "orphan-notes")))
    (specs / "orphan_steps.py").write_text(ORPHAN_STEPS)
    home = root / "home"
    airflow = LocalAirflow(
        home=home,
        specs=specs,
        loader=LOADER,
        var_dir=root / "var",
        port=free_port(),
        password=LIVE_PASSWORD,
        database_url=f"sqlite:///{home / 'airflow.db'}",
        refresh_interval=5,
        extra_env={
            # WeiFlow's run listener (weiflow's airflow.plugins entry point) looks for queued runs every second.
            "AIRFLOW__WEIFLOW__QUEUED_RUNS_POLL_INTERVAL": "1",
            # A lost worker is noticed after 30 s without its heartbeat (Airflow: 300), looked for every 2 s, and
            # its task retried a second later (Airflow: 300 s).
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
            "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": "1",
        },
    )
    airflow.prepare()
    with airflow:
        try:
            airflow.wait_ready()
        except (RuntimeError, TimeoutError) as exc:
            raise AssertionError(f"{exc}\n" + "\n".join(airflow.tail(name) for name in airflow.processes)) from None
        api = Api(airflow.url, airflow.user, airflow.password)
        api.wait_for("the DAGs to be parsed", lambda: all(api.get(f"/api/v2/dags/{d}") for d in LIVE_DAGS))
        yield Live(airflow, api, specs, root / "var", root / "pids", root / "orphan-notes")
