"""``WeiFlowRunsPlugin``: the Airflow plugin that registers WeiFlow's run listener.

Airflow loads it through the ``airflow.plugins`` entry point that weiflow's package declares
(pyproject.toml), in every Airflow process of an environment where weiflow is installed; a
plugins-folder module importing it as well would be a duplicate, which Airflow reports.

:mod:`weiflow.airflow.listener` says what the listener reports, and from where.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from weiflow.airflow.listener import RUN_LISTENER

__all__ = ["WeiFlowRunsPlugin"]


class WeiFlowRunsPlugin(AirflowPlugin):
    name = "weiflow_runs"
    listeners = [RUN_LISTENER]  # noqa: RUF012 - Airflow's own declaration is a mutable class attribute
