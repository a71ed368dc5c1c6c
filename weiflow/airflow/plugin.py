"""``WeiFlowRunsPlugin``: the Airflow plugin that registers WeiFlow's run listener.

Put a one-line module in the plugins folder of Airflow's scheduler and API server (``./dev
airflow`` writes it for you)::

    from weiflow.airflow.plugin import WeiFlowRunsPlugin  # noqa: F401

:mod:`weiflow.airflow.listener` says what the listener reports, and from where.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from weiflow.airflow.listener import RUN_LISTENER

__all__ = ["WeiFlowRunsPlugin"]


class WeiFlowRunsPlugin(AirflowPlugin):
    name = "weiflow_runs"
    listeners = [RUN_LISTENER]  # noqa: RUF012 - Airflow's own declaration is a mutable class attribute
