"""The console in headless Chromium against a real HTTP server: log in, open a run and see its inner DAG,
confirm a deletion, and see the dataset tombstoned after the sweep; promote and roll back a model."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
from weiflow.modelrepo import FileRepository
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
    with serving(create_app(sessions)) as url:
        yield url, sessions
    engine.dispose()


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn in a thread on 127.0.0.1; yields its URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the center did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(10)


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


def log_in(browser: Any, url: str, username: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{url}/login")
    browser.find_element(By.ID, "username").send_keys(username)
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "login").click()
    wait_for_path(browser, "/runs")


def test_owner_promotes_a_canary_then_rolls_back_and_a_viewer_sees_no_buttons(tmp_path: Path, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.expected_conditions import staleness_of
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.center.test_model_routing import MODEL, deploy_event, publish, run_started

    engine = make_engine(f"sqlite:///{tmp_path / 'center.db'}")
    migrate(engine)
    sessions = make_sessionmaker(engine)
    storage = tmp_path / "storage"
    repository = FileRepository(str(storage / "models"))
    v1, r1 = publish(repository, tmp_path, 100)
    v2, r2 = publish(repository, tmp_path, 10)
    with sessions() as session:
        create_user(session, "alice", Role.OWNER, password=PASSWORD, groups=["ranking"])
        create_user(session, "vera", Role.VIEWER, password=PASSWORD)
        ingest_events(session, [run_started(), deploy_event(repository, v1, r1), deploy_event(repository, v2, r2)])
    with serving(create_app(sessions, storage_roots=[str(storage)])) as url:
        log_in(browser, url, "vera")
        browser.get(f"{url}/models/{MODEL}")
        assert browser.find_element(By.ID, "split").text.endswith("v2 10% · v1 90%")
        assert not browser.find_elements(By.ID, "promote")
        browser.delete_all_cookies()

        log_in(browser, url, "alice")
        browser.find_element(By.LINK_TEXT, "Models").click()
        browser.find_element(By.LINK_TEXT, MODEL).click()
        Select(browser.find_element(By.ID, "promote-version")).select_by_value("2")
        browser.find_element(By.ID, "promote-traffic").send_keys("100")
        browser.find_element(By.ID, "promote").click()
        assert "promoted" in browser.find_element(By.ID, "flash").text
        assert browser.find_element(By.ID, "split").text.endswith("v2 100%")
        assert repository.read_routing(MODEL).traffic == {2: 100}  # the file the prediction service reads

        promoted_page = browser.find_element(By.ID, "flash")
        browser.find_element(By.ID, "rollback").click()
        # The promote page's flash is still there until the rollback's answer replaces the page.
        WebDriverWait(browser, 15).until(staleness_of(promoted_page))
        assert "rolled back" in browser.find_element(By.ID, "flash").text
        assert browser.find_element(By.ID, "split").text.endswith("v1 100%")
        assert repository.read_routing(MODEL).traffic == {1: 100}
        rows = browser.find_elements(By.CSS_SELECTOR, "#history tr td:nth-child(5)")
        assert [r.text for r in rows[:2]] == ["rollback v1", "promote v2 to 100%"]
        version_two = browser.find_element(By.ID, "version-2").text
        assert "0.72" in version_two  # its metrics, beside the other version's
    engine.dispose()
