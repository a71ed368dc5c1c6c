"""The center as an attacker with an ordinary account sees it: a real ``weiflow center serve`` on
SQLite and PostgreSQL, driven over HTTP.

The findings of issue 11, each as a regression test: a forged replay of another group's run
must change no owner and delete nothing; a directory outside the storage roots survives any
sequence of events, confirmations and sweeps; malformed events are refused one by one and
nothing stored breaks a page; slow and large clients are bounded; ids past 64 bits are 422.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from tests.center.conftest import activity_run_events
from tests.center.servers import add_users, database_url, running_center
from weiflow.center.db import make_engine, make_sessionmaker
from weiflow.center.models import AuditEntry, Dataset, Model, ModelVersion, Pipeline, Role
from weiflow.tracking import DatasetInfo, Event, EventKind

pytestmark = pytest.mark.integration

BODY_TIMEOUT_S = 2.0


@dataclass
class Center:
    url: str
    env: dict[str, str]
    sessions: sessionmaker[Session]
    storage: Path
    tokens: dict[str, str]

    def headers(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    def post_events(self, user: str, events: list[Event] | list[Any]) -> httpx.Response:
        body = [e.to_json() if isinstance(e, Event) else e for e in events]
        content = "[" + ",".join(b if isinstance(b, str) else json.dumps(b) for b in body) + "]"
        return httpx.post(f"{self.url}/api/v1/events", content=content, headers=self.headers(user), timeout=120)

    def get(self, path: str, user: str = "vera", **kwargs: Any) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers=self.headers(user), timeout=10, **kwargs)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "weiflow", *args], env=self.env, capture_output=True, text=True, timeout=120
        )


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def center(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Center]:
    """A real center (2 workers) with users: root (admin), qa (owner, group qa), eve (owner, group other), vera."""
    tmp = tmp_path_factory.mktemp(f"center-{request.param}")
    with database_url(request.param, tmp) as url:
        tokens = add_users(
            url,
            {
                "root": (Role.ADMIN, []),
                "qa": (Role.OWNER, ["qa"]),
                "eve": (Role.OWNER, ["other"]),
                "vera": (Role.VIEWER, []),
            },
        )
        with running_center(tmp, url, workers=2, WEIFLOW_CENTER_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S)) as (base, env):
            engine = make_engine(url)
            try:
                yield Center(base, env, make_sessionmaker(engine), tmp / "storage", tokens)
            finally:
                engine.dispose()


def run_events(pipeline: str, run_id: str, owner: str, writes: dict[str, tuple[str, str]], **extra: Any) -> list[Event]:
    """A run's events: started, one node writing ``writes`` (name -> (uri, retention)), succeeded."""
    declared = {name: {"uri": uri, "retention": policy, "consumers": []} for name, (uri, policy) in writes.items()}
    ts = extra.pop("ts", datetime.now(UTC).isoformat())
    events = [
        Event(EventKind.RUN_STARTED, run_id, pipeline, ts=ts, detail={"owner": owner, **extra}),
        Event(EventKind.NODE_STARTED, run_id, pipeline, node="make", ts=ts, detail={"writes": declared}),
    ]
    for name, (uri, _) in writes.items():
        events.append(
            Event(
                EventKind.DATASET_WRITTEN,
                run_id,
                pipeline,
                node="make",
                ts=ts,
                dataset=DatasetInfo(name, uri, "parquet", 10, 1, 1),
            )
        )
    events += [
        Event(EventKind.NODE_SUCCEEDED, run_id, pipeline, node="make", ts=ts),
        Event(EventKind.RUN_SUCCEEDED, run_id, pipeline, ts=ts),
    ]
    return events


def files_at(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "part-0.parquet").write_text("precious")
    return path


def age_everything(center: Center, days: float) -> None:
    """Time passes: every dataset was written and last read ``days`` ago."""
    past = datetime.now(UTC) - timedelta(days=days)
    with center.sessions() as session:
        session.execute(update(Dataset).values(created_at=past, last_access=None))
        session.commit()


