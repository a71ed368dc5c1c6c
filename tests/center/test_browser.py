"""The console in headless Chromium against a real HTTP server: log in, open a run and see its inner DAG,
confirm a deletion, and see the dataset tombstoned after the sweep."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import uvicorn
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tests.center.conftest import PASSWORD, activity_run_events
from weiflow.center.api import create_app
from weiflow.center.db import make_engine, make_sessionmaker, migrate
from weiflow.center.ingest import ingest_events
from weiflow.center.models import Dataset, Role
from weiflow.center.repository import create_user
from weiflow.center.retention import sweep
from weiflow.config import load_settings
from weiflow.processes import free_port

pytestmark = [pytest.mark.browser, pytest.mark.integration]

LATER = datetime.now(UTC) + timedelta(days=8)


def wait_for_path(browser: Any, path: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while urlparse(browser.current_url).path != path:
        assert time.monotonic() < deadline, f"still at {browser.current_url}: {browser.page_source[:2000]}"
        time.sleep(0.05)


@pytest.fixture
def center(tmp_path: Path) -> Iterator[tuple[str, sessionmaker[Session]]]:
    """A center on 127.0.0.1 (uvicorn in a thread) over a SQLite file holding one real run, 'events' marked."""
    engine = make_engine(f"sqlite:///{tmp_path / 'center.db'}")
    migrate(engine)
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        ingest_events(session, activity_run_events())
        create_user(session, "gina", Role.OWNER, password=PASSWORD, groups=["growth"])
    sweep(sessions, roots=load_settings().storage_roots, now=LATER)
    server = uvicorn.Server(
        uvicorn.Config(create_app(sessions), host="127.0.0.1", port=free_port(), log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the center did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{server.config.port}", sessions
    server.should_exit = True
    thread.join(10)
    engine.dispose()


def test_log_in_open_a_run_confirm_a_deletion_see_the_tombstone(
    center: tuple[str, sessionmaker[Session]], browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    url, sessions = center
    browser.get(f"{url}/runs")
    assert urlparse(browser.current_url).path == "/login"  # pages need a login
    browser.find_element(By.ID, "username").send_keys("gina")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "login").click()
    wait_for_path(browser, "/runs")  # the click returns before the next page has loaded
    assert browser.find_element(By.ID, "whoami").text == "gina (owner)"

    browser.find_element(By.CSS_SELECTOR, "a.run-link").click()
    assert browser.find_element(By.ID, "run-state").text == "succeeded"
    nodes = browser.find_elements(By.CSS_SELECTOR, "svg.dag g.node")
    assert [n.get_attribute("data-node") for n in nodes] == ["ingest", "stats", "report"]
    modules = browser.find_elements(By.CSS_SELECTOR, "svg.dag g.node[data-node='stats'] g.module")
    assert [(m.get_attribute("data-module"), m.get_attribute("data-state")) for m in modules] == [
        ("stats/load", "succeeded"),
        ("stats/agg", "succeeded"),
        ("stats/save", "succeeded"),
    ]
    # Drawn, not just present: inner modules sit inside their node's box, left to right along their DAG.
    box = browser.find_element(By.CSS_SELECTOR, "g.node[data-node='stats'] > rect").rect
    xs = [m.rect["x"] for m in modules]
    assert xs == sorted(xs) and xs[0] > box["x"] and xs[-1] + modules[-1].rect["width"] < box["x"] + box["width"]
    fill = browser.find_element(By.CSS_SELECTOR, "g.module[data-module='stats/agg'] rect").get_attribute("fill")
    assert fill == "#e8f5e9"  # succeeded is green

    browser.find_element(By.LINK_TEXT, "Datasets").click()
    browser.find_element(By.LINK_TEXT, "events").click()
    assert browser.find_element(By.ID, "dataset-state").text == "pending-deletion"
    assert browser.find_element(By.ID, "dataset-reason").text.startswith("ttl:7: written")
    browser.find_element(By.ID, "confirm-deletion").click()
    assert "deletion confirmed" in browser.find_element(By.ID, "flash").text

    # What `weiflow center sweep` does on its schedule.
    report = sweep(sessions, roots=load_settings().storage_roots, now=LATER)
    assert [d["uri"].rsplit("/", 3)[-3:] for d in report.deleted] == [["user_activity", "events", "2026-11-02"]]
    browser.refresh()
    assert browser.find_element(By.ID, "dataset-state").text == "deleted"
    assert "kept for lineage" in browser.page_source
    with sessions() as session:
        uri = session.scalar(select(Dataset.uri).where(Dataset.name == "events"))
    assert uri is not None and not Path(urlparse(uri).path).exists()
    browser.get(f"{url}/datasets?state=deleted")
    assert [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#datasets td:first-child a")] == ["events"]
