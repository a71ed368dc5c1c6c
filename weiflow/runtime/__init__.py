"""Running pipelines: the run context, the engine seam, and the local runner.

``run_node`` is the single entry point every scheduler uses (``weiflow run-node``, the
Airflow operators); ``run_pipeline`` runs a whole outer DAG on this machine.
"""

from weiflow.runtime.context import (
    NodeContext,
    ResolvedDataset,
    RunContext,
    new_run_id,
    parse_param_overrides,
)
from weiflow.runtime.executor import Executor
from weiflow.runtime.runner import NodeState, RunResult, check_inputs, run_node, run_pipeline, run_started_detail
from weiflow.runtime.trackers import center_trackers, run_tracker

__all__ = [
    "Executor",
    "NodeContext",
    "NodeState",
    "ResolvedDataset",
    "RunContext",
    "RunResult",
    "center_trackers",
    "check_inputs",
    "new_run_id",
    "parse_param_overrides",
    "run_node",
    "run_pipeline",
    "run_started_detail",
    "run_tracker",
]
