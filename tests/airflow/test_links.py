"""Airflow and the console know each other: the plugins' menu entry and each WeiFlow task's console link."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.api_fastapi.core_api.datamodels.plugins import ExternalViewResponse
from airflow.models.taskinstancekey import TaskInstanceKey
from airflow.serialization.serialized_objects import DagSerialization

from operators import WeiflowNodeOperator
from tests.conftest import EXAMPLES
from weiflow.airflow import load_dag
from weiflow.airflow.links import (
    CONSOLE_LINK_NAME,
    WeiflowConsoleLink,
    console_node_url,
    console_view,
    push_console_link,
)
from weiflow.airflow.plugin import WeiFlowRunsPlugin, center_views

CENTER = "http://center.example:8081"
# What Airflow names a manual run: ':' and '+' must be escaped in a path.
RUN_ID = "manual__2026-12-02T19:28:22.123456+00:00"
ESCAPED_RUN_ID = "manual__2026-12-02T19%3A28%3A22.123456%2B00%3A00"


@pytest.fixture(autouse=True)
def _no_center(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WEIFLOW_CENTER_URL", "WEIFLOW_AIRFLOW_URL"):
        monkeypatch.delenv(name, raising=False)


def project(tmp_path: Path, center: str | None) -> str:
    """A spec in a project folder whose weiflow.toml names ``center`` (or no center): the spec's path."""
    folder = tmp_path / "project"
    (folder / "specs").mkdir(parents=True)
    (folder / "weiflow.toml").write_text(f'center_url = "{center}"\n' if center else "")
    spec = folder / "specs" / "user_activity_report.xml"
    spec.write_text((EXAMPLES / "user_activity_report.xml").read_text())
    return str(spec)


def node_operator(spec: str, node: str = "stats") -> WeiflowNodeOperator:
    return WeiflowNodeOperator(task_id=node, spec=spec, node=node)


def test_console_node_url_escapes_every_part() -> None:
    assert console_node_url(CENTER + "/", "feed_ctr", RUN_ID, "train") == (
        f"{CENTER}/runs/by-id/feed_ctr/{ESCAPED_RUN_ID}#node-train"
    )
    assert console_node_url(CENTER, "a b", "x/y?z#w") == f"{CENTER}/runs/by-id/a%20b/x%2Fy%3Fz%23w"


def test_the_link_leads_to_the_node_on_the_center_the_spec_reports_to(tmp_path: Path) -> None:
    operator = node_operator(project(tmp_path, CENTER + "/weiflow-center/"))
    key = TaskInstanceKey(dag_id="user_activity_report", task_id="stats", run_id=RUN_ID, try_number=2)
    assert WeiflowConsoleLink().get_link(operator, ti_key=key) == (
        f"{CENTER}/weiflow-center/runs/by-id/user_activity_report/{ESCAPED_RUN_ID}#node-stats"
    )
    assert WeiflowConsoleLink().name == CONSOLE_LINK_NAME
    assert WeiflowConsoleLink().xcom_key == "_link_WeiflowConsoleLink"


def test_no_center_url_or_broken_settings_no_link(tmp_path: Path) -> None:
    key = TaskInstanceKey(dag_id="user_activity_report", task_id="stats", run_id=RUN_ID)
    assert WeiflowConsoleLink().get_link(node_operator(project(tmp_path / "a", None)), ti_key=key) == ""
    broken = project(tmp_path / "b", "ftp://nope")  # center_url must be http(s): run-node says so; no link
    assert WeiflowConsoleLink().get_link(node_operator(broken), ti_key=key) == ""


class FakeTaskInstance(SimpleNamespace):
    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def test_the_operator_pushes_its_link_before_the_node_starts(tmp_path: Path) -> None:
    ti = FakeTaskInstance(dag_id="user_activity_report", task_id="stats", run_id=RUN_ID, map_index=-1, pushed={})
    push_console_link(node_operator(project(tmp_path / "a", CENTER)), ti)
    assert ti.pushed == {"_link_WeiflowConsoleLink": console_node_url(CENTER, "user_activity_report", RUN_ID, "stats")}

    ti.pushed.clear()
    push_console_link(node_operator(project(tmp_path / "b", None)), ti)
    assert ti.pushed == {}  # no center: nothing to link to
    push_console_link(node_operator(project(tmp_path / "c", CENTER)), SimpleNamespace())  # a link never fails a node


def test_every_task_of_a_weiflow_dag_serializes_the_link(tmp_path: Path) -> None:
    dag = load_dag(project(tmp_path, None), operator=WeiflowNodeOperator)
    tasks = DagSerialization.to_dict(dag)["dag"]["tasks"]
    links = {task["__var"]["task_id"]: task["__var"].get("_operator_extra_links") for task in tasks}
    assert links == {task: {CONSOLE_LINK_NAME: "_link_WeiflowConsoleLink"} for task in ("ingest", "stats", "report")}


def test_the_runs_plugin_registers_the_link_and_a_menu_entry_to_the_center(monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = WeiFlowRunsPlugin()
    assert [type(link) for link in plugin.operator_extra_links] == [WeiflowConsoleLink]
    assert center_views() == []  # no center_url: no center to go to
    monkeypatch.setenv("WEIFLOW_CENTER_URL", CENTER + "/")
    (view,) = center_views()
    assert view == console_view(f"{CENTER}/runs")
    checked = ExternalViewResponse.model_validate(view)  # what Airflow's plugins API answers for it
    assert (checked.name, checked.href, checked.destination, checked.url_route) == (
        CONSOLE_LINK_NAME,
        f"{CENTER}/runs",
        "nav",
        None,  # no url_route: a link that opens the console, not an iframe
    )
    monkeypatch.setenv("WEIFLOW_CENTER_URL", "not a url")
    assert center_views() == []  # broken settings cost the entry, never the listener


def test_the_mounted_center_links_both_ways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEIFLOW_DATABASE_URL", f"sqlite:///{tmp_path / 'center.db'}")
    from weiflow.center.airflow_plugin import WeiFlowCenterPlugin, mounted_app

    app, views = mounted_app()
    assert app.state.airflow_url == ""  # the same origin as Airflow's UI at its root: links by path
    assert views == [console_view("weiflow-center/runs")]  # relative: Airflow's UI resolves it under its base URL
    assert ExternalViewResponse.model_validate(views[0]).href == "weiflow-center/runs"
    assert WeiFlowCenterPlugin.fastapi_apps[0]["url_prefix"] == "/weiflow-center"

    monkeypatch.setenv("WEIFLOW_AIRFLOW_URL", "https://airflow.example/")
    monkeypatch.setenv("WEIFLOW_CENTER_URL", "https://airflow.example/weiflow-center")
    app, views = mounted_app()
    assert app.state.airflow_url == "https://airflow.example"
    assert views == []  # WeiFlowRunsPlugin's entry goes to center_url: one entry, not two
