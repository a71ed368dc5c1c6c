"""The control center killed mid-ingest (SIGKILL to its group, SIGTERM to its supervisor), then restarted.

A real ``weiflow center serve`` (two workers, SQLite) while four runs report through the runtime's own
path: each event written to the run's JSON-lines log, then to a :class:`CenterTracker` (spool, then
post). The center is killed while they post, the runs go on into their spools, the center is started
again on the same database and port, and the runs' next events deliver what waited.

What proves nothing was lost or applied twice: ``ingested_events`` per kind equal the run logs' per
kind; progress points (a table with no unique key, so an event applied twice would show as a second
row) equal the logs' progress events per run; every run, node and module is ``succeeded`` (a batch
is ingested in one transaction, savepoint per event: a kill leaves all of it or none). The SQLite
file passes ``integrity_check``. SIGTERM must also be graceful: the center exits 0 and no post is
answered 5xx (in-flight requests are finished, new ones refused by a closed socket).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from tests.center.servers import add_users, database_url
from tests.reliability_plugin import long_run
from weiflow.center.db import make_engine, make_sessionmaker
from weiflow.center.models import IngestedEvent, ModuleRun, NodeRun, Pipeline, ProgressPoint, Role, Run
from weiflow.processes import free_port, running_server
from weiflow.tracking import CenterTracker, Event, EventKind, FanoutTracker, JsonlTracker, read_events

pytestmark = pytest.mark.integration

PIPELINE = "killed_center"
RUNS, NODES, MODULES, POINTS = 4, 2, 3, 10  # 78 events a run
KILL_AFTER = 70  # events emitted by all runs together: well into the first node, before any run's end


class RecordingTracker(CenterTracker):
    """The runtime's tracker, noting the status of every post (None: no answer) for the graceful-stop check."""

    def __init__(self, url: str, spool_dir: Path, *, token: str) -> None:
        # retry_s short: once the center is back, the next event redelivers what waited.
        super().__init__(url, spool_dir, token=token, timeout_s=5, retry_s=0.2)
        self.statuses: list[int | None] = []

    def _post(self, lines: list[str]) -> int | None:
        status = super()._post(lines)
        self.statuses.append(status)
        return status


class Producer(threading.Thread):
    """One run reporting as run-node does: its first node, then (once ``resume`` is set) the rest."""

    def __init__(self, index: int, center: str, token: str, tmp: Path, resume: threading.Event) -> None:
        super().__init__(name=f"run-{index}")
        self.run_id = f"r{index}"
        self.log = tmp / "runs" / f"{self.run_id}.jsonl"
        # A spool per run: ordering across runs sharing one spool is not what this test is about.
        self.center = RecordingTracker(center, tmp / f"spool-{index}", token=token)
        self.tracker = FanoutTracker(JsonlTracker(self.log), self.center)
        self.resume = resume
        self.emitted = 0
        self.waiting = threading.Event()  # reached the gate after the first node
        self.error: BaseException | None = None

    def emit(self, kind: EventKind, node: str | None = None, module: str | None = None, **detail: object) -> None:
        self.tracker.emit(Event(kind, self.run_id, PIPELINE, node=node, module=module, attempt=1, detail=detail))
        self.emitted += 1

    def node(self, n: int) -> None:
        node = f"n{n}"
        modules = [f"m{m}" for m in range(MODULES)]
        self.emit(EventKind.NODE_STARTED, node, engine="python", modules=modules)
        for module in modules:
            self.emit(EventKind.MODULE_STARTED, node, module)
            for step in range(POINTS):
                self.emit(
                    EventKind.PROGRESS, node, module, step=step + 1, steps=POINTS, worker=0, loss=1.0 / (step + 1)
                )
            self.emit(EventKind.MODULE_SUCCEEDED, node, module)
        self.emit(EventKind.NODE_SUCCEEDED, node)

    def run(self) -> None:
        try:
            self.emit(EventKind.RUN_STARTED)
            self.node(0)
            self.waiting.set()
            assert self.resume.wait(120), "the center was never restarted"
            for n in range(1, NODES):
                self.node(n)
            self.emit(EventKind.RUN_SUCCEEDED)
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.error = exc
            self.waiting.set()