def test_a_forged_replay_of_another_groups_run_changes_no_owner_and_deletes_nothing(center: Center) -> None:
    tag = uuid.uuid4().hex[:6]
    pipeline = f"qa_report_{tag}"
    precious = files_at(center.storage / f"qa-{tag}" / "pinned")
    outside = files_at(center.storage.parent / f"outside-{tag}")
    model_event = Event(
        EventKind.METRICS,
        "r1",
        pipeline,
        node="make",
        detail={"model": {"name": f"qa_model_{tag}", "version": "1", "deployed": True}},
    )
    legit = run_events(pipeline, "r1", "qa", {"kept": (f"file://{precious}", "pinned")})
    answer = center.post_events("qa", [*legit[:-1], model_event, legit[-1]]).json()
    assert (answer["applied"], answer["rejected"]) == (len(legit) + 1, 0), answer

    # eve (group 'other') replays qa's pipeline under a new run id, claiming it for her group,
    # with a timestamp in 2000, re-registering qa's pinned data with ttl:1 and adding a directory
    # outside every storage root; and flips qa's deployed model off.
    forged = run_events(
        pipeline,
        "r-forged",
        "other",
        {"kept": (f"file://{precious}", "ttl:1"), "loot": (f"file://{outside}", "ttl:1")},
        ts="2000-01-01T00:00:00+00:00",
    )
    flip = Event(
        EventKind.METRICS,
        "r-eve",
        f"eve_{tag}",
        detail={"owner": "other", "model": {"name": f"qa_model_{tag}", "version": "1", "deployed": False}},
    )
    answer = center.post_events("eve", [*forged, flip]).json()
    assert answer["applied"] == 0 and answer["rejected"] == len(forged) + 1, answer
    assert any("belongs to 'qa'" in p for p in answer["problems"]), answer["problems"]
    assert any(f"model 'qa_model_{tag}' belongs to 'qa'" in p for p in answer["problems"]), answer["problems"]

    # In her own pipeline she may write what she likes, even outside the roots, and ask for it gone.
    own = run_events(f"eve_{tag}", "r1", "other", {"loot": (f"file://{outside}", "ttl:1")})
    assert center.post_events("eve", own).json()["applied"] == len(own)
    # ... but not take over qa's dataset through her own pipeline either.
    grab = run_events(f"eve_{tag}", "r2", "other", {"kept": (f"file://{precious}", "ttl:1")})
    assert center.post_events("eve", grab).json()["rejected"] == 1

    age_everything(center, days=30)
    for _ in range(2):  # mark, then (grace 0) delete what is due
        swept = center.cli("center", "sweep", "--grace-days", "0")
        assert swept.returncode in (0, 1), swept.stderr
        with center.sessions() as session:
            for dataset_id in session.scalars(select(Dataset.id).where(Dataset.owner == "other")):
                httpx.post(
                    f"{center.url}/api/v1/datasets/{dataset_id}/confirm-deletion",
                    headers=center.headers("eve"),
                    timeout=10,
                )

    assert (precious / "part-0.parquet").read_text() == "precious"
    assert (outside / "part-0.parquet").read_text() == "precious"  # refused at deletion: outside the roots
    with center.sessions() as session:
        assert session.scalar(select(Pipeline.owner).where(Pipeline.name == pipeline)) == "qa"
        kept = session.scalar(select(Dataset).where(Dataset.uri == f"file://{precious}"))
        assert kept is not None and (kept.owner, kept.retention, kept.pinned) == ("qa", "pinned", True)
        deployed = session.scalar(
            select(ModelVersion.deployed)
            .join(Model)
            .where(Model.name == f"qa_model_{tag}", ModelVersion.version == "1")
        )
        assert deployed is True
        owner_changes = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "pipeline.owner", AuditEntry.target_id == pipeline)
        ).all()
        assert owner_changes == []


def test_a_real_runs_events_pass_validation_and_apply(center: Center) -> None:
    events = activity_run_events(run_id=f"real-{uuid.uuid4().hex[:6]}")  # owner 'growth': an admin posts it
    answer = center.post_events("root", events).json()
    assert (answer["applied"], answer["rejected"], answer["problems"]) == (len(events), 0, []), answer
    [run] = center.get("/api/v1/runs", params={"pipeline": "user_activity_report", "limit": 1}).json()["items"]
    nodes = center.get(f"/api/v1/runs/{run['id']}").json()["nodes"]
    assert [n["state"] for n in nodes] == ["succeeded"] * len(nodes) and any(n["upstream"] for n in nodes)


