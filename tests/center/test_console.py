"""The web console: login and sessions, CSRF, every page, owner actions through the repository rules, mounting."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tests.center.conftest import PASSWORD
from weiflow.center.api import create_app
from weiflow.center.console import SESSION_COOKIE
from weiflow.center.dagsvg import layers, render_dag_svg
from weiflow.center.models import ApiToken, AuditEntry, Dataset, DatasetState, Run
from weiflow.center.retention import sweep
from weiflow.config import load_settings

LATER = datetime.now(UTC) + timedelta(days=8)  # past ttl:7 of 'events', so a sweep marks it


def csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field in the page"
    return found.group(1)


def log_in(client: TestClient, username: str, password: str = PASSWORD, base: str = "") -> None:
    form = client.get(f"{base}/login")
    response = client.post(
        f"{base}/login",
        data={"username": username, "password": password, "csrf": csrf(form.text), "next": "/datasets"},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    assert response.headers["location"] == f"{base}/datasets"


@pytest.fixture
def console(activity_center: sessionmaker[Session]) -> TestClient:
    return TestClient(create_app(activity_center))


def dataset_id(sessions: sessionmaker[Session], name: str) -> int:
    with sessions() as session:
        found = session.scalar(select(Dataset.id).where(Dataset.name == name))
    assert found is not None
    return found


def test_pages_need_a_login_and_come_back_after_it(console: TestClient) -> None:
    for path in ("/jobs", "/runs", "/runs/1", "/datasets", "/datasets/1", "/models"):
        response = console.get(path, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"].startswith("/login?next="), path
    response = console.get("/runs?state=succeeded", follow_redirects=False)
    assert response.headers["location"] == "/login?next=%2Fruns%3Fstate%3Dsucceeded"
    form = console.get("/login?next=//evil.example/x")  # an open redirect is refused
    assert 'name="next" value="/runs"' in form.text


def test_login_rejects_a_wrong_password_and_a_missing_csrf_token(console: TestClient) -> None:
    form = console.get("/login")
    wrong = console.post("/login", data={"username": "vera", "password": "nope", "csrf": csrf(form.text)})
    assert wrong.status_code == 401 and "wrong password" in wrong.text
    assert SESSION_COOKIE not in console.cookies
    forged = console.post("/login", data={"username": "vera", "password": PASSWORD, "csrf": "0" * 64})
    assert forged.status_code == 401 and "expired" in forged.text and SESSION_COOKIE not in console.cookies
    log_in(console, "vera")
    assert console.cookies[SESSION_COOKIE].startswith("wf_")


def test_session_cookie_is_httponly_strict_and_not_an_api_token(console: TestClient) -> None:
    form = console.get("/login")
    response = console.post(
        "/login",
        data={"username": "vera", "password": PASSWORD, "csrf": csrf(form.text), "next": "/runs"},
        follow_redirects=False,
    )
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    # The session secret does not open the API: a stolen cookie is not a runtime token.
    api = console.get("/api/v1/me", headers={"Authorization": f"Bearer {console.cookies[SESSION_COOKIE]}"})
    assert api.status_code == 401


def test_every_page_renders_the_real_run(console: TestClient, activity_center: sessionmaker[Session]) -> None:
    log_in(console, "vera")
    jobs = console.get("/jobs")
    assert jobs.status_code == 200 and "user_activity_report" in jobs.text and "growth" in jobs.text
    assert jobs.headers["content-security-policy"].startswith("default-src 'none'")
    runs = console.get("/runs")
    assert ">r1</a>" in runs.text and "state-succeeded" in runs.text
    with activity_center() as session:
        run_pk = session.scalar(select(Run.id))
    page = console.get(f"/runs/{run_pk}")
    assert page.status_code == 200 and "<svg" in page.text
    # The inner DAG: every module of every node, coloured by its state.
    modules = re.findall(r'data-module="([^"]+)" data-state="([^"]+)"', page.text)
    assert modules == [
        ("ingest/generate", "succeeded"),
        ("stats/load", "succeeded"),
        ("stats/agg", "succeeded"),
        ("stats/save", "succeeded"),
        ("report/summarize", "succeeded"),
        ("report/gate", "succeeded"),
    ]
    assert console.get("/runs/999").status_code == 404
    datasets = console.get("/datasets")
    for name in ("events", "user_stats", "report"):
        assert f">{name}</a>" in datasets.text
    assert "ttl:7" in datasets.text and "keep-last:30" in datasets.text and "KiB" in datasets.text
    assert console.get("/datasets?state=deleted").text.count("data-dataset=") == 0
    detail = console.get(f"/datasets/{dataset_id(activity_center, 'user_stats')}")
    assert "Made from" in detail.text and ">events</a>" in detail.text and ">report</a>" in detail.text
    assert "Only an admin or the owner (growth)" in detail.text and 'id="pin"' not in detail.text
    assert console.get("/datasets/999").status_code == 404
    assert "No model versions" in console.get("/models").text


def test_owner_confirms_a_deletion_and_the_sweep_leaves_a_tombstone(
    console: TestClient, activity_center: sessionmaker[Session]
) -> None:
    sweep(activity_center, roots=load_settings().storage_roots, now=LATER)
    events = dataset_id(activity_center, "events")
    log_in(console, "gina")
    page = console.get(f"/datasets/{events}")
    assert "pending-deletion" in page.text and "ttl:7: written" in page.text and 'id="confirm-deletion"' in page.text
    # No token, or a token from another session: refused, nothing changes.
    assert console.post(f"/datasets/{events}/confirm-deletion", data={}).status_code == 403
    assert console.post(f"/datasets/{events}/confirm-deletion", data={"csrf": "f" * 64}).status_code == 403
    with activity_center() as session:
        assert session.scalar(select(Dataset.confirmed_by).where(Dataset.id == events)) is None
    done = console.post(f"/datasets/{events}/confirm-deletion", data={"csrf": csrf(page.text)}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == f"/datasets/{events}?done=confirm-deletion"
    after = console.get(done.headers["location"])
    assert "deletion confirmed" in after.text and "confirmed by gina" in after.text
    report = sweep(activity_center, roots=load_settings().storage_roots, now=LATER)
    assert [d["id"] for d in report.deleted] == [events]
    tomb = console.get(f"/datasets/{events}")
    assert 'id="dataset-state">deleted<' in tomb.text and "kept for lineage" in tomb.text
    with activity_center() as session:
        trail = session.execute(
            select(AuditEntry.actor, AuditEntry.action).where(AuditEntry.target_id == str(events))
        ).all()
    assert ("gina", "deletion.confirm") in trail and ("system:sweep", "retention.delete") in trail


def test_viewers_and_other_owners_are_refused_by_the_same_rules_as_the_api(
    console: TestClient, activity_center: sessionmaker[Session]
) -> None:
    sweep(activity_center, roots=load_settings().storage_roots, now=LATER)
    events = dataset_id(activity_center, "events")
    for user in ("vera", "otto"):
        console.cookies.clear()
        log_in(console, user)
        page = console.get(f"/datasets/{events}")
        assert 'id="confirm-deletion"' not in page.text
        for action in ("confirm-deletion", "reject-deletion", "pin"):
            response = console.post(f"/datasets/{events}/{action}", data={"csrf": csrf(page.text)})
            assert response.status_code == 403 and "only an admin or the owner" in response.text, (user, action)
    console.cookies.clear()
    log_in(console, "root")
    page = console.get(f"/datasets/{events}")
    pinned = console.post(f"/datasets/{events}/pin", data={"csrf": csrf(page.text)})
    assert pinned.status_code == 200 and "pinned: never deleted" in pinned.text
    with activity_center() as session:
        row = session.get(Dataset, events)
        assert row is not None and (row.pinned, row.state) == (True, DatasetState.LIVE)
    assert console.post(f"/datasets/{events}/explode", data={"csrf": csrf(page.text)}).status_code == 404


def test_logout_ends_the_session(console: TestClient, activity_center: sessionmaker[Session]) -> None:
    log_in(console, "vera")
    token = console.cookies[SESSION_COOKIE]
    page = console.get("/runs")
    assert console.post("/logout", data={"csrf": csrf(page.text)}, follow_redirects=False).status_code == 303
    console.cookies.set(SESSION_COOKIE, token)  # replaying the old cookie does not work either
    assert console.get("/runs", follow_redirects=False).status_code == 303
    with activity_center() as session:
        assert session.scalar(select(ApiToken.id).where(ApiToken.kind == "session")) is None


def test_mounted_under_a_prefix_every_link_and_the_cookie_carry_it(activity_center: sessionmaker[Session]) -> None:
    parent = FastAPI()
    parent.mount("/weiflow-center", create_app(activity_center))
    client = TestClient(parent)
    assert (
        client.get("/weiflow-center/runs", follow_redirects=False)
        .headers["location"]
        .startswith("/weiflow-center/login?next=%2Fruns")
    )
    form = client.get("/weiflow-center/login")
    assert 'action="/weiflow-center/login"' in form.text
    response = client.post(
        "/weiflow-center/login",
        data={"username": "vera", "password": PASSWORD, "csrf": csrf(form.text), "next": "/runs"},
        follow_redirects=False,
    )
    assert response.headers["location"] == "/weiflow-center/runs"
    assert "path=/weiflow-center" in response.headers["set-cookie"].lower()
    page = client.get("/weiflow-center/runs")
    links = re.findall(r'href="([^"]+)"', page.text)
    assert links and all(link.startswith("/weiflow-center/") for link in links), links


def test_dag_layout_puts_every_edge_left_to_right_and_escapes_names() -> None:
    assert layers(["a", "b", "c", "d"], {"b": ["a"], "c": ["a", "b"], "d": ["zz"]}) == {"a": 0, "b": 1, "c": 2, "d": 0}
    assert layers(["a", "b"], {"a": ["b"], "b": ["a"]}) in ({"a": 1, "b": 0}, {"a": 0, "b": 1})  # bad data still draws
    svg = render_dag_svg(
        [
            {
                "id": "<x>",
                "state": "failed",
                "upstream": [],
                "modules": [{"id": "m&1", "state": "failed", "error": "<b>"}],
            },
            {"id": "y", "state": "queued", "upstream": ["<x>"], "modules": []},
        ]
    )
    assert "&lt;x&gt;" in svg and "m&amp;1" in svg and "<b>" not in svg
    assert svg.count('class="edge outer"') == 1 and 'data-state="failed"' in svg
