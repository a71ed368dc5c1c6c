"""WeiFlow's Airflow listener: each DAG run's lifecycle reaches the control center as run events.

Under Airflow the tasks only report nodes (``weiflow run-node``); what Airflow knows about the
*run* (that it is queued, that it runs, that it ended and how) comes from here, as the same
events ``weiflow run`` emits, through the same tracker (the run log, and the center's spool):

============================  ===============================  ==================================
Airflow                       where it happens                 event
============================  ===============================  ==================================
a DAG run waits in the queue  :class:`QueuedRunWatcher`,       ``run.started`` with
                              a thread in the scheduler        ``detail.queued``
the scheduler starts it       ``on_dag_run_running``           ``run.started``
it succeeds / fails / times   ``on_dag_run_success`` /         ``run.succeeded`` / ``run.failed``
out / is marked in the UI     ``on_dag_run_failed``            naming the failed tasks
============================  ===============================  ==================================

Each ``run.started`` carries the whole pipeline's ``uses`` (every dataset URI a node of the run
reads or writes, resolved with the run's params and date exactly as its tasks will resolve
them), so the retention sweep keeps them from the moment Airflow has the run. Run events carry
``attempt`` = Airflow's clear number + 1: a cleared run that Airflow runs again is reopened in
the center.

Airflow 3.3 calls the DAG-run hooks in the scheduler (the API server calls the end hooks when a
user sets a run's state), inside the scheduling loop: the hooks compile the spec (milliseconds),
write the run log and spool the event, and leave delivery to the center to a background thread,
so a slow or absent center never holds the scheduler up. Airflow has no hook for a DAG run being
created or queued (``DagRun.notify_dagrun_state_changed`` deliberately skips QUEUED); the
watcher polls Airflow's database for queued runs instead, every
``[weiflow] queued_runs_poll_interval`` seconds (default 15; 0 turns it off).

The plugin (:mod:`weiflow.airflow.plugin`) registers it; Airflow loads that plugin through
weiflow's ``airflow.plugins`` entry point (docs/airflow.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.listeners import hookimpl

from weiflow.airflow.runs import given_params, run_date
from weiflow.config import Settings, load_settings
from weiflow.dag import compile_file
from weiflow.errors import WeiflowError
from weiflow.registry import default_registry
from weiflow.runtime import RunContext, run_started_detail, run_tracker
from weiflow.tracking import Event, EventKind

if TYPE_CHECKING:
    from airflow.models.dagrun import DagRun

__all__ = [
    "RUN_LISTENER",
    "QueuedRunWatcher",
    "RunListener",
    "failure_text",
    "report_ended",
    "report_started",
    "spec_of",
]

log = logging.getLogger("weiflow.airflow.listener")

SPEC_FIELD = "spec"  # the template field of WeiFlow's node operator that holds the spec's path
DEFAULT_POLL_S = 15.0

_REASONS = {
    "task_failure": "",  # the failed tasks say it all
    "timed_out": "the run timed out (the DAG's dagrun_timeout)",
    "all_tasks_deadlocked": "no task could run any more (deadlocked)",
}


def spec_of(dag: Any) -> str | None:
    """The spec path of a WeiFlow DAG (from its node tasks' ``spec`` template field); None for other DAGs."""
    for task in getattr(dag, "task_dict", {}).values():
        if SPEC_FIELD in (getattr(task, "template_fields", None) or ()):
            spec = getattr(task, SPEC_FIELD, None)
            if isinstance(spec, str) and spec:
                return spec
    return None


def _settings(spec: str) -> Settings:
    # As run-node finds them: it runs in the spec's folder, under weiflow.toml there or above.
    return load_settings(cwd=Path(spec).parent)


def _attempt(dag_run: DagRun) -> int:
    return int(getattr(dag_run, "clear_number", 0) or 0) + 1


def _params(dag_run: DagRun, dag: Any) -> dict[str, Any]:
    """The run's params as its tasks see them: the DAG's params, overridden by the run's conf."""
    from airflow.configuration import conf

    overrides = dag_run.conf if conf.getboolean("core", "dag_run_conf_overrides_params", fallback=True) else None
    return dict(dag.params.deep_merge(overrides or None).dump())


def report_started(dag_run: DagRun, dag: Any, *, queued: bool = False) -> bool:
    """Emit ``run.started`` for a DAG run of a WeiFlow DAG; False when ``dag`` is not one.

    Raises :class:`~weiflow.errors.WeiflowError` when the run cannot be resolved (the spec no
    longer compiles, a param value does not fit): its tasks will then fail the same way.
    """
    spec = spec_of(dag)
    if spec is None:
        return False
    settings = _settings(spec)
    compiled = compile_file(
        spec, default_registry(), max_bytes=settings.max_spec_bytes, allowed_callables=settings.allowed_callables
    )
    tracker, _ = run_tracker(settings, compiled.name, dag_run.run_id, background=True)
    run = RunContext.create(
        compiled,
        settings=settings,
        tracker=tracker,
        run_id=dag_run.run_id,
        ds=date.fromisoformat(run_date(dag_run.logical_date, dag_run.run_after)),
        overrides=given_params(_params(dag_run, dag), [p.name for p in compiled.spec.params]),
    )
    detail = run_started_detail(run)
    if queued:
        detail["queued"] = True
    run.event(EventKind.RUN_STARTED, attempt=_attempt(dag_run), detail=detail)
    return True


def failure_text(dag_run: DagRun, msg: str) -> str:
    """Why a DAG run failed, naming its failed tasks (the nodes) and Airflow's reason."""
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy.orm import object_session

    def states(session: Any) -> list[tuple[str, str | None]]:
        return [(ti.task_id, ti.state) for ti in dag_run.get_task_instances(session=session)]

    # The session the DAG run is bound to sees what the scheduler decided in this same transaction
    # (tasks it just marked upstream_failed). Never Airflow's default session: in the scheduler's
    # thread that is the scheduler's own scoped session, which opening and closing here would commit.
    session = object_session(dag_run)
    if session is not None:
        tis = states(session)
    else:  # a detached run (dag.test() hands listeners one): read in a session of our own
        with create_session(scoped=False) as own:
            tis = states(own)
    failed = sorted(task for task, state in tis if state == TaskInstanceState.FAILED)
    blocked = sorted(task for task, state in tis if state == TaskInstanceState.UPSTREAM_FAILED)
    parts = []
    if failed:
        parts.append(f"failed task{'s' if len(failed) > 1 else ''}: {', '.join(failed)}")
    if blocked:
        parts.append(f"not run (upstream failed): {', '.join(blocked)}")
    reason = _REASONS.get(msg, msg)
    if reason:
        parts.append(reason)
    return "; ".join(parts) or "the Airflow DAG run failed"


def report_ended(dag_run: DagRun, dag: Any, *, succeeded: bool, msg: str = "") -> bool:
    """Emit ``run.succeeded`` or ``run.failed`` for a DAG run of a WeiFlow DAG; False when not one."""
    spec = spec_of(dag)
    if spec is None:
        return False
    pipeline = dag_run.dag_id  # a WeiFlow DAG's id is its pipeline's name
    tracker, _ = run_tracker(_settings(spec), pipeline, dag_run.run_id, background=True)
    kind = EventKind.RUN_SUCCEEDED if succeeded else EventKind.RUN_FAILED
    error = None if succeeded else failure_text(dag_run, msg)
    tracker.emit(Event(kind, dag_run.run_id, pipeline, attempt=_attempt(dag_run), error=error))
    return True


def _guarded(what: str, dag_run: DagRun, report: Callable[[], bool]) -> bool:
    """Run a report; never let it raise into Airflow's scheduling loop. True when it reported."""
    try:
        return report()
    except WeiflowError as exc:
        log.warning("WeiFlow cannot report that DAG run %s of %s %s: %s", dag_run.run_id, dag_run.dag_id, what, exc)
    except Exception:
        log.exception("WeiFlow failed to report that DAG run %s of %s %s", dag_run.run_id, dag_run.dag_id, what)
    return False


class QueuedRunWatcher:
    """Reports each queued DAG run of a WeiFlow DAG once per stay in the queue.

    Airflow 3.3 tells listeners when a run starts, not when it is created: a run that waits (its
    DAG paused, ``max_active_runs`` reached, a backfill's later days) would protect nothing
    until it starts. This thread, in the scheduler only, finds them in Airflow's database.
    """

    def __init__(self, interval_s: float | None = None) -> None:
        self.interval_s = interval_s
        self._seen: set[tuple[str, str, int]] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, job: Any) -> None:
        """Start watching once ``job`` turns out to be the scheduler's (Airflow calls ``on_starting``
        before its job runner gives the job its type)."""
        if self._thread is not None:
            return
        if self.interval_s is None:
            from airflow.configuration import conf

            self.interval_s = conf.getfloat("weiflow", "queued_runs_poll_interval", fallback=DEFAULT_POLL_S)
        if self.interval_s <= 0:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(job,), name="weiflow-queued-runs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self, job: Any) -> None:
        deadline = time.monotonic() + 120
        while getattr(job, "job_type", None) in (None, "", "undefined") and time.monotonic() < deadline:
            if self._stop.wait(0.5):
                return
        if getattr(job, "job_type", None) != "SchedulerJob":
            return  # the DAG processor's and the triggerer's: queued runs are the scheduler's business
        interval = self.interval_s or DEFAULT_POLL_S
        while not self._stop.wait(interval):
            try:
                self.poll_once()
            except Exception:
                log.exception("WeiFlow could not look for queued DAG runs")

    def poll_once(self) -> int:
        """Report the queued runs not reported yet; returns how many were reported."""
        from airflow.models.dagbag import DBDagBag
        from airflow.models.dagrun import DagRun
        from airflow.utils.session import create_session
        from airflow.utils.state import DagRunState
        from sqlalchemy import select

        reported = 0
        bag = DBDagBag()
        # Its own (unscoped) session: this thread must never touch the scheduler's.
        with create_session(scoped=False) as session:
            queued = session.scalars(select(DagRun).where(DagRun.state == DagRunState.QUEUED)).all()
            keys = {(r.dag_id, r.run_id, int(r.clear_number or 0)) for r in queued}
            for dag_run in queued:
                key = (dag_run.dag_id, dag_run.run_id, int(dag_run.clear_number or 0))
                if key in self._seen:
                    continue
                self._seen.add(key)  # once, whatever happens: a spec that fails now fails the next time too
                dag = bag.get_dag_for_run(dag_run, session)
                if dag is None or spec_of(dag) is None:
                    continue
                reported += _guarded("is queued", dag_run, lambda: report_started(dag_run, dag, queued=True))  # noqa: B023 - called at once
            self._seen &= keys  # forget runs that left the queue
        return reported


