"""Airflow's ways into WeiFlow's console: a menu entry, and an extra link on every WeiFlow task.

- :class:`WeiflowConsoleLink` is the extra link of ``WeiflowNodeOperator``: the console's page of
  the task's run, opened at its node (``{center}/runs/by-id/{pipeline}/{run id}#node-{node}``).
  Airflow 3 evaluates an operator's links in the *worker*, which pushes each as an XCom
  (``_link_WeiflowConsoleLink``) that the UI reads; the API server never calls ``get_link`` for
  it. So the link's center is the worker's ``center_url``, read as ``run-node`` reads it (from
  the spec's folder): it leads where the node's events go. Airflow pushes the XCom when the task
  ends; the operator pushes it also before the node starts (:func:`push_console_link`), so the
  link is there while the node runs. No ``center_url``: no center has the run, and no link.
- :func:`console_view` is an entry of Airflow's navigation (a plugin's ``external_views``).

The center's run ids are Airflow's run ids, and its pipeline names the DAG ids: the console finds
a run by the two (docs/center.md), so a link needs no database.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink

from weiflow.config import Settings, load_settings
from weiflow.errors import ConfigError

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

__all__ = ["CONSOLE_LINK_NAME", "WeiflowConsoleLink", "console_node_url", "console_view", "push_console_link"]

CONSOLE_LINK_NAME = "WeiFlow console"

_log = logging.getLogger(__name__)


def console_node_url(center: str, pipeline: str, run_id: str, node: str | None = None) -> str:
    """The console's page of ``pipeline``'s run ``run_id`` (at ``node``), on the center at ``center``.

    Every part is escaped, ``/`` included: an id never changes the path's shape.
    """
    url = f"{center.rstrip('/')}/runs/by-id/{quote(pipeline, safe='')}/{quote(run_id, safe='')}"
    return f"{url}#node-{quote(node, safe='')}" if node else url


def console_view(href: str) -> dict[str, Any]:
    """A top-level entry of Airflow's navigation that opens the console at ``href`` (in a new tab).

    Airflow's UI resolves a relative ``href`` against its own base URL.
    """
    return {"name": CONSOLE_LINK_NAME, "href": href, "destination": "nav", "nav_top_level": True}


def center_of(spec: str | None) -> str | None:
    """The ``center_url`` that ``run-node`` of ``spec`` reports to (settings found from the spec's folder).

    None when none is set, or when the settings are broken (``run-node`` says why in the task log).
    """
    try:
        settings: Settings = load_settings(cwd=Path(spec).parent) if spec else load_settings()
    except ConfigError as exc:
        _log.warning("No WeiFlow console link: %s", exc)
        return None
    return settings.center_url


class WeiflowConsoleLink(BaseOperatorLink):
    """``WeiFlow console``: the task's node in the console's page of its run."""

    @property
    def name(self) -> str:
        return CONSOLE_LINK_NAME

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        center = center_of(getattr(operator, "spec", None))
        if center is None:
            return ""  # Airflow shows no link for an empty one
        node = getattr(operator, "node", None) or ti_key.task_id
        return console_node_url(center, ti_key.dag_id, ti_key.run_id, node)


def push_console_link(operator: BaseOperator, ti: Any) -> None:
    """Push ``operator``'s console link for the task instance ``ti`` now, as Airflow would when the task ends.

    Airflow stores it under the same XCom key at the end (and clears it when the task is cleared),
    so this only makes it appear sooner. A link never fails the node: a problem is logged, as
    Airflow logs one at the end.
    """
    for link in operator.operator_extra_links:
        if not isinstance(link, WeiflowConsoleLink):
            continue
        try:
            url = link.get_link(operator, ti_key=ti)
            if url:
                ti.xcom_push(key=link.xcom_key, value=url)
        except Exception:
            _log.exception("Could not push the %s link", link.name)
