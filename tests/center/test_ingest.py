"""Ingestion: a real local run's events become runs, node runs, module runs, datasets and lineage; once only."""

from __future__ import annotations

import textwrap
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from weiflow.center.ingest import ingest_events, parse_events
from weiflow.center.models import Dataset, DatasetRead, IngestedEvent, ModuleRun, NodeRun, Run, RunUse
from weiflow.center.repository import dataset_detail, list_datasets, list_models, list_runs, run_detail
from weiflow.config import load_settings
from weiflow.dag import compile_file
from weiflow.runtime import RunContext, run_pipeline
from weiflow.tracking import Event, EventKind, MemoryTracker

STEPS = """
import json

def produce(step):
    with step.write("numbers") as out:
        (out.path / "data.json").write_text(json.dumps(list(range(10))))
        out.rows = 10

def consume(step):
    return sum(json.loads((step.read("numbers") / "data.json").read_text()))

def boom(step):
    raise RuntimeError("the model diverged")
"""


def spec_text(steps: str, last: str = "consume") -> str:
    return textwrap.dedent(f"""\
        <pipeline xmlns="urn:weiflow:pipeline:1" name="p" owner="ranking" priority="high">
          <datasets>
            <dataset name="numbers" uri="${{storage}}/numbers/${{ds}}" format="json" retention="consumed"/>
          </datasets>
          <node id="make" engine="python">
            <module id="produce" type="call" callable="{steps}:produce" writes="numbers"/>
          </node>
          <node id="use" engine="python">
            <module id="sum" type="call" callable="{steps}:{last}" reads="numbers"/>
          </node>
        </pipeline>
        """)


def local_run(tmp_path: Path, make_spec: Callable[..., Path], last: str = "consume") -> list[Event]:
    steps = f"steps_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{steps}.py").write_text(STEPS)
    tracker = MemoryTracker()
    dag = compile_file(make_spec(spec_text(steps, last)))
    run = RunContext.create(dag, settings=load_settings(), tracker=tracker, run_id="r1", ds=date(2026, 11, 2))
    run_pipeline(run)
    return tracker.events


def test_a_local_run_becomes_a_two_level_dag_with_datasets_and_lineage(
    sessions: sessionmaker[Session], tmp_path: Path, make_spec: Callable[..., Path]
) -> None:
    events = local_run(tmp_path, make_spec)
    with sessions() as session:
        assert ingest_events(session, events).counts() == {"applied": len(events), "duplicate": 0, "rejected": 0}
        [run] = list_runs(session)
        assert (run["run_id"], run["pipeline"], run["state"], run["priority"]) == ("r1", "p", "succeeded", "high")
        detail = run_detail(session, run["id"])
        assert detail is not None
        assert [(n["id"], n["state"], n["upstream"], n["backend"]) for n in detail["nodes"]] == [
            ("make", "succeeded", [], "local"),
            ("use", "succeeded", ["make"], "local"),
        ]
        assert [(m["id"], m["type"], m["state"]) for m in detail["nodes"][1]["modules"]] == [
            ("sum", "call", "succeeded")
        ]
        assert detail["spec_sha256"] and len(detail["spec_sha256"]) == 64
        [dataset] = list_datasets(session)
        assert dataset["owner"] == "ranking" and dataset["retention"] == "consumed" and dataset["rows"] == 10
        assert dataset["size_bytes"] > 0 and dataset["uri"].endswith("/numbers/2026-11-02")
        full = dataset_detail(session, dataset["id"])
        assert full is not None
        assert full["producer"] == {"run": run["id"], "run_id": "r1", "pipeline": "p", "node": "make"}
        assert [(c["run_id"], c["node"]) for c in full["consumers"]] == [("r1", "use")]
        assert full["last_access"] is not None
        assert session.scalar(select(Dataset.consumers_expected)) == ["use"]


def test_redelivered_events_are_applied_once(
    sessions: sessionmaker[Session], tmp_path: Path, make_spec: Callable[..., Path]
) -> None:
    events = local_run(tmp_path, make_spec)
    with sessions() as session:
        ingest_events(session, events[:5])
        again = ingest_events(session, events)  # a spool re-sends what was already delivered
        assert again.counts() == {"applied": len(events) - 5, "duplicate": 5, "rejected": 0}
        assert session.scalar(select(func.count()).select_from(IngestedEvent)) == len(events)
        assert session.scalar(select(func.count()).select_from(DatasetRead)) == 1
        assert session.scalar(select(func.count()).select_from(Run)) == 1


def test_out_of_order_events_never_undo_an_end_state(
    sessions: sessionmaker[Session], tmp_path: Path, make_spec: Callable[..., Path]
) -> None:
    events = local_run(tmp_path, make_spec, last="boom")
    with sessions() as session:
        ingest_events(session, list(reversed(events)))  # parallel tasks and late spools: any order
        states = dict(session.execute(select(NodeRun.node, NodeRun.state)).all())
        assert states == {"make": "succeeded", "use": "failed"}
        error = session.scalar(select(ModuleRun.error).where(ModuleRun.module == "sum"))
        assert error is not None and "the model diverged" in error
        assert session.scalar(select(Run.state)) == "failed"


def test_malformed_events_are_reported_and_the_rest_parsed() -> None:
    good = Event(EventKind.RUN_STARTED, "r", "p")
    events, problems = parse_events([good.to_json(), {"kind": "no.such.kind", "run_id": "r", "pipeline": "p"}, 7])
    assert [(index, e.id) for index, e in events] == [(0, good.id)]
    assert len(problems) == 2 and "event 1" in problems[0]