class RunListener:
    """The pluggy hook implementations Airflow's listener manager calls (see the module docstring)."""

    def __init__(self) -> None:
        self.watcher = QueuedRunWatcher()

    @hookimpl
    def on_starting(self, component: Any) -> None:
        # Called in every Airflow job process (scheduler, DAG processor, triggerer) and task runner;
        # only a Job has a type, and the watcher keeps to the scheduler's.
        if hasattr(type(component), "job_type"):
            self.watcher.start(component)

    @hookimpl
    def before_stopping(self, component: Any) -> None:
        self.watcher.stop()

    @hookimpl
    def on_dag_run_running(self, dag_run: DagRun, msg: str) -> None:
        _guarded("is running", dag_run, lambda: report_started(dag_run, dag_run.get_dag()))

    @hookimpl
    def on_dag_run_success(self, dag_run: DagRun, msg: str) -> None:
        _guarded("succeeded", dag_run, lambda: report_ended(dag_run, dag_run.get_dag(), succeeded=True, msg=msg))

    @hookimpl
    def on_dag_run_failed(self, dag_run: DagRun, msg: str) -> None:
        _guarded("failed", dag_run, lambda: report_ended(dag_run, dag_run.get_dag(), succeeded=False, msg=msg))


RUN_LISTENER = RunListener()
