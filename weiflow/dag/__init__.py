"""The two-level DAG: semantic checks, compilation, and its versioned JSON form.

Pure data and graph algorithms; engines are reached only through the registry's declarations.
"""

from weiflow.dag.compiler import (
    Dag,
    DatasetUse,
    Edge,
    InputRef,
    ModulePlan,
    NodePlan,
    check_file,
    compile_file,
    compile_spec,
)
from weiflow.dag.graph import CycleFound, topological_order
from weiflow.dag.plan import PLAN_SCHEMA_ID, dag_to_dict
from weiflow.dag.render import to_dot, to_text

__all__ = [
    "PLAN_SCHEMA_ID",
    "CycleFound",
    "Dag",
    "DatasetUse",
    "Edge",
    "InputRef",
    "ModulePlan",
    "NodePlan",
    "check_file",
    "compile_file",
    "compile_spec",
    "dag_to_dict",
    "to_dot",
    "to_text",
    "topological_order",
]
