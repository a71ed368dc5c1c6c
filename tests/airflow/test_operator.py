"""The operator runs ``weiflow run-node`` as a real subprocess, and on_kill leaves nothing behind."""

from __future__ import annotations

import os
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from operators import WeiflowNodeOperator
from tests.conftest import alive
from weiflow.tracking import read_events

pytestmark = pytest.mark.integration

STEPS = """
import os, signal, subprocess, sys, time
from pathlib import Path

def hello(step):
    print(f"hello from {step.node}: users={step.params['users']} day={step.params['day']}", flush=True)

def boom(step):
    raise RuntimeError("boom")

def slow(step):
    if step.attrs.get("stubborn") == "true":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a node that does not stop when asked
    child = subprocess.Popen(["sleep", "300"])  # work the node started: must not outlive the task
    Path(step.attrs["pids"]).write_text(f"{os.getpid()} {child.pid}")
    with step.write(step.attrs["output"]) as out:
        (out.path / "part").write_text("x")
        time.sleep(300)
"""

SPEC = """<pipeline xmlns="urn:weiflow:pipeline:1" name="ops">
  <params>
    <param name="day" type="date" default="${ds}"/>
    <param name="users" type="int" default="5"/>
  </params>
  <datasets>
    <dataset name="out" uri="${storage}/ops/out/${run_id}" format="files"/>
    <dataset name="out2" uri="${storage}/ops/out2/${run_id}" format="files"/>
  </datasets>
  <node id="hello" engine="python"><module id="m" type="call" callable="op_steps:hello"/></node>
  <node id="boom" engine="python"><module id="m" type="call" callable="op_steps:boom"/></node>
  <node id="slow" engine="python">
    <module id="m" type="call" callable="op_steps:slow" writes="out" output="out" pids="PIDS" stubborn="false"/>
  </node>
  <node id="stubborn" engine="python">
    <module id="m" type="call" callable="op_steps:slow" writes="out2" output="out2" pids="PIDS" stubborn="true"/>
  </node>
</pipeline>
"""


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "op_steps.py").write_text(STEPS)
    path = folder / "ops.xml"
    path.write_text(SPEC.replace("PIDS", str(tmp_path / "pids")))
    return path


def context(run_id: str = "manual__2026-11-20T10:00:00+00:00", try_number: int = 1, **params: Any) -> Any:
    logical = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    return {
        "run_id": run_id,
        "logical_date": logical,
        "dag_run": SimpleNamespace(run_after=logical),
        "params": {"day": None, "users": 5, **params},
        "ti": SimpleNamespace(try_number=try_number),
    }


def operator(spec: Path, node: str, **kwargs: Any) -> WeiflowNodeOperator:
    return WeiflowNodeOperator(task_id=node, spec=str(spec), node=node, spec_params=["day", "users"], **kwargs)


def test_the_command_line_carries_run_id_date_params_and_attempt(spec: Path) -> None:
    ctx = context(try_number=3, users=40)
    ctx["params"]["day"] = "2026-11-19"
    argv = operator(spec, "hello").command_line(ctx)
    assert argv == [
        sys.executable, "-m", "weiflow", "run-node", str(spec), "--node", "hello",
        "--run-id", "manual__2026-11-20T10:00:00+00:00", "--ds", "2026-11-20",
        "--param", "day=2026-11-19", "--param", "users=40", "--attempt", "3",
    ]  # fmt: skip
    ctx = context(users=True)
    ctx["logical_date"] = None  # an Airflow 3 manual run may have none: the run's run_after date counts
    ctx["dag_run"] = SimpleNamespace(run_after=datetime(2026, 11, 21, 1, 0, tzinfo=UTC))
    argv = operator(spec, "hello").command_line(ctx)
    assert argv[argv.index("--ds") + 1] == "2026-11-21"
    assert "day=None" not in " ".join(argv) and "users=true" in argv  # empty params resolve in run-node


def test_execute_runs_the_node_and_streams_its_output(
    spec: Path, isolated_var: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    operator(spec, "hello").execute(context(run_id="r1", try_number=2, users=7))
    log = capfd.readouterr().out  # the task log: Airflow's structlog writes it to stdout here
    assert "hello from hello: users=7 day=2026-11-20" in log  # day: the default ${ds}, resolved by run-node
    assert "node 'hello' of run r1 succeeded" in log
    events = read_events(isolated_var / "runs" / "ops" / "r1.jsonl")
    assert [(e.kind, e.node, e.attempt) for e in events if e.kind.startswith("node.")] == [
        ("node.started", "hello", 2),
        ("node.succeeded", "hello", 2),
    ]


def test_a_failing_node_fails_the_task_and_a_refused_one_is_not_retried(spec: Path) -> None:
    with pytest.raises(AirflowException, match=r"node 'boom' failed \(run-node exit status 1") as failed:
        operator(spec, "boom").execute(context(run_id="r2"))
    assert not isinstance(failed.value, AirflowFailException)  # Airflow may retry it
    with pytest.raises(AirflowFailException, match="exit status 2"):
        operator(spec, "hello").execute(context(run_id="r3", users="many"))


def _run_until_started(
    op: WeiflowNodeOperator, ctx: Any, pids_file: Path
) -> tuple[threading.Thread, list[BaseException], int, int]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            op.execute(ctx)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 60
    while not pids_file.exists() or not pids_file.read_text():
        assert time.monotonic() < deadline and thread.is_alive(), errors
        time.sleep(0.05)
    node_pid, child_pid = map(int, pids_file.read_text().split())
    return thread, errors, node_pid, child_pid


def test_on_kill_stops_the_node_and_everything_it_started(spec: Path, tmp_path: Path, isolated_var: Path) -> None:
    op = operator(spec, "slow", kill_grace=10.0)
    thread, errors, node_pid, child_pid = _run_until_started(op, context(run_id="k1"), tmp_path / "pids")
    assert op._process is not None and node_pid == op._process.pid and alive(child_pid)
    started = time.monotonic()
    op.on_kill()
    thread.join(timeout=30)
    assert time.monotonic() - started < 5  # stopped on SIGTERM, well before the grace ran out
    assert op._process.returncode == 130  # run-node's own cancellation path
    assert not alive(node_pid) and not alive(child_pid)
    with pytest.raises(ProcessLookupError):
        os.killpg(node_pid, 0)  # the node's whole process group is gone
    assert len(errors) == 1 and "node 'slow' was cancelled" in str(errors[0])
    events = read_events(isolated_var / "runs" / "ops" / "k1.jsonl")
    assert [(e.kind, e.error) for e in events if e.kind == "node.failed"] == [("node.failed", "cancelled")]
    assert not (isolated_var / "storage" / "ops" / "out" / "k1").exists()  # nothing half-written


def test_on_kill_escalates_to_sigkill_when_the_node_ignores_sigterm(spec: Path, tmp_path: Path) -> None:
    op = operator(spec, "stubborn", kill_grace=1.5)
    thread, errors, node_pid, child_pid = _run_until_started(op, context(run_id="k2"), tmp_path / "pids")
    started = time.monotonic()
    op.on_kill()
    elapsed = time.monotonic() - started
    thread.join(timeout=30)
    assert 1.4 < elapsed < 6  # waited out the grace, then killed
    assert op._process is not None and op._process.returncode == -9
    assert not alive(node_pid) and not alive(child_pid)
    assert len(errors) == 1 and "cancelled" in str(errors[0])
