"""The console's side of the links with Airflow: a run found by pipeline and run id, and the link back to Airflow."""

from __future__ import annotations

import importlib.util
import re
from urllib.parse import quote, urlencode

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tests.center.conftest import activity_run_events
from tests.center.test_console import log_in
from weiflow.center.api import create_app
from weiflow.center.ingest import ingest_events
from weiflow.center.models import Run
from weiflow.config import load_settings
from weiflow.errors import ConfigError

PIPELINE = "user_activity_report"
RUN_ID = "manual__2026-12-02T19:28:22.123456+00:00"  # an Airflow run id: ':' and '+' travel escaped
BY_ID = f"/runs/by-id/{PIPELINE}/{quote(RUN_ID, safe='')}"


@pytest.fixture(autouse=True)
def _no_airflow_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEIFLOW_AIRFLOW_URL", raising=False)


@pytest.fixture
def center(activity_center: sessionmaker[Session]) -> sessionmaker[Session]:
    """The activity center with a second run, under an Airflow run id."""
    with activity_center() as session:
        ingest_events(session, activity_run_events(RUN_ID))
    return activity_center


def pk_of(sessions: sessionmaker[Session], run_id: str) -> int:
    with sessions() as session:
        found = session.scalar(select(Run.id).where(Run.run_id == run_id))
    assert found is not None
    return found


def test_a_run_is_found_by_pipeline_and_run_id(center: sessionmaker[Session]) -> None:
    client = TestClient(create_app(center))
    decoded = f"/runs/by-id/{PIPELINE}/{RUN_ID}"  # where the login sends the user back: ':' and '+' are path-safe
    assert client.get(BY_ID, follow_redirects=False).headers["location"] == "/login?" + urlencode({"next": decoded})
    log_in(client, "vera")
    for path in (BY_ID, decoded):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == f"/runs/{pk_of(center, RUN_ID)}"
    page = client.get(BY_ID)
    assert page.status_code == 200 and RUN_ID in page.text
    assert all(f'<tr id="node-{node}">' in page.text for node in ("ingest", "stats", "report"))  # the link's #node-…
    assert client.get(f"/runs/by-id/{PIPELINE}/r1", follow_redirects=False).headers["location"] == (
        f"/runs/{pk_of(center, 'r1')}"
    )


def test_an_unknown_run_is_a_404_that_says_so_and_a_nul_a_422(center: sessionmaker[Session]) -> None:
    client = TestClient(create_app(center))
    log_in(client, "vera")
    for path in (
        f"/runs/by-id/{PIPELINE}/r2",  # no such run
        f"/runs/by-id/feed_ctr/{quote(RUN_ID, safe='')}",  # that run id, of another pipeline
        f"/runs/by-id/{PIPELINE}/{quote(RUN_ID.replace('+', ' '), safe='')}",  # '+' is no space
        f"/runs/by-id/{PIPELINE}/{quote('<b>' + 'x' * 100, safe='')}",
    ):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 404 and "No run" in response.text, path
        assert "<b>" not in response.text
    # No run id holds a NUL, and PostgreSQL could not even compare one.
    assert client.get(f"/runs/by-id/{PIPELINE}/a%00b", follow_redirects=False).status_code == 422


def test_the_airflow_link_is_built_by_the_airflow_side(center: sessionmaker[Session]) -> None:
    if importlib.util.find_spec("airflow") is None:
        pytest.skip("apache-airflow is not installed (the [airflow] extra)")
    from weiflow.airflow.links import console_node_url

    client = TestClient(create_app(center))
    log_in(client, "vera")
    url = console_node_url("http://testserver", PIPELINE, RUN_ID, "stats")
    response = client.get(url.split("#")[0], follow_redirects=False)
    assert response.headers["location"] == f"/runs/{pk_of(center, RUN_ID)}"


def airflow_links(html: str) -> list[str]:
    return re.findall(r'<a id="airflow-run" href="([^"]+)"', html)


def test_the_run_page_links_to_the_airflow_run_only_with_airflow_url(
    center: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = f"/runs/{pk_of(center, RUN_ID)}"
    client = TestClient(create_app(center))
    log_in(client, "vera")
    assert airflow_links(client.get(run).text) == []

    monkeypatch.setenv("WEIFLOW_AIRFLOW_URL", "http://airflow.example:8080/")
    client = TestClient(create_app(center))  # the setting is read once per app
    log_in(client, "vera")
    assert airflow_links(client.get(run).text) == [
        f"http://airflow.example:8080/dags/{PIPELINE}/runs/manual__2026-12-02T19%3A28%3A22.123456%2B00%3A00"
    ]


def test_mounted_in_airflow_the_links_are_paths_on_the_same_origin(center: sessionmaker[Session]) -> None:
    app = create_app(center)
    app.state.airflow_url = ""  # what the Airflow plugin sets with Airflow's UI at the root
    parent = FastAPI()
    parent.mount("/weiflow-center", app)
    client = TestClient(parent)
    log_in(client, "vera", base="/weiflow-center")
    response = client.get("/weiflow-center" + BY_ID, follow_redirects=False)
    assert response.headers["location"] == f"/weiflow-center/runs/{pk_of(center, RUN_ID)}"
    page = client.get(response.headers["location"])
    assert airflow_links(page.text) == [f"/dags/{PIPELINE}/runs/{quote(RUN_ID, safe='')}"]


def test_airflow_url_must_be_a_web_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEIFLOW_AIRFLOW_URL", "airflow.example:8080")
    with pytest.raises(ConfigError, match="airflow_url must start with http"):
        load_settings()
    monkeypatch.delenv("WEIFLOW_AIRFLOW_URL")
    assert load_settings().airflow_url is None
