"""A real Airflow (API server, scheduler, DAG processor) started by the tests: trigger, watch, cancel."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.airflow.conftest import Live
from tests.airflow.test_operator import alive
from tests.reliability_plugin import long_run
from weiflow.tracking import read_events, run_log_path

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_specs_are_dags_pools_assets_and_import_errors(live_airflow: Live) -> None:
    api = live_airflow.api
    dag = api.get("/api/v2/dags/user_activity_report/details")
    assert dag["owners"] == ["growth"] and dag["catchup"] is False and {t["name"] for t in dag["tags"]} == {"weiflow"}
    assert set(dag["params"]) == {"day", "users", "min_events"}
    tasks = api.get("/api/v2/dags/user_activity_report/tasks")["tasks"]
    assert {t["task_id"]: sorted(t["downstream_task_ids"]) for t in tasks} == {
        "ingest": ["stats"],
        "stats": ["report"],
        "report": [],
    }
    assert {t["pool"] for t in tasks} == {"weiflow_low"}
    source = api.get("/api/v2/dagSources/user_activity_report")["content"]
    assert '# <pipeline xmlns="urn:weiflow:pipeline:1" name="user_activity_report"' in source  # the Code tab
    pools = {p["name"]: p["slots"] for p in api.get("/api/v2/pools")["pools"]}
    assert {"weiflow_high", "weiflow_medium", "weiflow_low"} <= set(pools)
    assets = {a["name"] for a in api.get("/api/v2/assets?limit=100")["assets"]}
    assert "${storage}/user_activity/events/${day}" in assets  # lineage: the datasets are Assets
    errors = api.wait_for(
        "the broken spec's import error",
        lambda: [e for e in api.get("/api/v2/importErrors")["import_errors"] if e["filename"] == "broken.py"],
    )
    assert "broken.xml:27:74: error: module 'load': unknown dataset 'event'" in errors[0]["stack_trace"]


def test_trigger_with_params_through_the_rest_api(live_airflow: Live) -> None:
    api = live_airflow.api
    # Paused, whatever an earlier test (the browser's) did with this session's Airflow.
    api.call("PATCH", "/api/v2/dags/user_activity_report", {"is_paused": True})
    run = api.call(
        "POST",
        "/api/v2/dags/user_activity_report/dagRuns",
        # A logical date of its own keeps this run's ${ds} datasets apart from the scheduled run
        # that unpausing starts.
        {"logical_date": "2026-11-10T00:00:00Z", "conf": {"users": 25, "min_events": 1}},
    )
    log = run_log_path(live_airflow.var_dir / "runs", "user_activity_report", run["dag_run_id"])
    # The DAG is paused: the run waits in Airflow's queue, and the control center hears of it
    # (with every dataset it will use) from WeiFlow's listener in the scheduler.
    queued = api.wait_for("the queued run's announcement", lambda: log.exists() and read_events(log), 60)
    assert (queued[0].kind, queued[0].detail.get("queued"), queued[0].attempt) == ("run.started", True, 1)
    report = live_airflow.var_dir / "storage" / "user_activity" / "report" / "2026-11-10"
    assert f"file://{report}" in queued[0].detail["uses"] and queued[0].detail["params"]["users"] == "25"
    api.call("PATCH", "/api/v2/dags/user_activity_report", {"is_paused": False})
    assert api.wait_run("user_activity_report", run["dag_run_id"]) == "success"
    events = read_events(log)
    assert [e.node for e in events if e.kind == "node.succeeded"] == ["ingest", "stats", "report"]
    lifecycle = [(e.kind, e.detail.get("queued"), e.attempt) for e in events if e.kind.startswith("run.")]
    assert lifecycle[:2] == [("run.started", True, 1), ("run.started", None, 1)]  # queued, then started
    assert lifecycle[-1] == ("run.succeeded", None, 1) and events[-1].kind == "run.succeeded"
    day_dir = live_airflow.var_dir / "storage" / "user_activity" / "events" / "2026-11-10"
    uids = {json.loads(line)["uid"] for part in day_dir.glob("part-*") for line in part.read_text().splitlines()}
    assert uids and max(int(uid[1:]) for uid in uids) < 25  # the run's users=25, not the default 200


def test_marking_a_running_task_failed_stops_its_node(live_airflow: Live) -> None:
    api = live_airflow.api
    api.call("PATCH", "/api/v2/dags/slow_node", {"is_paused": False})
    run = api.call("POST", "/api/v2/dags/slow_node/dagRuns", {"logical_date": None})
    run_id = run["dag_run_id"]
    pids = api.wait_for("the node to start", lambda: live_airflow.pids.exists() and live_airflow.pids.read_text())
    node_pid, child_pid = map(int, pids.split())
    assert alive(node_pid) and alive(child_pid)
    task = f"/api/v2/dags/slow_node/dagRuns/{quote(run_id, safe='')}/taskInstances/wait"
    api.call("PATCH", task, {"new_state": "failed"})  # what "Mark as failed" in the UI does
    marked = time.monotonic()
    api.wait_for("the node's processes to end", lambda: not alive(node_pid) and not alive(child_pid), 60, 0.2)
    assert time.monotonic() - marked < 30
    assert api.get(task)["state"] == "failed"
    events = read_events(run_log_path(live_airflow.var_dir / "runs", "slow_node", run_id))
    assert [(e.kind, e.error) for e in events if e.kind == "node.failed"] == [("node.failed", "cancelled")]
    # The DAG run fails with its task (maybe before the killed node has written its end), and the
    # run's end names the task.
    assert api.wait_run("slow_node", run_id, timeout=120) == "failed"
    events = read_events(run_log_path(live_airflow.var_dir / "runs", "slow_node", run_id))
    assert [(e.kind, e.error) for e in events if e.kind.startswith("run.") and e.kind != "run.started"] == [
        ("run.failed", "failed task: wait")
    ]


# Each case is a run of its own through the live Airflow: in CI the lost worker, which nothing but the scheduler's
# heartbeat check notices (~37 s), and the task process stopped (~5 s); the task process killed (~15 s) too in the
# long run.
WORKER_FAULTS = ["SIGKILL to the worker", "SIGTERM to the task process"]
if long_run():
    WORKER_FAULTS.append("SIGKILL to the task process")


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.reliability(
    area="retry",
    component="Airflow worker (live scheduler, LocalExecutor)",
    fault="mid-node: SIGKILL to the worker and its task process; SIGTERM to the task process; in the long run "
    "also SIGKILL to the task process alone; Airflow retries",
    proves="try 2 never runs beside try 1: an orphaned run-node is stopped (superseded) before try 2's work "
    "starts, a SIGTERMed task stops its node itself (on_kill); the run succeeds on try 2; the dataset is try 2's, "
    "complete",
)
@pytest.mark.parametrize("fault", WORKER_FAULTS)
def test_a_task_retried_after_its_worker_failed_never_runs_beside_its_first_try(live_airflow: Live, fault: str) -> None:
    api = live_airflow.api
    api.call("PATCH", "/api/v2/dags/orphan_node", {"is_paused": False})
    run_id = api.call("POST", "/api/v2/dags/orphan_node/dagRuns", {"logical_date": None})["dag_run_id"]
    notes = live_airflow.orphan_notes / run_id.replace(":", "_").replace("+", "_")
    [first] = map(int, api.wait_for("try 1 to work", lambda: notes.is_dir() and [p.name for p in notes.iterdir()]))
    task_process = parent_of(first)  # run-node's parent runs the operator; its parent is Airflow's worker
    worker = parent_of(task_process)
    assert "airflow worker -- LocalExecutor" in Path(f"/proc/{worker}/cmdline").read_text()
    if fault == "SIGTERM to the task process":
        # Airflow's task runner calls the operator's on_kill: the node is stopped before the task fails.
        os.kill(task_process, signal.SIGTERM)
        api.wait_for("try 1's node to stop", lambda: not alive(first), 30, 0.1)
    else:
        # The task process: its supervisor reports the death at once. The worker: nothing reports it; the
        # scheduler finds the task's heartbeat missing (30 s here) and fails it. Either way the node lives on.
        for pid in [task_process] if fault == "SIGKILL to the task process" else [worker, task_process]:
            os.kill(pid, signal.SIGKILL)
        api.wait_for("the task process to go", lambda: not alive(task_process), 10, 0.1)
        assert alive(first)  # an orphan: what the retry meets

    assert api.wait_run("orphan_node", run_id, timeout=240) == "success"
    task = api.get(f"/api/v2/dags/orphan_node/dagRuns/{quote(run_id, safe='')}/taskInstances/work")
    assert (task["state"], task["try_number"]) == ("success", 2)
    assert not alive(first)
    attempts = {int(p.name): p.read_text() for p in notes.iterdir()}
    [second] = set(attempts) - {first}
    assert attempts == {first: "", second: ""}  # neither found another attempt alive when it began
    events = read_events(run_log_path(live_airflow.var_dir / "runs", "orphan_node", run_id))
    node = [e for e in events if e.node == "work" and e.module is None]
    assert [(e.kind, e.attempt, e.error) for e in node] == [
        ("node.started", 1, None),
        ("node.failed", 1, "cancelled"),  # SIGTERM from try 2, or from on_kill: it cancelled its work, then ended
        ("node.started", 2, None),
        ("node.succeeded", 2, None),
    ]
    superseded = node[2].detail.get("superseded")
    if fault == "SIGTERM to the task process":
        assert superseded is None  # nothing was left to stop
    else:
        assert (superseded["attempt"], superseded["pid"]) == (1, first)
    written = live_airflow.var_dir / "storage" / "orphan" / run_id
    assert (written / "by.txt").read_text() == str(second) and (written / "_SUCCESS").is_file()