def test_an_owner_change_needs_a_new_spec_version_from_someone_who_answers_for_both_and_is_audited(
    center: Center,
) -> None:
    tag = uuid.uuid4().hex[:6]
    pipeline = f"handover_{tag}"
    sha1, sha2 = "1" * 64, "2" * 64
    assert center.post_events("qa", run_events(pipeline, "r1", "qa", {}, spec_sha256=sha1)).json()["rejected"] == 0
    # qa answers for 'qa' only: moving the pipeline to 'other' is refused even with a new spec.
    moved = center.post_events("qa", run_events(pipeline, "r2", "other", {}, spec_sha256=sha2)).json()
    # Only the event claiming the new owner is refused; the run's other events are qa's to post.
    assert moved["rejected"] == 1 and "only by an admin" in moved["problems"][0], moved
    # An admin may; the change is audited with the old and new owner.
    assert center.post_events("root", run_events(pipeline, "r3", "other", {}, spec_sha256=sha2)).json()["rejected"] == 0
    with center.sessions() as session:
        assert session.scalar(select(Pipeline.owner).where(Pipeline.name == pipeline)) == "other"
        [entry] = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "pipeline.owner", AuditEntry.target_id == pipeline)
        ).all()
        assert (entry.actor, entry.detail["old"], entry.detail["new"]) == ("root", "qa", "other")
    # Now qa's own events for it are refused, eve's accepted.
    assert center.post_events("qa", run_events(pipeline, "r4", "other", {})).json()["applied"] == 0
    assert center.post_events("eve", run_events(pipeline, "r5", "other", {})).json()["rejected"] == 0


def test_a_bad_event_is_refused_with_its_reason_and_the_rest_of_its_batch_applied(center: Center) -> None:
    tag = uuid.uuid4().hex[:6]
    good = run_events(f"good_{tag}", "r1", "qa", {"d": (f"file://{center.storage}/good-{tag}", "ttl:3")})
    bad: list[Any] = [
        {**json.loads(good[0].to_json()), "id": uuid.uuid4().hex, "attempt": "x"},
        {
            **json.loads(good[2].to_json()),
            "id": uuid.uuid4().hex,
            "dataset": {**json.loads(good[2].to_json())["dataset"], "size_bytes": "big"},
        },
        {**json.loads(good[0].to_json()), "id": uuid.uuid4().hex, "detail": {"deep": json.loads("[" * 50 + "]" * 50)}},
        {**json.loads(good[0].to_json()), "id": uuid.uuid4().hex, "detail": {"auc": float("nan")}},
        {"kind": "run.started"},
        7,
        {**json.loads(good[0].to_json()), "id": uuid.uuid4().hex, "run_id": "a\x00b"},
        {**json.loads(good[1].to_json()), "id": uuid.uuid4().hex, "detail": {"upstream": {"a": []}}},
    ]
    answer = center.post_events("qa", [bad[0], good[0], bad[1], *good[1:3], bad[2], bad[3], *good[3:], *bad[4:]])
    body = answer.json()
    assert answer.status_code == 200 and (body["applied"], body["rejected"]) == (len(good), len(bad)), body
    reasons = "\n".join(body["problems"])
    for expected in (
        "event 0: attempt",
        "size_bytes",
        "nested deeper",
        "auc: nan is not a finite",
        "run_id",
        "event 10",
    ):
        assert expected in reasons, reasons
    # Nothing stored breaks a read: the lists, the console's pages, and later events of that node.
    for path in ("/api/v1/datasets", "/api/v1/runs", "/api/v1/jobs"):
        assert center.get(path).status_code == 200
    later = Event(EventKind.NODE_STARTED, "r1", f"good_{tag}", node="make", attempt=2)
    assert center.post_events("qa", [later]).json()["applied"] == 1
    # Explicit nulls mean "not given"; a NUL in a list filter is a 422 (PostgreSQL cannot compare it).
    nulls = Event(EventKind.NODE_STARTED, "r1", f"good_{tag}", node="nulls", detail={"modules": None, "reads": None})
    assert center.post_events("qa", [nulls]).json()["applied"] == 1
    for path in ("/api/v1/runs?pipeline=%00", "/api/v1/datasets?name=a%00b", "/api/v1/datasets?owner=%00"):
        assert center.get(path).status_code == 422, path
    # A body nested 1,000 deep is a 400, not a 500.
    deep = httpx.post(f"{center.url}/api/v1/events", content="[" * 1000 + "]" * 1000, headers=center.headers("qa"))
    assert deep.status_code in (200, 400) and deep.status_code < 500


