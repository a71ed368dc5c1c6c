"""An Airflow DAG run reaches the control center as run events: real Airflow, real listener dispatch.

``dag.test()`` runs the DAG through Airflow's own DagRun state machine (a real SQLite metadata
database) and each task through ``weiflow run-node``; the listener is registered with Airflow's
listener manager as the plugin registers it in the scheduler. The center is down (nothing
listens on its port), so every event must wait in the spool; the tests then apply the spool to
a real center database.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.dag_processing.dagbag import DagBag
from sqlalchemy import select

from tests.conftest import REPO
from weiflow.airflow.listener import RUN_LISTENER, QueuedRunWatcher
from weiflow.center.db import make_engine, make_sessionmaker, migrate
from weiflow.center.ingest import ingest_events
from weiflow.center.models import Run, RunUse
from weiflow.processes import free_port
from weiflow.tracking import Event, read_events, run_log_path

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEPS = """
import json

def produce(step):
    with step.write("raw") as out:
        (out.path / "raw.json").write_text(json.dumps(list(range(int(step.params["n"])))))

def summarize(step):
    rates = json.loads((step.read("rates") / "rates.json").read_text())
    raw = json.loads((step.read("raw") / "raw.json").read_text())
    with step.write("report") as out:
        (out.path / "report.json").write_text(json.dumps({"total": sum(raw) * rates["x"]}))

def boom(step):
    raise RuntimeError("the report diverged")
"""

# 'rates' is read by the last node only: nothing but the run's announcement protects it before then.
SPEC = """<pipeline xmlns="urn:weiflow:pipeline:1" name="lifecycle" owner="ranking">
  <params>
    <param name="day" type="date" default="${ds}"/>
    <param name="n" type="int" default="3"/>
  </params>
  <datasets>
    <dataset name="raw" uri="${storage}/lifecycle/raw/${day}" format="json" retention="consumed"/>
    <dataset name="rates" uri="${storage}/lifecycle/rates" format="json" external="true"/>
    <dataset name="report" uri="${storage}/lifecycle/report/${day}" format="json" retention="ttl:7"/>
  </datasets>
  <node id="make" engine="python">
    <module id="produce" type="call" callable="STEPS:produce" writes="raw"/>
  </node>
  <node id="report" engine="python">
    <module id="sum" type="call" callable="STEPS:LAST" reads="raw,rates" writes="report"/>
  </node>
</pipeline>
"""


@pytest.fixture
def listener() -> Iterator[None]:
    """WeiFlow's run listener in Airflow's listener manager, as the plugin puts it there."""
    from airflow.listeners.listener import get_listener_manager

    manager = get_listener_manager()
    manager.add_listener(RUN_LISTENER)
    try:
        yield
    finally:
        manager.pm.unregister(RUN_LISTENER)


@pytest.fixture
def lifecycle(
    airflow_db: Path, tmp_path: Path, isolated_var: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[str], Any]:
    """The 'lifecycle' pipeline's Airflow DAG; its last node runs ``last``. The center is down."""
    monkeypatch.setenv("WEIFLOW_CENTER_URL", f"http://127.0.0.1:{free_port()}")

    def make(last: str) -> Any:
        folder = tmp_path / "specs"
        folder.mkdir(exist_ok=True)
        steps = f"steps_{uuid.uuid4().hex[:8]}"  # sys.modules caches user modules by name
        (folder / f"{steps}.py").write_text(STEPS)
        (folder / "lifecycle.xml").write_text(SPEC.replace("STEPS", steps).replace("LAST", last))
        rates = isolated_var / "storage" / "lifecycle" / "rates"
        rates.mkdir(parents=True, exist_ok=True)
        (rates / "rates.json").write_text('{"x": 2}')
        monkeypatch.setenv("WEIFLOW_SPECS", str(folder))
        return DagBag(dag_folder=REPO / "dags").dags["lifecycle"]

    return make


def spooled(var: Path) -> list[Event]:
    """What waits in the center's spool, in delivery order."""
    return [Event.from_json(p.read_text()) for p in sorted((var / "center-spool").glob("*.json"))]


def center_run(var: Path, tmp_path: Path) -> tuple[Run, set[str]]:
    """The spool applied to a fresh center database: the run's row and the URIs it protects."""
    engine = make_engine(f"sqlite:///{tmp_path / 'center.db'}")
    migrate(engine)
    with make_sessionmaker(engine)() as session:
        ingest_events(session, spooled(var))
        run = session.scalars(select(Run)).one()
        uses = set(session.scalars(select(RunUse.uri).where(RunUse.run_pk == run.id)))
        session.expunge(run)
    engine.dispose()
    return run, uses


def uri(var: Path, *parts: str) -> str:
    return "file://" + str(var / "storage" / "lifecycle" / Path(*parts))


def test_a_dag_run_is_announced_before_its_first_node_and_ends_in_the_center(
    listener: None, lifecycle: Callable[[str], Any], isolated_var: Path, tmp_path: Path
) -> None:
    dag = lifecycle("summarize")
    run = dag.test(run_conf={"n": 4})
    assert run.state == "success"
    day = run.logical_date.date().isoformat()

    events = read_events(run_log_path(isolated_var / "runs", "lifecycle", run.run_id))
    kinds = [e.kind for e in events]
    first = events[0]
    # run-node of the first task announces the whole run before its node starts, with every
    # dataset of the run, including the one only the last node reads.
    assert first.kind == "run.started" and kinds.index("node.started") == 1
    assert set(first.detail["uses"]) == {
        uri(isolated_var, "raw", day),
        uri(isolated_var, "rates"),
        uri(isolated_var, "report", day),
    }
    assert first.detail["params"]["n"] == "4" and first.detail["upstream"] == {"make": [], "report": ["make"]}
    assert kinds.count("run.started") == 2  # each node announces it; the center applies both idempotently
    # The end comes from the listener, when Airflow's DagRun state machine marks the run successful.
    assert (events[-1].kind, events[-1].attempt, events[-1].error) == ("run.succeeded", 1, None)

    assert [e.id for e in spooled(isolated_var)] == [e.id for e in events]  # the center was down: all kept
    center, uses = center_run(isolated_var, tmp_path)
    assert (center.run_id, center.state, center.error) == (run.run_id, "succeeded", None)
    assert uri(isolated_var, "rates") in uses


