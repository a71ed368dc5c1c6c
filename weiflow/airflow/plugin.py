"""``WeiFlowRunsPlugin``: the Airflow plugin that registers WeiFlow's run listener and its console links.

Airflow loads it through the ``airflow.plugins`` entry point that weiflow's package declares
(pyproject.toml), in every Airflow process of an environment where weiflow is installed; a
plugins-folder module importing it as well would be a duplicate, which Airflow reports.

:mod:`weiflow.airflow.listener` says what the listener reports, and from where;
:mod:`weiflow.airflow.links` what the links lead to.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.plugins_manager import AirflowPlugin

from weiflow.airflow.links import WeiflowConsoleLink, console_view
from weiflow.airflow.listener import RUN_LISTENER
from weiflow.config import load_settings
from weiflow.errors import ConfigError

__all__ = ["WeiFlowRunsPlugin", "center_views"]

_log = logging.getLogger(__name__)


def center_views() -> list[dict[str, Any]]:
    """The menu entry to the console of the center at ``center_url``; none without one.

    (A center mounted in Airflow's API server and no ``center_url``: ``WeiFlowCenterPlugin``
    declares the entry to the mount, so the menu has it once either way.) Broken settings cost
    the entry, never the plugin: the listener must load.
    """
    try:
        center = load_settings().center_url
    except ConfigError as exc:
        _log.warning("No WeiFlow console in Airflow's menu: %s", exc)
        return []
    return [console_view(f"{center}/runs")] if center else []


class WeiFlowRunsPlugin(AirflowPlugin):
    # Airflow's own declarations are mutable class attributes (RUF012).
    name = "weiflow_runs"
    listeners = [RUN_LISTENER]  # noqa: RUF012
    external_views = center_views()
    # The operator declares the link itself, which is what Airflow 3 serializes and the worker
    # evaluates; listed here too, as Airflow's docs register links, so the plugins page shows it.
    operator_extra_links = [WeiflowConsoleLink()]  # noqa: RUF012