def test_limits_answer_413_and_long_errors_are_cut_with_a_pointer_to_the_run_log(center: Center) -> None:
    tag = uuid.uuid4().hex[:6]
    too_many = [Event(EventKind.RUN_STARTED, f"r{i}", f"many_{tag}") for i in range(1001)]
    answer = center.post_events("qa", too_many)
    assert answer.status_code == 413 and "at most 1000" in answer.json()["detail"]
    huge = httpx.post(
        f"{center.url}/api/v1/events", content=b"[" + b" " * (9 * 1024 * 1024) + b"]", headers=center.headers("qa")
    )
    assert huge.status_code == 413
    failed = Event(EventKind.RUN_FAILED, "r1", f"long_{tag}", error="E" * 100_000, detail={"owner": "qa"})
    assert center.post_events("qa", [failed]).json()["applied"] == 1
    [run] = center.get("/api/v1/runs", params={"pipeline": f"long_{tag}"}).json()["items"]
    error = center.get(f"/api/v1/runs/{run['id']}").json()["error"]
    assert len(error) < 9_000 and f"runs/long_{tag}/r1.jsonl" in error and error.startswith("EEEE")


@pytest.mark.reliability(
    area="input",
    component="center API and console",
    fault="slow clients: bodies trickled a byte at a time",
    proves="408 once the body deadline passes; other requests answered within 1 s meanwhile",
)
def test_slow_clients_time_out_and_never_hold_the_server(center: Center) -> None:
    port = int(center.url.rsplit(":", 1)[1])
    slow: list[socket.socket] = []
    head = (
        f"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {center.tokens['qa']}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n["
    ).encode()
    for _ in range(20):
        client = socket.create_connection(("127.0.0.1", port))
        client.sendall(head)
        slow.append(client)
    stop = threading.Event()

    def trickle() -> None:
        while not stop.is_set():
            for client in slow:
                with contextlib.suppress(OSError):  # the server closed it (408): fine
                    client.send(b" ")
            time.sleep(0.25)

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        waits = []
        for _ in range(10):
            started = time.monotonic()
            assert center.get("/api/v1/me").status_code == 200
            waits.append(time.monotonic() - started)
            time.sleep(0.1)
        assert max(waits) < 1.0, waits
        time.sleep(BODY_TIMEOUT_S + 0.5)
        answers = []
        for client in slow:
            client.settimeout(5)
            try:
                answers.append(client.recv(100).split(b"\r\n", 1)[0])
            except OSError as exc:
                answers.append(repr(exc).encode())
        assert all(a.startswith(b"HTTP/1.1 408") for a in answers), answers
    finally:
        stop.set()
        trickler.join()
        for client in slow:
            client.close()


def test_concurrent_full_batches_leave_reads_fast(center: Center) -> None:
    tag = uuid.uuid4().hex[:6]
    batches = [
        [Event(EventKind.MODULE_STARTED, f"r{b}", f"bulk_{tag}", node="n", module=f"m{i}") for i in range(500)]
        for b in range(8)
    ]
    center.post_events("qa", [Event(EventKind.RUN_STARTED, "r0", f"bulk_{tag}", detail={"owner": "qa"})])
    answers: list[int] = []
    threads = [
        threading.Thread(target=lambda b=b: answers.append(center.post_events("qa", b).status_code)) for b in batches
    ]
    for thread in threads:
        thread.start()
    waits = []
    while any(t.is_alive() for t in threads):
        started = time.monotonic()
        assert center.get("/api/v1/me").status_code == 200
        waits.append(time.monotonic() - started)
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    # Each batch is applied, or (past its bounded wait for a turn) told to come back: never lost silently.
    assert len(answers) == len(batches) and set(answers) <= {200, 503}, answers
    assert waits and max(waits) < 1.0, waits


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/runs/9223372036854775808",
        "/api/v1/runs/2147483648",  # past PostgreSQL's 32-bit integer columns
        "/api/v1/datasets/2147483648",
        "/api/v1/datasets/9223372036854775808",
        "/api/v1/runs?before=9223372036854775808",
        "/api/v1/datasets?before=99999999999999999999999",
        "/api/v1/audit?before=9223372036854775808",
        "/api/v1/runs/0",
    ],
)
def test_ids_past_the_id_columns_range_are_422(center: Center, path: str) -> None:
    assert center.get(path, user="root").status_code == 422


def test_api_answers_carry_security_headers_and_the_docs_need_no_cdn(center: Center) -> None:
    answer = center.get("/api/v1/me")
    for name in ("content-security-policy", "x-content-type-options", "x-frame-options", "cache-control"):
        assert name in answer.headers, name
    assert answer.headers["x-content-type-options"] == "nosniff"
    docs = httpx.get(f"{center.url}/api/docs", timeout=10)
    assert docs.status_code == 200 and "cdn" not in docs.text.lower()
    assert "/api/docs/assets/swagger-ui-bundle.js" in docs.text
    script = httpx.get(f"{center.url}/api/docs/assets/swagger-ui-bundle.js", timeout=10)
    assert script.status_code == 200 and len(script.content) > 100_000
