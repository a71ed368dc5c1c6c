"""REST API: every endpoint, with unauthorized (401) and forbidden (403) cases, and the audit trail."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from tests.center.conftest import add_team
from weiflow.center.api import create_app
from weiflow.center.models import Dataset as DatasetRow
from weiflow.center.models import Pipeline, Role
from weiflow.center.models import User as UserRow
from weiflow.center.repository import create_token, create_user, list_datasets
from weiflow.center.retention import sweep
from weiflow.tracking import DatasetInfo, Event, EventKind

T0 = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
def api(sessions: sessionmaker[Session]) -> tuple[TestClient, dict[str, dict[str, str]]]:
    return TestClient(create_app(sessions)), add_team(sessions)


def events(tmp_path: Path) -> list[str]:
    path = tmp_path / "samples"
    path.mkdir()
    (path / "part-0").write_text("x" * 10)
    uri = f"file://{path}"
    ts = T0.isoformat()
    writes = {"samples": {"uri": uri, "retention": "ttl:1", "consumers": []}}
    return [
        e.to_json()
        for e in (
            Event(EventKind.RUN_STARTED, "r1", "feed", ts=ts, detail={"owner": "ranking", "upstream": {"make": []}}),
            Event(
                EventKind.NODE_STARTED, "r1", "feed", node="make", ts=ts, detail={"modules": ["w"], "writes": writes}
            ),
            Event(
                EventKind.DATASET_WRITTEN,
                "r1",
                "feed",
                node="make",
                module="w",
                ts=ts,
                dataset=DatasetInfo("samples", uri, "json", 10, 1, 1),
            ),
            Event(EventKind.MODULE_SUCCEEDED, "r1", "feed", node="make", module="w", ts=ts),
            Event(EventKind.NODE_SUCCEEDED, "r1", "feed", node="make", ts=ts),
            Event(EventKind.RUN_SUCCEEDED, "r1", "feed", ts=ts),
        )
    ]


def test_every_endpoint_needs_a_valid_token(api: tuple[TestClient, dict[str, dict[str, str]]]) -> None:
    client, _ = api
    bad = {"Authorization": "Bearer wf_not-a-token"}
    for method, path in (
        ("get", "/api/v1/me"),
        ("get", "/api/v1/runs"),
        ("get", "/api/v1/runs/1"),
        ("get", "/api/v1/datasets"),
        ("get", "/api/v1/datasets/1"),
        ("get", "/api/v1/jobs"),
        ("get", "/api/v1/models"),
        ("get", "/api/v1/audit"),
        ("post", "/api/v1/events"),
        ("post", "/api/v1/datasets/1/pin"),
        ("post", "/api/v1/datasets/1/unpin"),
        ("post", "/api/v1/datasets/1/confirm-deletion"),
        ("post", "/api/v1/datasets/1/reject-deletion"),
    ):
        for headers in ({}, bad):
            response = getattr(client, method)(path, headers=headers)
            assert response.status_code == 401, (method, path, response.text)


def test_a_disabled_user_is_refused_once_the_token_cache_lapses_and_at_once_without_it(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as session:
        create_user(session, "dora", Role.VIEWER)
        headers = {"Authorization": f"Bearer {create_token(session, 'dora')}"}
    cached = TestClient(create_app(sessions, token_cache_s=0.5))
    uncached = TestClient(create_app(sessions, token_cache_s=0))
    assert cached.get("/api/v1/me", headers=headers).status_code == 200
    assert uncached.get("/api/v1/me", headers=headers).status_code == 200
    with sessions() as session:
        session.execute(update(UserRow).where(UserRow.username == "dora").values(disabled=True))
        session.commit()
    assert uncached.get("/api/v1/me", headers=headers).status_code == 401
    time.sleep(0.6)
    assert cached.get("/api/v1/me", headers=headers).status_code == 401


def test_an_expired_token_is_refused_at_once_even_while_cached(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        create_user(session, "eve", Role.VIEWER)
        headers = {"Authorization": f"Bearer {create_token(session, 'eve', ttl=timedelta(seconds=1))}"}
    client = TestClient(create_app(sessions, token_cache_s=600))
    assert client.get("/api/v1/datasets", headers=headers).status_code == 200
    time.sleep(1.1)
    assert client.get("/api/v1/datasets", headers=headers).status_code == 401


def test_the_database_rendered_dataset_list_equals_the_python_one(
    api: tuple[TestClient, dict[str, dict[str, str]]], sessions: sessionmaker[Session]
) -> None:
    """The API's list is JSON the database writes (repo.dataset_page_json); the console's comes from
    Python dicts. Both must say the same, value for value, on SQLite and PostgreSQL."""
    client, headers = api
    exact = datetime(2026, 11, 2, 3, 4, 5, tzinfo=UTC)  # no microseconds: still six digits in both
    with sessions() as session:
        session.add(Pipeline(id=1, name="feed", owner="ranking"))
        session.flush()
        for i in range(7):
            session.add(
                DatasetRow(
                    uri=f'file:///data/{i}/part \\ "quoted"',
                    name=f"ds{i % 2}",
                    pipeline_id=1 if i % 2 else None,
                    owner="ranking" if i % 3 else None,
                    format="parquet" if i % 2 else None,
                    size_bytes=(1 << 40) + i,
                    rows=None if i == 3 else i * 1000,
                    retention="ttl:3" if i % 2 else None,
                    state="pending-deletion" if i in (2, 5) else "live",
                    pinned=i == 4,
                    reason='über "alt"\nzweite Zeile ✓' if i in (2, 5) else None,
                    delete_after=exact + timedelta(days=i) if i in (2, 5) else None,
                    last_access=T0 + timedelta(microseconds=123456 * i) if i % 2 else None,
                    created_at=exact + timedelta(hours=i),
                )
            )
        session.commit()
    for params in (
        {},
        {"limit": 3},
        {"limit": 3, "before": 5},
        {"state": "pending-deletion"},
        {"owner": "ranking"},
        {"name": "ds1"},
        {"pipeline": "feed"},
        {"pipeline": "nothing"},
    ):
        response = client.get("/api/v1/datasets", params=params, headers=headers["vera"])
        assert response.status_code == 200, response.text
        with sessions() as session:
            limit = int(params.get("limit", 50))
            kwargs = {k: v for k, v in params.items() if k != "limit"}
            expected = list_datasets(session, limit=limit, **kwargs)  # type: ignore[arg-type]
        assert response.json() == {
            "items": expected,
            "next": expected[-1]["id"] if len(expected) == limit else None,
        }, params
        assert all(item["created_at"].endswith(".000000+00:00") for item in response.json()["items"])


def test_openapi_document_is_served(api: tuple[TestClient, dict[str, dict[str, str]]]) -> None:
    client, _ = api
    paths = client.get("/api/openapi.json").json()["paths"]
    assert "/api/v1/datasets/{dataset_id}/confirm-deletion" in paths and "/api/v1/runs/{run_pk}" in paths


def test_ingest_then_browse_runs_datasets_jobs(
    api: tuple[TestClient, dict[str, dict[str, str]]], tmp_path: Path
) -> None:
    client, h = api
    body = "[" + ",".join(events(tmp_path)) + "]"
    assert client.post("/api/v1/events", content=body, headers=h["vera"]).status_code == 403
    first = client.post("/api/v1/events", content=body, headers=h["alice"]).json()
    assert (first["applied"], first["duplicate"], first["rejected"]) == (6, 0, 0)
    assert client.post("/api/v1/events", content=body, headers=h["alice"]).json()["duplicate"] == 6
    assert client.post("/api/v1/events", content="{not json", headers=h["alice"]).status_code == 400
    runs = client.get("/api/v1/runs", params={"pipeline": "feed"}, headers=h["vera"]).json()
    assert [(r["run_id"], r["state"]) for r in runs["items"]] == [("r1", "succeeded")] and runs["next"] is None
    assert client.get("/api/v1/runs", params={"state": "failed"}, headers=h["vera"]).json()["items"] == []
    detail = client.get(f"/api/v1/runs/{runs['items'][0]['id']}", headers=h["vera"]).json()
    assert [(n["id"], [m["state"] for m in n["modules"]]) for n in detail["nodes"]] == [("make", ["succeeded"])]
    assert client.get("/api/v1/runs/999", headers=h["vera"]).status_code == 404
    datasets = client.get("/api/v1/datasets", params={"owner": "ranking"}, headers=h["vera"]).json()["items"]
    assert [(d["name"], d["size_bytes"], d["state"]) for d in datasets] == [("samples", 10, "live")]
    one = client.get(f"/api/v1/datasets/{datasets[0]['id']}", headers=h["vera"]).json()
    assert one["producer"]["node"] == "make" and one["lineage"] == {"upstream": [], "downstream": []}
    assert client.get("/api/v1/datasets/999", headers=h["vera"]).status_code == 404
    assert client.get("/api/v1/jobs", headers=h["vera"]).json()[0]["name"] == "feed"
    assert client.get("/api/v1/models", headers=h["vera"]).json() == []


def test_pagination_walks_every_page_once(api: tuple[TestClient, dict[str, dict[str, str]]]) -> None:
    client, h = api
    batch = [Event(EventKind.RUN_STARTED, f"r{i}", "p").to_json() for i in range(7)]
    client.post("/api/v1/events", content="[" + ",".join(batch) + "]", headers=h["root"])
    seen: list[str] = []
    params: dict[str, int] = {"limit": 3}
    while True:
        page = client.get("/api/v1/runs", params=params, headers=h["vera"]).json()
        seen += [r["run_id"] for r in page["items"]]
        if page["next"] is None:
            break
        params["before"] = page["next"]
    assert sorted(seen) == sorted(f"r{i}" for i in range(7)) and len(seen) == 7
    assert client.get("/api/v1/runs", params={"limit": 0}, headers=h["vera"]).status_code == 422


def test_only_the_owner_or_an_admin_confirms_pins_and_everything_is_audited(
    api: tuple[TestClient, dict[str, dict[str, str]]], sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    client, h = api
    client.post("/api/v1/events", content="[" + ",".join(events(tmp_path)) + "]", headers=h["alice"])
    [dataset] = client.get("/api/v1/datasets", headers=h["vera"]).json()["items"]
    url = f"/api/v1/datasets/{dataset['id']}"
    assert client.post(url + "/confirm-deletion", headers=h["alice"]).status_code == 409  # not pending yet
    sweep(sessions, roots=[f"file://{tmp_path}"], now=datetime.now(UTC) + timedelta(days=2))  # clocks run from receipt
    for who, code in (("vera", 403), ("bob", 403)):
        for action in ("confirm-deletion", "reject-deletion", "pin", "unpin"):
            assert client.post(f"{url}/{action}", headers=h[who]).status_code == code, (who, action)
    confirmed = client.post(url + "/confirm-deletion", headers=h["alice"]).json()
    assert confirmed["state"] == "pending-deletion"
    pinned = client.post(url + "/pin", headers=h["root"]).json()
    assert (pinned["pinned"], pinned["state"]) == (True, "live")
    assert client.post(url + "/unpin", headers=h["alice"]).json()["pinned"] is False
    assert client.post("/api/v1/datasets/999/pin", headers=h["root"]).status_code == 404
    assert client.get("/api/v1/audit", headers=h["alice"]).status_code == 403
    actions = [(a["actor"], a["action"]) for a in client.get("/api/v1/audit", headers=h["root"]).json()["items"]]
    assert actions[:4] == [
        ("alice", "dataset.unpin"),
        ("root", "dataset.pin"),
        ("alice", "deletion.confirm"),
        ("system:sweep", "retention.mark"),
    ]
    assert client.get("/api/v1/me", headers=h["bob"]).json() == {"username": "bob", "role": "owner", "groups": ["ads"]}
