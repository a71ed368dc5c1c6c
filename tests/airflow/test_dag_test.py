"""``dag.test()``: Airflow runs an example pipeline end to end, task by task, through run-node."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag

from tests.conftest import REPO
from weiflow.tracking import read_events, run_log_path

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_dag_test_runs_user_activity_report(
    airflow_db: Path, spec_dir: Callable[..., Path], isolated_var: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEIFLOW_SPECS", str(spec_dir("user_activity_report.xml")))
    dag = DagBag(dag_folder=REPO / "dags").dags["user_activity_report"]
    run = dag.test(run_conf={"users": 30, "min_events": 1})
    assert run.state == "success"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states == {"ingest": "success", "stats": "success", "report": "success"}

    events = read_events(run_log_path(isolated_var / "runs", "user_activity_report", run.run_id))
    assert [(e.kind, e.node) for e in events if e.kind in ("node.started", "node.succeeded")] == [
        (kind, node) for node in ("ingest", "stats", "report") for kind in ("node.started", "node.succeeded")
    ]
    day = run.logical_date.date().isoformat()  # ${day} defaults to ${ds}: the run's logical date
    storage = isolated_var / "storage" / "user_activity"
    assert all((storage / name / day / "_SUCCESS").exists() for name in ("events", "stats", "report"))
    uids = {
        json.loads(line)["uid"]
        for part in (storage / "events" / day).glob("part-*.jsonl")
        for line in part.read_text().splitlines()
    }
    assert uids and max(int(uid[1:]) for uid in uids) < 30  # users=30 from the run's conf, not the default 200
    report = json.loads(next((storage / "report" / day).glob("*.json")).read_text())
    assert report["day"] == day and 0 < report["users"] <= 30
