"""``weiflow up``: the whole platform started, wired, used through Airflow's REST API, and stopped."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import pytest

from tests.conftest import EXAMPLES, REPO
from tests.modelrepo.conftest import FEATURE_MAP
from weiflow.modelrepo.contracts import FEATURE_MAP_PATH
from weiflow.processes import free_port, stop_groups

pytest.importorskip("airflow", reason="the airflow extra is not installed")
import psutil  # type: ignore[import-untyped]  # Airflow's dependency: there whenever Airflow is

from tests.airflow.conftest import Api

# A deploy-only pipeline: publishes a tiny SavedModel (tests/engines/deploy/savedmodels.py) to ${storage}/models.
PUBLISH_SPEC = """<pipeline xmlns="urn:weiflow:pipeline:1" name="publish_ctr" owner="ranking">
  <datasets><dataset name="model" uri="file://EXPORT" format="savedmodel" external="true"/></datasets>
  <node id="pub" engine="deploy"><module id="p" type="publish" dataset="model" model-name="ctr" traffic="100"/></node>
</pipeline>
"""
READY_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 60.0


@dataclass
class Up:
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    banner: str
    ports: dict[str, int]

    def line(self, label: str) -> str:
        found = re.search(rf"^  {label}\s+(.*)$", self.banner, re.MULTILINE)
        assert found, f"no '{label}' line in:\n{self.banner}"
        return found.group(1)

    @property
    def credentials(self) -> dict[str, str]:
        """The login the banner points to (it prints the file, never the password or the token)."""
        found = re.search(r"password in (\S+)\)", self.line("Airflow UI"))
        assert found and f"API token in {found.group(1)}" in self.line("center API docs")
        kept: dict[str, str] = json.loads(Path(found.group(1)).read_text())
        assert kept["password"] not in self.banner and kept["token"] not in self.banner
        return kept

    @property
    def token(self) -> str:
        return self.credentials["token"]

    @property
    def password(self) -> str:
        return self.credentials["password"]

    def descendants(self) -> list[psutil.Process]:
        children: list[psutil.Process] = psutil.Process(self.process.pid).children(recursive=True)
        return children


def _environment(var_dir: Path) -> dict[str, str]:
    """The test's environment without the developer's WeiFlow or Airflow settings (or the test session's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEIFLOW_", "AIRFLOW"))}
    env["WEIFLOW_VAR_DIR"] = str(var_dir)
    return env


def _specs(root: Path, built_models: Path) -> Path:
    """The example pipeline of Python steps, and a pipeline that publishes a tiny real model."""
    specs = root / "specs"
    specs.mkdir()
    for spec_file in ("user_activity_report.xml", "activity_steps.py"):
        shutil.copy(EXAMPLES / spec_file, specs / spec_file)
    export = root / "export"
    version = export / "ctr" / "1700000001"  # laid out as the export module writes a model
    shutil.copytree(built_models / "good", version)
    (version / FEATURE_MAP_PATH).parent.mkdir(exist_ok=True)
    (version / FEATURE_MAP_PATH).write_text(FEATURE_MAP)
    (specs / "publish_ctr.xml").write_text(PUBLISH_SPEC.replace("EXPORT", str(export)))
    return specs


def _start(root: Path, name: str) -> Up:
    ports = {"center": free_port(), "airflow": free_port(), "serve": free_port()}
    specs = root / "specs"
    stdout, stderr = root / f"{name}.out", root / f"{name}.err"
    argv = [
        sys.executable,
        "-m",
        "weiflow",
        "up",
        f"--project={REPO}",
        f"--specs={specs}",
        f"--center-port={ports['center']}",
        f"--airflow-port={ports['airflow']}",
        f"--serve-port={ports['serve']}",
    ]
    with stdout.open("wb") as out, stderr.open("wb") as err:
        # A session of its own: the test's clean-up reaches its whole group, whatever happens.
        process = subprocess.Popen(argv, env=_environment(root / "var"), stdout=out, stderr=err, start_new_session=True)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while "Ctrl-C stops everything" not in stdout.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_groups([process], grace_s=30)
            raise AssertionError(f"weiflow up did not come up:\n{stderr.read_text()[-4000:]}")
        time.sleep(0.5)
    return Up(process, stdout, stderr, stdout.read_text(), ports)


@pytest.fixture
def up_root(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    # Whatever a failed assertion left: weiflow up's group (each child is in a group of its own, and dies with it).
    for process in psutil.process_iter():
        try:
            if process.environ().get("WEIFLOW_VAR_DIR") == str(tmp_path / "var"):
                process.kill()
        except psutil.Error:
            continue


def _assert_all_gone(processes: list[psutil.Process]) -> None:
    # psutil.Process compares its start time too, so a reused pid does not count as alive.
    _, alive = psutil.wait_procs(processes, timeout=10)
    assert not alive, f"left running: {[(p.pid, p.cmdline()) for p in alive]}"


@pytest.mark.integration
@pytest.mark.slow
def test_up_runs_dags_that_reach_the_center_and_the_service_and_stops_everything(
    up_root: Path, built_models: Path
) -> None:
    _specs(up_root, built_models)
    up = _start(up_root, "first")
    started = time.monotonic()
    center = f"http://127.0.0.1:{up.ports['center']}"
    serve = f"http://127.0.0.1:{up.ports['serve']}"
    credentials = up_root / "var" / "up" / "credentials.json"
    assert credentials.stat().st_mode & 0o777 == 0o600
    assert up.token in credentials.read_text() and up.password in credentials.read_text()
    auth = {"Authorization": f"Bearer {up.token}"}
    assert httpx.get(f"{center}/api/v1/me", headers=auth).json()["role"] == "admin"
    # The repository is empty: the service answers, ready, and knows no model yet.
    assert httpx.get(f"{serve}/v2/health/ready").status_code == 200
    assert httpx.get(f"{serve}/v1/models/feed_ctr").status_code == 404
    assert "no model yet" in up.line("prediction service")

    api = Api(f"http://127.0.0.1:{up.ports['airflow']}", "admin", up.password)
    runs = {}
    for dag, conf in (("user_activity_report", {"users": 25, "min_events": 1}), ("publish_ctr", {})):
        api.wait_for(f"{dag} to be parsed", partial(api.get, f"/api/v2/dags/{dag}"), 120)
        api.call("PATCH", f"/api/v2/dags/{dag}", {"is_paused": False})
        body = {"logical_date": "2026-11-10T00:00:00Z", "conf": conf}
        runs[dag] = api.call("POST", f"/api/v2/dags/{dag}/dagRuns", body)["dag_run_id"]
    for dag, run_id in runs.items():
        assert api.wait_run(dag, run_id) == "success", dag

    def runs_in_center() -> bool:
        reported = httpx.get(f"{center}/api/v1/runs", headers=auth).json()["items"]
        succeeded = {(r["pipeline"], r["run_id"]) for r in reported if r["state"] == "succeeded"}
        return set(runs.items()) <= succeeded

    api.wait_for("both runs to reach the center as succeeded", runs_in_center, 60)

    def scored() -> httpx.Response | None:
        answer = httpx.post(f"{serve}/v1/models/ctr:score", json={"instances": [{"age": 30, "city": "bj"}]})
        return answer if answer.status_code == 200 else None

    # The publish reached the running service: it loads version 1 at its next poll and scores raw rows.
    answer = api.wait_for("the service to serve the published model", scored, 120)
    assert answer.headers["X-Model-Version"] == "1" and 0 < answer.json()["scores"][0] < 1
    print(
        f"weiflow up: two DAG runs through Airflow to the center and the service in {time.monotonic() - started:.0f} s"
    )

    processes = up.descendants()
    assert len(processes) >= 5  # the center, the service, the API server, the scheduler, the DAG processor
    up.process.send_signal(signal.SIGINT)
    stopping = time.monotonic()
    assert up.process.wait(STOP_TIMEOUT_S) == 0
    _assert_all_gone(processes)
    print(f"weiflow up: stopped in {time.monotonic() - stopping:.1f} s")
    assert "stopped 5 process group(s)" in up.stderr.read_text()

    # Started again over the same var dir: the same login; a child that dies stops everything, exit 1.
    again = _start(up_root, "second")
    assert (again.token, again.password) == (up.token, up.password)
    processes = again.descendants()
    (service,) = [p for p in processes if "serve" in p.cmdline() and "--repository" in " ".join(p.cmdline())]
    service.kill()
    assert again.process.wait(STOP_TIMEOUT_S) == 1
    _assert_all_gone(processes)
    assert "prediction service exited with status -9" in again.stderr.read_text()


def test_a_port_taken_fails_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken = listener.getsockname()[1]
        done = subprocess.run(
            [
                *(sys.executable, "-m", "weiflow", "up", f"--project={REPO}"),
                *(f"--center-port={free_port()}", f"--serve-port={free_port()}", f"--airflow-port={taken}"),
            ],
            env=_environment(tmp_path / "var"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 2
    assert f"port {taken} on 127.0.0.1 is taken (something listens on it): pass --airflow-port" in done.stderr
    assert not (tmp_path / "var").exists()  # nothing prepared, nothing started
