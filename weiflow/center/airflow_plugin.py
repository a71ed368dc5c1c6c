"""The center inside Airflow 3's API server: an ``AirflowPlugin`` mounting it at ``/weiflow-center``.

Install by putting a one-line module in Airflow's plugins folder
(``from weiflow.center.airflow_plugin import WeiFlowCenterPlugin``) or by the
``airflow.plugins`` entry point. The app is built when Airflow loads plugins; it connects to
the configured ``database_url`` only on the first request, and the schema must exist
(``weiflow center migrate``): a sub-application's start-up hooks do not run under a mount.
Login, roles and CSRF are the center's own; Airflow's auth manager does not guard the mount.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from weiflow.center.api import app_from_settings

__all__ = ["URL_PREFIX", "WeiFlowCenterPlugin"]

URL_PREFIX = "/weiflow-center"


class WeiFlowCenterPlugin(AirflowPlugin):
    name = "weiflow_center"
    fastapi_apps: list[Any] = [  # noqa: RUF012 - Airflow's own declaration is a mutable class attribute
        {"app": app_from_settings(), "url_prefix": URL_PREFIX, "name": "WeiFlow center"}
    ]