def _until(condition: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


# PostgreSQL in the long run (./dev reliability): each case is ~12 s of CI.
CENTER_KILLS = [("SIGKILL", "sqlite"), ("SIGTERM", "sqlite")]
if long_run():
    CENTER_KILLS += [pytest.param(how, "postgresql", marks=pytest.mark.postgres) for how in ("SIGKILL", "SIGTERM")]


@pytest.mark.parametrize(("how", "database"), CENTER_KILLS)
@pytest.mark.reliability(
    area="kill",
    component="control center (weiflow center serve)",
    fault="killed mid-ingest (SIGKILL to its group; SIGTERM to it), restarted on the same database (SQLite; "
    "PostgreSQL in the long run)",
    proves="every event stored once (ingested events per kind = the run logs'; progress rows = progress events); "
    "every run, node and module succeeded, none half-applied; SQLite's integrity_check ok; it answers after "
    "restart; SIGTERM: exit 0 and no post answered 5xx",
)
def test_a_center_killed_mid_ingest_loses_nothing_and_applies_nothing_twice(
    how: str, database: str, tmp_path: Path
) -> None:
    with database_url(database, tmp_path) as url:
        token = add_users(url, {"runtime": (Role.OWNER, [])})["runtime"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("WEIFLOW_")}
        env.update(WEIFLOW_VAR_DIR=str(tmp_path / "var"), WEIFLOW_DATABASE_URL=url)
        port = free_port()
        center = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "weiflow", "center", "serve", "--port", str(port), "--workers", "2"]
        argv.append("--sweep-every=0")
        ready = f"{center}/api/openapi.json"
        resume = threading.Event()
        producers = [Producer(i, center, token, tmp_path, resume) for i in range(RUNS)]

        try:
            with running_server(argv, ready_url=ready, log=tmp_path / "center-1.log", env=env) as first:
                for producer in producers:
                    producer.start()
                _until(lambda: sum(p.emitted for p in producers) >= KILL_AFTER, "the runs never got going")
                if how == "SIGKILL":
                    os.killpg(first.pid, signal.SIGKILL)  # the supervisor and its workers, mid-transaction
                    first.wait(30)
                else:
                    first.send_signal(signal.SIGTERM)  # what systemd or Kubernetes sends
                    assert first.wait(30) == 0, (tmp_path / "center-1.log").read_text()[-3000:]
            assert sum(p.emitted for p in producers) < RUNS * (NODES * (2 + MODULES * (2 + POINTS)) + 2)
            # The runs go on while it is down; their events wait in the spools.
            for producer in producers:
                assert producer.waiting.wait(120) and producer.error is None, producer.error
            assert sum(len(p.center.pending()) for p in producers) > 0
            assert any(None in p.center.statuses for p in producers)  # posts that got no answer

            with running_server(argv, ready_url=ready, log=tmp_path / "center-2.log", env=env):
                time.sleep(0.3)  # past retry_s: the next emit delivers what waited (the runtime's redelivery)
                resume.set()
                for producer in producers:
                    producer.join(120)
                    assert not producer.is_alive() and producer.error is None, producer.error
                for producer in producers:
                    assert producer.center.flush() and producer.center.pending() == []
                listed = httpx.get(
                    f"{center}/api/v1/runs", params={"pipeline": PIPELINE}, headers={"Authorization": f"Bearer {token}"}
                )
                assert listed.status_code == 200, listed.text
                assert sorted((r["run_id"], r["state"]) for r in listed.json()["items"]) == [
                    (p.run_id, "succeeded") for p in producers
                ]
        finally:
            resume.set()
            for producer in producers:
                if producer.is_alive():
                    producer.join(30)
        for name in ("center-1.log", "center-2.log"):
            assert "Traceback" not in (tmp_path / name).read_text(), name
        if how == "SIGTERM":
            statuses = Counter(s for p in producers for s in p.center.statuses)
            assert all(s is None or s < 500 for s in statuses), statuses

        logged = {p.run_id: read_events(p.log) for p in producers}
        engine = make_engine(url)
        with make_sessionmaker(engine)() as session:
            kinds = dict(session.execute(select(IngestedEvent.kind, func.count()).group_by(IngestedEvent.kind)).all())
            runs = {
                run.run_id: run for run in session.scalars(select(Run).join(Pipeline).where(Pipeline.name == PIPELINE))
            }
            for run_id, events in logged.items():
                run = runs[run_id]
                assert run.state == "succeeded"
                nodes = session.scalars(select(NodeRun).where(NodeRun.run_pk == run.id)).all()
                assert sorted((n.node, n.state) for n in nodes) == [(f"n{n}", "succeeded") for n in range(NODES)]
                modules = session.scalars(select(ModuleRun.state).join(NodeRun).where(NodeRun.run_pk == run.id)).all()
                assert modules == ["succeeded"] * (NODES * MODULES)
                points = session.scalar(select(func.count(ProgressPoint.id)).where(ProgressPoint.run_pk == run.id))
                assert points == sum(e.kind is EventKind.PROGRESS for e in events) == NODES * MODULES * POINTS
        engine.dispose()
    assert kinds == dict(Counter(str(e.kind) for events in logged.values() for e in events))
    if database == "sqlite":
        check = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        finally:
            check.close()