def test_events_without_an_id_get_a_stable_one() -> None:
    line = '{"kind": "run.started", "pipeline": "p", "run_id": "r", "ts": "2026-11-02T00:00:00+00:00"}'
    assert Event.from_json(line).id == Event.from_json(line).id
    assert Event.from_json(line).id != Event.from_json(line.replace('"r"', '"r2"')).id


def test_metrics_and_model_versions_are_recorded(sessions: sessionmaker[Session]) -> None:
    event = Event(
        EventKind.METRICS,
        "r",
        "p",
        node="train",
        module="fit",
        detail={"auc": 0.71, "loss": {"train": 0.3}, "model": {"name": "ctr", "version": "3", "deployed": True}},
    )
    with sessions() as session:
        ingest_events(session, [event])
        detail = run_detail(session, session.scalar(select(Run.id)) or 0)
        assert detail is not None
        assert {(m["name"], m["value"]) for m in detail["metrics"]} == {("auc", 0.71), ("loss.train", 0.3)}
        assert list_models(session)[0]["versions"][0]["deployed"] is True


# --- a run announced by several reporters (run-node at every node, Airflow's listener) ------------

A, B, C = "file:///s/raw/2026-11-02", "file:///s/rates", "file:///s/report/2026-11-02"


def at(minutes: float) -> str:
    return (datetime(2026, 11, 2, tzinfo=UTC) + timedelta(minutes=minutes)).isoformat()


def started(minutes: float, uses: list[str], *, attempt: int | None = None, queued: bool = False) -> Event:
    detail: dict[str, object] = {"uses": uses, "upstream": {"make": [], "report": ["make"]}}
    if queued:
        detail["queued"] = True
    return Event(EventKind.RUN_STARTED, "r", "p", attempt=attempt, ts=at(minutes), detail=detail)


def ended(minutes: float, attempt: int, *, ok: bool) -> Event:
    kind = EventKind.RUN_SUCCEEDED if ok else EventKind.RUN_FAILED
    return Event(kind, "r", "p", attempt=attempt, ts=at(minutes), error=None if ok else "failed task: report")


def the_run(session: Session) -> tuple[str, str | None, datetime | None, set[str]]:
    run = session.scalars(select(Run)).one()
    uses = set(session.scalars(select(RunUse.uri).where(RunUse.run_pk == run.id)))
    return run.state, run.error, run.started_at, uses


def test_a_run_announced_many_times_in_any_order_is_one_run(sessions: sessionmaker[Session]) -> None:
    node = Event(EventKind.NODE_STARTED, "r", "p", node="make", attempt=1, ts=at(2), detail={"reads": {"raw": A}})
    with sessions() as session:
        ingest_events(session, [started(0, [A, B, C], attempt=1, queued=True)])
        assert the_run(session)[0] == "queued"  # protects its datasets before any task starts
        # A node's start and its run-node's announcement, then the listener's 'running' delivered late.
        ingest_events(session, [node, started(2, [A, B, C]), started(1, [A, B, C], attempt=1)])
        ingest_events(session, [started(0.5, [A, B, C], attempt=1, queued=True)])  # a late 'queued' again
        state, _, since, uses = the_run(session)
        assert (state, since, uses) == ("running", datetime.fromisoformat(at(0)), {A, B, C})
        assert session.scalar(select(func.count()).select_from(Run)) == 1
        assert session.scalar(select(func.count()).select_from(RunUse)) == 3


def test_a_cleared_run_is_reopened_and_late_ends_of_earlier_attempts_ignored(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        ingest_events(session, [started(0, [A, B], attempt=1), ended(5, 1, ok=False)])
        assert the_run(session)[:2] == ("failed", "failed task: report")
        ingest_events(session, [started(4, [A, B])])  # a node's late announcement never reopens a run
        assert the_run(session)[0] == "failed"
        # Airflow cleared it: queued again, then running, as attempt 2; its datasets are protected again.
        ingest_events(session, [started(10, [A, B, C], attempt=2, queued=True)])
        assert the_run(session) == ("queued", None, datetime.fromisoformat(at(10)), {A, B, C})
        ingest_events(session, [started(11, [A, B, C], attempt=2)])
        ingest_events(session, [ended(5, 1, ok=False)])  # attempt 1's end from another spool, late
        assert the_run(session)[0] == "running"
        ingest_events(session, [ended(20, 2, ok=True)])
        assert the_run(session)[:2] == ("succeeded", None)
        assert session.scalar(select(Run.duration_s)) == 600.0  # attempt 2's time
        ingest_events(session, [ended(19, 2, ok=False)])  # an older end (say, before a manual 'mark success')
        assert the_run(session)[0] == "succeeded"


def test_parallel_batches_of_one_new_run_lose_no_event(sessions: sessionmaker[Session]) -> None:
    """Parallel Airflow tasks of one run post at once: both batches create the run's row; none is dropped."""
    batches = [
        [Event(EventKind.MODULE_STARTED, f"r{round_}", "p", node=f"n{task}", module=f"m{i}") for i in range(20)]
        for round_ in range(5)
        for task in range(2)
    ]
    for round_ in range(5):
        pair = batches[2 * round_ : 2 * round_ + 2]
        start = threading.Barrier(2)
        results: list[int] = []

        def post(events: list[Event], start: threading.Barrier, results: list[int]) -> None:
            start.wait()
            with sessions() as session:
                results.append(ingest_events(session, events).applied)

        threads = [threading.Thread(target=post, args=(events, start, results)) for events in pair]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(results) == [20, 20], (round_, results)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(IngestedEvent)) == 200
        assert session.scalar(select(func.count()).select_from(ModuleRun)) == 200
        assert session.scalar(select(func.count()).select_from(Run)) == 5
