"""Training curves: module.progress events stored (checked, bounded, owned), drawn on the run page, in the API."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from html import unescape
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from alembic import command
from fastapi.testclient import TestClient
from lxml import etree
from sqlalchemy import Engine, func, inspect, select
from sqlalchemy.orm import Session, sessionmaker

from tests.center.conftest import add_team
from tests.center.test_console import log_in
from weiflow.center import ingest
from weiflow.center.api import create_app
from weiflow.center.console import CSP
from weiflow.center.db import alembic_config, migrate
from weiflow.center.ingest import ingest_events, parse_events
from weiflow.center.models import Model, ModuleRun, NodeRun, Pipeline, ProgressPoint, Role, Run
from weiflow.center.progress import run_progress
from weiflow.center.repository import Principal, list_runs, run_detail
from weiflow.curves import MAX_POINTS_PER_SERIES, downsample
from weiflow.tracking import PROGRESS_FIELDS, Event, EventKind

T0 = datetime(2026, 11, 1, tzinfo=UTC)
STEPS = 2000
SVG = "{http://www.w3.org/2000/svg}"


def loss_at(step: int, worker: int) -> float:
    return round(0.7 / (1 + step / 500) + 0.01 * worker, 6)


def auc_at(step: int) -> float | None:
    # Now and then a call's batches hold one class: no AUC, as the trainer reports it.
    return None if step % 700 == 0 else round(min(0.99, 0.5 + step / 5000), 6)


def point(worker: int, step: int, *, steps: int = STEPS) -> dict[str, Any]:
    detail: dict[str, Any] = {
        "step": step,
        "steps": steps,
        "worker": worker,
        "loss": loss_at(step, worker),
        "examples_per_s": 1000.0 + worker,
        "seconds": step / 100,
    }
    if (auc := auc_at(step)) is not None:
        detail["auc"] = auc
    return detail


def progress(
    detail: dict[str, Any],
    *,
    run_id: str = "r1",
    pipeline: str = "feed",
    node: str = "train",
    module: str = "fit",
    attempt: int = 1,
) -> Event:
    return Event(
        EventKind.PROGRESS,
        run_id,
        pipeline,
        node=node,
        module=module,
        attempt=attempt,
        detail=detail,
        ts=T0.isoformat(),
    )


def curve_events(workers: int, calls: int, **kwargs: Any) -> list[Event]:
    """``calls`` progress points per worker, interleaved as workers finish their calls, steps rising."""
    return [progress(point(w, (c * workers + w + 1) * 10), **kwargs) for c in range(calls) for w in range(workers)]


def run_events(*, ended: bool) -> list[Event]:
    ts = T0.isoformat()
    events = [
        Event(EventKind.RUN_STARTED, "r1", "feed", ts=ts, detail={"owner": "ranking", "upstream": {"train": []}}),
        Event(EventKind.NODE_STARTED, "r1", "feed", node="train", ts=ts, detail={"modules": ["fit", "eval"]}),
        Event(EventKind.MODULE_STARTED, "r1", "feed", node="train", module="fit", attempt=1, ts=ts),
    ]
    if ended:
        end = (T0 + timedelta(minutes=5)).isoformat()
        events += [
            Event(EventKind.MODULE_SUCCEEDED, "r1", "feed", node="train", module="fit", attempt=1, ts=end),
            Event(EventKind.NODE_SUCCEEDED, "r1", "feed", node="train", attempt=1, ts=end),
            Event(EventKind.RUN_SUCCEEDED, "r1", "feed", ts=end),
        ]
    return events


def states(session: Session) -> list[tuple[Any, ...]]:
    """Every run, node and module row with its state, attempt and times."""
    rows: list[tuple[Any, ...]] = [(r.run_id, r.state, r.started_at, r.ended_at) for r in session.scalars(select(Run))]
    rows += [(n.node, n.state, n.attempt, n.started_at, n.ended_at) for n in session.scalars(select(NodeRun))]
    rows += [(m.module, m.state, m.attempt, m.started_at, m.ended_at) for m in session.scalars(select(ModuleRun))]
    return rows


def stored(session: Session, **where: Any) -> int:
    query = select(func.count(ProgressPoint.id))
    for name, value in where.items():
        query = query.where(getattr(ProgressPoint, name) == value)
    return session.scalar(query) or 0


# ---- ingestion ------------------------------------------------------------------------------------------------


def test_the_contract_fields_are_the_ones_stored() -> None:
    # The tracking contract and what the center keeps must not drift apart unnoticed.
    assert set(PROGRESS_FIELDS) <= {c.name for c in ProgressPoint.__table__.columns}


@pytest.mark.parametrize("ended", [False, True], ids=["running", "ended"])
def test_progress_points_are_stored_per_worker_and_change_no_state(
    sessions: sessionmaker[Session], ended: bool
) -> None:
    events = curve_events(workers=3, calls=20)
    with sessions() as session:
        ingest_events(session, run_events(ended=ended))
        before = states(session)
        result = ingest_events(session, events)
        assert result.counts() == {"applied": len(events), "duplicate": 0, "rejected": 0}
        assert states(session) == before
        # A progress point makes no node or module rows of its own.
        ingest_events(session, [progress(point(0, 10), node="other", module="m")])
        assert session.scalar(select(NodeRun).where(NodeRun.node == "other")) is None
        assert ingest_events(session, events).counts()["duplicate"] == len(events)  # a spool re-posting them
        [run] = list_runs(session)
        [curve] = run_progress(session, run["id"], node="train")
    assert (curve["module"], curve["attempt"], curve["steps"]) == ("fit", 1, STEPS)
    sent: dict[int, list[dict[str, Any]]] = {}
    for event in events:
        sent.setdefault(event.detail["worker"], []).append(event.detail)
    assert [s["worker"] for s in curve["workers"]] == sorted(sent)
    for series in curve["workers"]:
        expected = sent[series["worker"]]
        assert [p["step"] for p in series["points"]] == [d["step"] for d in expected]
        assert [p["loss"] for p in series["points"]] == [d["loss"] for d in expected]
        assert [p["auc"] for p in series["points"]] == [d.get("auc") for d in expected]
        assert [p["examples_per_s"] for p in series["points"]] == [d["examples_per_s"] for d in expected]


def test_progress_is_bounded_per_module_and_the_rest_dropped(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = 25
    monkeypatch.setattr(ingest, "MAX_POINTS_PER_MODULE", limit)
    first, second = curve_events(workers=2, calls=10), curve_events(workers=2, calls=10, module="fit2")
    more = [progress(point(0, 1000 + i)) for i in range(20)]
    with sessions() as session:
        ingest_events(session, run_events(ended=False))
        ingest_events(session, first)
        # Past the bound within one batch and across batches: dropped, not refused (nothing to fix by re-posting).
        result = ingest_events(session, more + second)
        assert result.counts() == {"applied": len(more) + len(second), "duplicate": 0, "rejected": 0}
        assert stored(session, module="fit") == limit
        assert stored(session, module="fit2") == len(second)  # the bound is per module
        kept = session.scalars(select(ProgressPoint.step).where(ProgressPoint.module == "fit")).all()
    # The first points are kept: the curve so far is never replaced by a later flood.
    assert sorted(kept) == sorted([e.detail["step"] for e in first + more][:limit])


def test_the_bound_is_a_few_thousand_points() -> None:
    # Far above a real run's 80-200 points, far below what would fill a database.
    assert 1_000 <= ingest.MAX_POINTS_PER_MODULE <= 10_000


GOOD = point(1, 100)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"worker": 1024}, "detail.worker: Input should be less than 1024"),
        ({"worker": -1}, "detail.worker: Input should be greater than or equal to 0"),
        ({"worker": True}, "detail.worker: Input should be a valid integer"),
        ({"step": -1}, "detail.step: Input should be greater than or equal to 0"),
        ({"step": 1.5}, "detail.step: Input should be a valid integer"),
        ({"step": 10**13}, "detail.step: Input should be less than or equal to"),
        ({"steps": 0}, "detail.steps: Input should be greater than or equal to 1"),
        ({"loss": "0.5"}, "detail.loss: Input should be a valid number"),
        ({"loss": 1e300}, "detail.loss: Input should be less than or equal to"),
        ({"auc": 1.5}, "detail.auc: Input should be less than or equal to 1"),
        ({"auc": -0.1}, "detail.auc: Input should be greater than or equal to 0"),
        ({"examples_per_s": -3.0}, "detail.examples_per_s: Input should be greater than or equal to 0"),
        ({"seconds": 1e10}, "detail.seconds: Input should be less than or equal to"),
        ({"loss": None}, "detail.loss: Field required"),
        ({"worker": None}, "detail.worker: Field required"),
    ],
)
def test_bad_progress_fields_are_refused_with_the_reason(
    sessions: sessionmaker[Session], change: dict[str, Any], reason: str
) -> None:
    bad = progress({**GOOD, **change}).to_json()
    events, problems = parse_events([progress(GOOD).to_json(), bad, progress(point(1, 200)).to_json()])
    assert len(problems) == 1 and problems[0].startswith("event 1: ") and reason in problems[0], problems
    with sessions() as session:
        assert ingest_events(session, events).counts()["applied"] == 2  # the rest of the batch goes in
        assert stored(session) == 2


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({"node": None}, "module.progress: names the node and the module"),
        ({"module": None}, "module.progress: names the node and the module"),
        ({"detail": {**GOOD, "loss": float("nan")}}, "detail.loss: nan is not a finite number"),
        ({"detail": {**GOOD, "seconds": float("inf")}}, "detail.seconds: inf is not a finite number"),
    ],
    ids=["no node", "no module", "NaN loss", "infinite seconds"],
)
def test_a_progress_event_names_its_module_and_holds_finite_numbers(event: dict[str, Any], reason: str) -> None:
    item = {**json.loads(progress(GOOD).to_json()), **event}
    _, problems = parse_events([{k: v for k, v in item.items() if v is not None}])
    assert len(problems) == 1 and reason in problems[0], problems


def test_progress_for_another_owners_run_is_refused(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        ingest_events(session, run_events(ended=False), Principal("alice", Role.OWNER, ("ranking",)))
        result = ingest_events(session, curve_events(workers=1, calls=3), Principal("bob", Role.OWNER, ("ads",)))
        assert result.counts() == {"applied": 0, "duplicate": 0, "rejected": 3}
        assert "pipeline 'feed' belongs to 'ranking'; user 'bob' may not post its events" in result.problems[0]
        # A viewer posts nothing at all, a new pipeline included.
        viewer = ingest_events(
            session, curve_events(workers=1, calls=1, pipeline="new"), Principal("vera", Role.VIEWER)
        )
        assert viewer.rejected == 1
        assert session.scalar(select(Pipeline).where(Pipeline.name == "new")) is None
        assert stored(session) == 0
        # Its owner's points go in.
        mine = ingest_events(session, curve_events(workers=1, calls=3), Principal("alice", Role.OWNER, ("ranking",)))
        assert mine.applied == 3 and stored(session) == 3


def test_a_detail_model_on_a_progress_event_records_no_model(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        ingest_events(session, run_events(ended=False))
        ingest_events(session, [progress({**GOOD, "model": {"name": "sneaky", "version": "1", "deployed": True}})])
        [run] = list_runs(session)
        detail = run_detail(session, run["id"])
        assert detail is not None and detail["metrics"] == [] and stored(session) == 1
        assert session.scalar(select(Model)) is None


# ---- reading back ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 2, 499, 500, 501, 5000])
def test_downsample_keeps_the_ends_and_at_most_the_limit(size: int) -> None:
    items = list(range(size))
    thinned = downsample(items)
    assert len(thinned) == min(size, MAX_POINTS_PER_SERIES)
    assert thinned == sorted(set(thinned))  # in order, no point twice
    if size:
        assert (thinned[0], thinned[-1]) == (0, size - 1)


def test_only_the_latest_attempt_is_drawn(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        ingest_events(session, run_events(ended=False))
        ingest_events(session, curve_events(workers=2, calls=5) + curve_events(workers=1, calls=3, attempt=2))
        [run] = list_runs(session)
        [curve] = run_progress(session, run["id"])
    assert curve["attempt"] == 2
    assert [(s["worker"], len(s["points"])) for s in curve["workers"]] == [(0, 3)]


# ---- the console ----------------------------------------------------------------------------------------------


def add_curves(sessions: sessionmaker[Session], run_pk: int, curves: dict[tuple[str, str], int]) -> None:
    """Progress of ``curves`` ((node, module) -> workers) in the run ``run_pk``, 12 calls per worker."""
    with sessions() as session:
        run = session.get(Run, run_pk)
        assert run is not None
        pipeline = session.get(Pipeline, run.pipeline_id)
        assert pipeline is not None
        events = []
        for (node, module), workers in curves.items():
            events += curve_events(workers, 12, run_id=run.run_id, pipeline=pipeline.name, node=node, module=module)
        assert ingest_events(session, events).applied == len(events)


def test_the_run_page_draws_a_curve_per_module_with_a_line_per_worker(activity_center: sessionmaker[Session]) -> None:
    console = TestClient(create_app(activity_center))
    with activity_center() as session:
        [run] = list_runs(session)
    curves = {("train", "fit"): 3, ("train", "fit_small"): 1}
    add_curves(activity_center, run["id"], curves)
    log_in(console, "vera")  # a viewer: the run page's rule, anyone logged in
    page = console.get(f"/runs/{run['id']}")
    assert page.status_code == 200 and page.headers["content-security-policy"] == CSP
    sources = [unescape(s) for s in re.findall(r'<img src="([^"]+\.svg\?[^"]*)"', page.text)]
    assert sources == [f"/runs/{run['id']}/curve.svg?{urlencode({'node': n, 'module': m})}" for n, m in curves]
    for source, workers in zip(sources, curves.values(), strict=True):
        answer = console.get(source)
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/svg+xml"
        assert "script-src" not in answer.headers["content-security-policy"]
        assert answer.headers["content-security-policy"].startswith("default-src 'none'")
        root = etree.fromstring(answer.content, etree.XMLParser(resolve_entities=False, no_network=True))
        lines = {g.get("id") for g in root.iter(f"{SVG}g") if (g.get("id") or "").startswith("worker-")}
        assert lines == {f"worker-{w}-{what}" for w in range(workers) for what in ("loss", "auc")}
        # Drawn here, whole: nothing to run, nothing to fetch.
        assert not list(root.iter(f"{SVG}script")) and not list(root.iter(f"{SVG}image"))
        assert not re.search(rb'(href|src)="(https?:|//)', answer.content)
        assert len(answer.content) < 200_000


def test_a_run_without_progress_shows_no_curves(activity_center: sessionmaker[Session]) -> None:
    console = TestClient(create_app(activity_center))
    with activity_center() as session:
        [run] = list_runs(session)
    log_in(console, "vera")
    page = console.get(f"/runs/{run['id']}")
    assert page.status_code == 200 and "Training curves" not in page.text and ".svg" not in page.text


def test_ids_cannot_inject_markup_into_the_page_or_the_chart(activity_center: sessionmaker[Session]) -> None:
    console = TestClient(create_app(activity_center))
    with activity_center() as session:
        [run] = list_runs(session)
    node, module = "n<script>alert(1)</script>", 'm"><img src=x onerror=alert(1)>$\\frac{1}{2}$'
    add_curves(activity_center, run["id"], {(node, module): 2})
    log_in(console, "vera")
    page = console.get(f"/runs/{run['id']}")
    assert "<script>" not in page.text and "<img src=x" not in page.text
    [source] = re.findall(r'<img src="([^"]+\.svg\?[^"]*)"', page.text)
    assert "<" not in source and '"' not in source
    assert parse_qs(urlsplit(unescape(source)).query) == {"node": [node], "module": [module]}
    answer = console.get(unescape(source))
    assert answer.status_code == 200
    root = etree.fromstring(answer.content)
    assert not list(root.iter(f"{SVG}script")) and not list(root.iter(f"{SVG}image"))
    assert b"<script" not in answer.content and b"alert(1)</" not in answer.content
    assert {g.get("id") for g in root.iter(f"{SVG}g") if (g.get("id") or "").startswith("worker-")} == {
        f"worker-{w}-{what}" for w in range(2) for what in ("loss", "auc")
    }


def test_a_curve_needs_a_login_and_valid_parameters(activity_center: sessionmaker[Session]) -> None:
    console = TestClient(create_app(activity_center))
    with activity_center() as session:
        [run] = list_runs(session)
    add_curves(activity_center, run["id"], {("train", "fit"): 1})
    path = f"/runs/{run['id']}/curve.svg?node=train&module=fit"
    anonymous = console.get(path, follow_redirects=False)
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login?next=")
    log_in(console, "vera")
    assert console.get(path).status_code == 200
    for bad in (
        "/runs/abc/curve.svg?node=train&module=fit",
        f"/runs/{2**31}/curve.svg?node=train&module=fit",
        f"/runs/{run['id'] + 1}/curve.svg?node=train&module=fit",
        f"/runs/{run['id']}/curve.svg?node=train&module=nothing",
        f"/runs/{run['id']}/curve.svg?node={'t' * 201}&module=fit",
        f"/runs/{run['id']}/curve.svg?node=train&module=fit%00",
        f"/runs/{run['id']}/curve.svg?node=train",
        f"/runs/{run['id']}/curve.svg",
    ):
        answer = console.get(bad)
        assert answer.status_code == 404 and answer.headers["content-type"].startswith("text/html"), bad


# ---- the API --------------------------------------------------------------------------------------------------


def test_the_api_returns_each_modules_points(sessions: sessionmaker[Session]) -> None:
    api, headers = TestClient(create_app(sessions)), add_team(sessions)
    events = run_events(ended=True) + curve_events(workers=2, calls=300) + curve_events(workers=1, calls=5, module="b")
    body = "[" + ",".join(e.to_json() for e in events) + "]"
    answer = api.post("/api/v1/events", content=body, headers=headers["alice"])
    assert answer.status_code == 200 and answer.json()["applied"] == len(events), answer.text
    [run] = api.get("/api/v1/runs", headers=headers["vera"]).json()["items"]
    assert api.get(f"/api/v1/runs/{run['id']}/progress").status_code == 401
    answer = api.get(f"/api/v1/runs/{run['id']}/progress", headers=headers["vera"])
    assert answer.status_code == 200, answer.text
    found = answer.json()
    assert found["run"] == run["id"]
    assert [(m["node"], m["module"], m["attempt"], m["steps"]) for m in found["modules"]] == [
        ("train", "fit", 1, STEPS),
        ("train", "b", 1, STEPS),
    ]
    fit = found["modules"][0]
    sent = {w: [e.detail for e in events if e.module == "fit" and e.detail.get("worker") == w] for w in (0, 1)}
    for series in fit["workers"]:
        points, mine = series["points"], sent[series["worker"]]
        # 300 calls each: thinned to the bound, the first and last kept, every point one that was sent.
        assert len(mine) > MAX_POINTS_PER_SERIES // 2 and len(points) == min(len(mine), MAX_POINTS_PER_SERIES)
        assert (points[0]["step"], points[-1]["step"]) == (mine[0]["step"], mine[-1]["step"])
        by_step = {d["step"]: d for d in mine}
        assert all(p["loss"] == by_step[p["step"]]["loss"] for p in points)
        assert all(p["auc"] == by_step[p["step"]].get("auc") for p in points)
    # The run's detail stays as it was: its metrics are not the curve's points.
    detail = api.get(f"/api/v1/runs/{run['id']}", headers=headers["vera"]).json()
    assert detail["metrics"] == []
    assert api.get("/api/v1/runs/999/progress", headers=headers["vera"]).status_code == 404
    assert api.get(f"/api/v1/runs/{2**31}/progress", headers=headers["vera"]).status_code == 422
    schema = api.get("/api/openapi.json").json()
    assert "RunProgress" in schema["components"]["schemas"]
    assert "/api/v1/runs/{run_pk}/progress" in schema["paths"]


def test_thinning_to_500_points_applies_per_worker_with_many_points(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        ingest_events(session, run_events(ended=False))
        ingest_events(session, curve_events(workers=1, calls=MAX_POINTS_PER_SERIES + 37))
        [run] = list_runs(session)
        [curve] = run_progress(session, run["id"])
    [series] = curve["workers"]
    steps = [p["step"] for p in series["points"]]
    assert len(steps) == MAX_POINTS_PER_SERIES and steps == sorted(steps)


# ---- the migration --------------------------------------------------------------------------------------------


def test_the_migration_upgrades_and_downgrades(engine: Engine, sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        ingest_events(session, run_events(ended=False) + curve_events(workers=1, calls=2))
    try:
        command.downgrade(alembic_config(engine), "0003")
        assert "progress_points" not in inspect(engine).get_table_names()
        with sessions() as session:
            assert [r.run_id for r in session.scalars(select(Run))] == ["r1"]  # nothing else is touched
    finally:
        migrate(engine)  # the schema other tests share (PostgreSQL) is left at head whatever happened
    assert "progress_points" in inspect(engine).get_table_names()
    indexes = {i["name"] for i in inspect(engine).get_indexes("progress_points")}
    assert "ix_progress_points_run_module" in indexes
    with sessions() as session:
        assert ingest_events(session, curve_events(workers=1, calls=2)).applied == 2
        assert stored(session) == 2
