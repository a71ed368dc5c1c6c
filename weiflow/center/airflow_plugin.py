"""The center inside Airflow 3's API server: an ``AirflowPlugin`` mounting it at ``/weiflow-center``.

Install by putting a one-line module in Airflow's plugins folder
(``from weiflow.center.airflow_plugin import WeiFlowCenterPlugin``) or by the
``airflow.plugins`` entry point. The app is built when Airflow loads plugins; it connects to
the configured ``database_url`` only on the first request, and the schema must exist
(``weiflow center migrate``): a sub-application's start-up hooks do not run under a mount.
Login, roles and CSRF are the center's own; Airflow's auth manager does not guard the mount.

Mounted, the center and Airflow's UI share an origin, so they link to each other by path:
Airflow's menu gets a ``WeiFlow console`` entry to the mount (unless ``center_url`` names the
center, whose entry ``WeiFlowRunsPlugin`` adds), and the console's run page links back to
``/dags/{dag}/runs/{run}`` under Airflow's base URL (unless ``airflow_url`` says otherwise).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from airflow.configuration import conf
from airflow.plugins_manager import AirflowPlugin
from fastapi import FastAPI

from weiflow.airflow.links import console_view
from weiflow.center.api import app_from_settings
from weiflow.config import load_settings

__all__ = ["URL_PREFIX", "WeiFlowCenterPlugin", "airflow_base_path", "mounted_app"]

URL_PREFIX = "/weiflow-center"


def airflow_base_path() -> str:
    """The path of Airflow's UI on its origin ('' at the root), from ``[api] base_url``."""
    base_url = conf.get("api", "base_url", fallback=None) or ""
    return urlsplit(base_url).path.rstrip("/")


def mounted_app() -> tuple[FastAPI, list[dict[str, Any]]]:
    """The center's app, linking back to this Airflow, and the menu entries that lead to it."""
    settings = load_settings()
    app = app_from_settings()
    app.state.airflow_url = settings.airflow_url if settings.airflow_url is not None else airflow_base_path()
    # Relative: Airflow's UI resolves it against its base URL, where the mount is.
    views = [] if settings.center_url else [console_view(URL_PREFIX.lstrip("/") + "/runs")]
    return app, views


_APP, _VIEWS = mounted_app()


class WeiFlowCenterPlugin(AirflowPlugin):
    # Airflow's own declarations are mutable class attributes (RUF012).
    name = "weiflow_center"
    fastapi_apps: list[Any] = [{"app": _APP, "url_prefix": URL_PREFIX, "name": "WeiFlow center"}]  # noqa: RUF012
    external_views: list[Any] = _VIEWS
