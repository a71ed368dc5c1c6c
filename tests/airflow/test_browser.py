"""The Airflow UI in headless Chromium: log in, trigger a pipeline with a param, see the run succeed."""

from __future__ import annotations

import json
import time
from urllib.parse import quote, unquote

import pytest

from tests.airflow.conftest import Live
from tests.conftest import missing_tools
from weiflow.tracking import read_events, run_log_path

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.browser]

# The `browser` fixture skips without Chromium too, but only after live_airflow has started an
# Airflow for nothing: skip the module before that.
if reason := missing_tools("chromium", "chromedriver"):
    pytest.skip(reason, allow_module_level=True)

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402


def test_trigger_from_the_ui_with_a_param(live_airflow: Live, browser: WebDriver) -> None:
    api, url = live_airflow.api, live_airflow.airflow.url
    # Unpausing starts the run of today's schedule: let it finish first, so that the run triggered
    # below does not write today's datasets at the same time.
    api.call("PATCH", "/api/v2/dags/user_activity_report", {"is_paused": False})
    api.wait_idle("user_activity_report")

    browser.get(f"{url}/dags/user_activity_report")
    browser.find_element(By.NAME, "username").send_keys(live_airflow.airflow.user)
    browser.find_element(By.NAME, "password").send_keys(live_airflow.airflow.password)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()

    browser.find_element(By.CSS_SELECTOR, "button[aria-label='Trigger Dag']").click()
    users = browser.find_element(By.NAME, "element_users")  # the spec's <param name="users" type="int">
    assert users.get_attribute("value") == "200"  # its default, from the spec
    users.send_keys(Keys.CONTROL, "a")
    users.send_keys("37")
    (submit,) = [
        b
        for b in browser.find_elements(By.TAG_NAME, "button")
        if b.text == "Trigger" and not b.get_attribute("aria-label")
    ]
    submit.click()

    deadline = time.monotonic() + 30
    while "/runs/" not in browser.current_url:  # the UI opens the new run's page
        assert time.monotonic() < deadline, browser.current_url
        time.sleep(0.2)
    run_id = unquote(browser.current_url.rsplit("/runs/", 1)[1].split("?")[0])
    assert api.wait_run("user_activity_report", run_id) == "success"
    deadline = time.monotonic() + 60
    while True:  # the page polls; reload until the run's own state badge says so
        badge = browser.find_element(By.CSS_SELECTOR, "[data-testid='state-badge']").text.strip()
        if badge == "Success" or time.monotonic() > deadline:
            break
        time.sleep(2)
        browser.refresh()
    assert badge == "Success"

    run = api.get(f"/api/v2/dags/user_activity_report/dagRuns/{quote(run_id, safe='')}")
    assert run["conf"]["users"] == 37  # what the trigger form sent
    events = read_events(run_log_path(live_airflow.var_dir / "runs", "user_activity_report", run_id))
    assert [e.node for e in events if e.kind == "node.succeeded"] == ["ingest", "stats", "report"]
    day = run["logical_date"][:10]  # ${day} defaults to ${ds}
    parts = (live_airflow.var_dir / "storage" / "user_activity" / "events" / day).glob("part-*")
    uids = {json.loads(line)["uid"] for part in parts for line in part.read_text().splitlines()}
    assert uids and max(int(uid[1:]) for uid in uids) < 37  # run-node got users=37, not the default 200