def test_a_failed_dag_run_names_its_failed_task(
    listener: None, lifecycle: Callable[[str], Any], isolated_var: Path, tmp_path: Path
) -> None:
    dag = lifecycle("boom")
    run = dag.test()
    assert run.state == "failed"
    events = read_events(run_log_path(isolated_var / "runs", "lifecycle", run.run_id))
    end = events[-1]
    assert (end.kind, end.attempt, end.error) == ("run.failed", 1, "failed task: report")
    center, _ = center_run(isolated_var, tmp_path)
    assert (center.state, center.error) == ("failed", "failed task: report")


def test_a_queued_run_then_its_start_through_airflows_hooks(
    listener: None, lifecycle: Callable[[str], Any], airflow_db: Path, isolated_var: Path, tmp_path: Path
) -> None:
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db
    from airflow.listeners.listener import get_listener_manager
    from airflow.models.dagbag import DBDagBag
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunTriggeredByType, DagRunType

    lifecycle("summarize")
    manager = DagBundlesManager()
    manager.sync_bundles_to_db()
    for bundle in manager.get_all_dag_bundles():  # what the DAG processor stores: the serialized DAG
        bundle.initialize()
        sync_bag_to_db(
            BundleDagBag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name=bundle.name),
            bundle.name,
            bundle.version,
        )
    day = datetime(2026, 11, 5, tzinfo=UTC)
    run_id = f"manual__queued_{uuid.uuid4().hex[:8]}"
    with create_session() as session:
        serialized = DBDagBag().get_latest_version_of_dag("lifecycle", session=session)
        assert serialized is not None
        dag_run = serialized.create_dagrun(
            run_id=run_id,
            logical_date=day,
            data_interval=(day, day),
            run_after=day,
            conf={"n": 7},
            run_type=DagRunType.MANUAL,
            triggered_by=DagRunTriggeredByType.TEST,
            state=DagRunState.QUEUED,  # as a trigger leaves it while the DAG is paused, say
            session=session,
        )
        session.commit()
        try:
            watcher = QueuedRunWatcher(interval_s=0)
            assert watcher.poll_once() == 1
            assert watcher.poll_once() == 0  # once per stay in the queue
            dag_run.state = DagRunState.RUNNING
            session.flush()
            # What the scheduler calls when it starts the run (SchedulerJobRunner._start_queued_dagruns).
            get_listener_manager().hook.on_dag_run_running(dag_run=dag_run, msg="started")
            events = read_events(run_log_path(isolated_var / "runs", "lifecycle", run_id))
            assert [(e.kind, e.detail.get("queued"), e.attempt) for e in events] == [
                ("run.started", True, 1),
                ("run.started", None, 1),
            ]
            assert events[0].detail["params"]["n"] == "7" and events[0].detail["params"]["day"] == "2026-11-05"
            queued_center, uses = center_run_after(isolated_var, tmp_path, events[:1])
            assert queued_center == "queued" and uri(isolated_var, "rates") in uses
            assert center_run(isolated_var, tmp_path)[0].state == "running"
        finally:
            session.delete(dag_run)
            session.commit()


def center_run_after(var: Path, tmp_path: Path, events: list[Event]) -> tuple[str, set[str]]:
    """A center that has only ``events``: the run's state and the URIs it protects."""
    engine = make_engine(f"sqlite:///{tmp_path / 'partial.db'}")
    migrate(engine)
    with make_sessionmaker(engine)() as session:
        ingest_events(session, events)
        run = session.scalars(select(Run)).one()
        uses = set(session.scalars(select(RunUse.uri).where(RunUse.run_pk == run.id)))
        state = run.state
    engine.dispose()
    return state, uses


def test_the_watcher_polls_in_the_scheduler_only(monkeypatch: pytest.MonkeyPatch) -> None:
    polled = threading.Event()
    monkeypatch.setattr(QueuedRunWatcher, "poll_once", lambda self: polled.set())
    for job_type, polls in (("DagProcessorJob", False), ("SchedulerJob", True)):
        polled.clear()
        watcher = QueuedRunWatcher(interval_s=0.05)
        job = SimpleNamespace(job_type=None)  # Airflow's on_starting comes before the job runner types the job
        watcher.start(job)
        job.job_type = job_type
        assert polled.wait(1.5) is polls, job_type
        watcher.stop()


def test_airflow_registers_the_listener_from_weiflows_entry_point_alone(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()  # empty: the listener comes from the airflow.plugins entry point of weiflow's package
    check = textwrap.dedent("""
        from airflow.listeners.listener import get_listener_manager
        from weiflow.airflow.listener import RUN_LISTENER
        assert get_listener_manager().pm.is_registered(RUN_LISTENER)
        print("registered")
    """)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'airflow.db'}",
        "PYTHONPATH": str(REPO),
    }
    result = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "registered" in result.stdout, result.stderr[-3000:]
