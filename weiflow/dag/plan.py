"""The compiled DAG as JSON: a documented, versioned document (docs/dag-json.md).

The schema id changes only when a field changes meaning or disappears; new fields may be
added within a version. ``weiflow/schemas/dag-1.schema.json`` is its JSON Schema.
"""

from __future__ import annotations

from typing import Any

from weiflow.dag.compiler import Dag, DatasetUse, ModulePlan, NodePlan
from weiflow.spec import Element, split_list

__all__ = ["PLAN_SCHEMA_ID", "dag_to_dict"]

PLAN_SCHEMA_ID = "weiflow.dag/1"


def _use(use: DatasetUse) -> dict[str, str]:
    return {"node": use.node, "module": use.module}


def _element(element: Element) -> dict[str, Any]:
    data: dict[str, Any] = {
        "tag": element.tag,
        "attrs": {k: a.value for k, a in element.attrs.items()},
        "line": element.pos.line,
    }
    if element.text:
        data["text"] = element.text
    return data


def _module(module: ModulePlan) -> dict[str, Any]:
    return {
        "id": module.id,
        "type": module.type.name,
        "inputs": [str(ref) for ref in module.inputs],
        "attrs": {k: a.value for k, a in module.spec.attrs.items()},
        "children": [_element(c) for c in module.spec.children],
        "reads": module.reads,
        "writes": module.writes,
        "line": module.spec.element.pos.line,
    }


def _node(node: NodePlan) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for element in node.spec.config:
        if element.tag == "conf":
            config.setdefault("conf", {})[element.get("name")] = element.get("value")
        else:
            config[element.tag] = {k: a.value for k, a in element.attrs.items()}
    return {
        "id": node.id,
        "engine": node.engine,
        "depends": node.spec.depends,
        "upstream": node.upstream,
        "resources": node.spec.element.get("resources"),
        "retries": node.retries,
        "config": config,
        "reads": node.reads,
        "writes": node.writes,
        "modules": [_module(m) for m in node.modules],
        "line": node.spec.element.pos.line,
    }


def dag_to_dict(dag: Dag) -> dict[str, Any]:
    spec = dag.spec
    return {
        "schema": PLAN_SCHEMA_ID,
        "pipeline": {
            "name": spec.name,
            "owner": spec.owner,
            "schedule": spec.schedule,
            "start_date": spec.start_date,
            "priority": spec.priority,
            "retries": spec.retries,
            "tags": split_list(spec.element.get("tags")),
            "description": spec.description,
            "source": {"file": spec.file, "sha256": spec.sha256},
        },
        "params": [
            {"name": p.name, "type": p.type, "default": p.default, "description": p.description} for p in spec.params
        ],
        "datasets": [
            {
                "name": d.name,
                "uri": d.uri,
                "format": d.format,
                "external": d.external,
                "retention": d.retention,
                "producer": _use(dag.producers[d.name]) if d.name in dag.producers else None,
                "consumers": [_use(u) for u in dag.consumers.get(d.name, [])],
            }
            for d in spec.datasets
        ],
        "nodes": [_node(n) for n in dag.nodes],
        "edges": [{"from": e.source, "to": e.target, "via": e.via} for e in dag.edges],
    }
