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
from fastapi import FastAPI

from weiflow.center.api import create_app
from weiflow.center.db import make_engine, make_sessionmaker
from weiflow.config import load_settings

__all__ = ["URL_PREFIX", "WeiFlowCenterPlugin", "center_app"]

URL_PREFIX = "/weiflow-center"


def center_app() -> FastAPI:
    """The center's app over the database that weiflow.toml or WEIFLOW_DATABASE_URL names."""
    return create_app(make_sessionmaker(make_engine(load_settings().database_url)))


class WeiFlowCenterPlugin(AirflowPlugin):
    name = "weiflow_center"
    fastapi_apps: list[Any] = [  # noqa: RUF012 - Airflow's own declaration is a mutable class attribute
        {"app": center_app(), "url_prefix": URL_PREFIX, "name": "WeiFlow center"}
    ]
