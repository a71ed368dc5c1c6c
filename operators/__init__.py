"""WeiFlow's Airflow operators: thin wrappers around the ``weiflow run-node`` entry point.

``dags/weiflow_dags.py`` puts this folder's parent on ``sys.path``, so a deployment ships
``dags/`` and ``operators/`` side by side and installs ``weiflow[airflow]``; nothing else.
"""

from operators.weiflow_node import WeiflowNodeOperator

__all__ = ["WeiflowNodeOperator"]
