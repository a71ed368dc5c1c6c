"""WeiFlow on Apache Airflow 3: every spec an Airflow DAG, one task per outer node.

This package imports Airflow; nothing in WeiFlow's core imports it (an import-linter contract).

- :func:`build_dag` maps a compiled pipeline onto an Airflow DAG (:mod:`weiflow.airflow.mapping`
  documents every mapping decision);
- :func:`load_dag` and :func:`load_dags` compile specs and build their DAGs;
- ``weiflow.airflow.bundle.SpecBundle`` is the Airflow DAG bundle that gives each spec a DAG
  file of its own, so that an invalid spec is an import error of its own;
- ``python -m weiflow.airflow`` starts a local Airflow and creates the priority pools;
- ``weiflow.airflow.plugin.WeiFlowRunsPlugin`` registers :mod:`weiflow.airflow.listener`, which
  reports each DAG run's lifecycle (queued, running, ended) to the control center.
"""

from weiflow.airflow.loader import LoadResult, load_dag, load_dags
from weiflow.airflow.mapping import (
    AIRFLOW_NAMESPACE,
    DEFAULT_POOL_SLOTS,
    PRIORITY_WEIGHTS,
    asset_for,
    build_dag,
    param_for,
    pool_for,
)

__all__ = [
    "AIRFLOW_NAMESPACE",
    "DEFAULT_POOL_SLOTS",
    "PRIORITY_WEIGHTS",
    "LoadResult",
    "asset_for",
    "build_dag",
    "load_dag",
    "load_dags",
    "param_for",
    "pool_for",
]
