"""Run a compiled pipeline on this machine: the whole outer DAG, or one node (what Airflow calls)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from weiflow.dag.compiler import NodePlan
from weiflow.errors import DatasetError, EngineNotAvailable, RegistryError
from weiflow.registry import Registry, default_registry
from weiflow.runtime.context import NodeContext, RunContext, error_text
from weiflow.runtime.executor import Executor
from weiflow.runtime.lease import NodeLease
from weiflow.storage import exists, is_complete
from weiflow.tracking import EventKind

__all__ = ["NodeState", "RunResult", "run_node", "run_pipeline", "run_started_detail"]

log = logging.getLogger("weiflow.runtime")


class NodeState(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # an upstream node failed


@dataclass
class RunResult:
    run_id: str
    states: dict[str, NodeState] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return all(state is NodeState.SUCCEEDED for state in self.states.values())


def _executor(registry: Registry, node: NodePlan) -> Executor:
    target = registry.load_executor(node.engine)
    executor = target() if isinstance(target, type) else target
    if not isinstance(executor, Executor):
        raise RegistryError(f"engine '{node.engine}': executor {target!r} is not a weiflow.runtime.Executor")
    return executor


def check_inputs(run: RunContext, node: NodePlan) -> None:
    """Fail before any work if an input dataset is missing or incomplete, saying which node makes it."""
    for name in node.reads:
        dataset = run.datasets[name]
        producer = run.dag.producers.get(name)
        if producer is not None and producer.node == node.id:
            continue  # written earlier in this same node
        if dataset.external:
            if not exists(dataset.uri):
                raise DatasetError(f"node '{node.id}': external dataset '{name}' not found at {dataset.uri}")
        elif not is_complete(dataset.uri):
            maker = f"run node '{producer.node}' of this run first" if producer else "it has no producer"
            raise DatasetError(
                f"node '{node.id}': input dataset '{name}' at {dataset.uri} is missing or incomplete "
                f"(no _SUCCESS marker): {maker}"
            )


def node_started_detail(run: RunContext, node: NodePlan) -> dict[str, Any]:
    """What the control center needs from a node start: its inner DAG, its datasets (resolved URIs,
    so reads count as accesses), its scheduling classes, and the spec version it ran."""
    cluster = next((e for e in node.spec.config if e.tag == "cluster"), None)
    return {
        "engine": node.engine,
        "modules": [m.id for m in node.modules],
        "module_types": {m.id: m.type.name for m in node.modules},
        "module_inputs": {m.id: [ref.module for ref in m.inputs] for m in node.modules},
        "upstream": node.upstream,
        "reads": {name: run.datasets[name].uri for name in node.reads if name in run.datasets},
        "writes": {
            name: {
                "uri": run.datasets[name].uri,
                "retention": run.datasets[name].retention,
                "consumers": sorted({u.node for u in run.dag.consumers.get(name, []) if u.node != node.id}),
            }
            for name in node.writes
            if name in run.datasets
        },
        "priority": run.dag.spec.priority,
        "resources": node.spec.element.get("resources"),
        "backend": (cluster.get("backend") if cluster is not None else None) or "local",
        "owner": run.dag.spec.owner,
        "spec_sha256": run.dag.spec.sha256,
    }


def run_started_detail(run: RunContext) -> dict[str, Any]:
    """What the control center needs from a run start, whoever reports it (``weiflow run``, each
    ``run-node`` of an Airflow run, WeiFlow's Airflow listener): the params, the outer DAG, the
    spec version, and every dataset URI any node of the run will read or write, so the center
    protects them all from the start, not only from when the node that uses one starts."""
    dag = run.dag
    return {
        "params": {k: str(v) for k, v in run.params.items()},
        "nodes": [n.id for n in dag.nodes],
        "spec_sha256": dag.spec.sha256,
        "owner": dag.spec.owner,
        "priority": dag.spec.priority,
        "upstream": {n.id: n.upstream for n in dag.nodes},  # the outer DAG, drawn before nodes start
        "uses": sorted({run.datasets[name].uri for n in dag.nodes for name in (*n.reads, *n.writes)}),
    }


def run_node(
    run: RunContext,
    node_id: str,
    *,
    registry: Registry | None = None,
    attempt: int = 1,
    on_executor: Callable[[Executor], None] | None = None,
) -> None:
    """Run one node, emitting node events; raises on failure. The entry point Airflow tasks call.

    The attempt first takes the node's lease (:mod:`weiflow.runtime.lease`): an older attempt of
    this node of this run still alive on this machine is stopped first, so two attempts never run
    side by side; a refused attempt (:class:`~weiflow.runtime.lease.NodeBusy`) raises before any
    event. ``on_executor`` receives the executor before it starts, so a caller (a signal handler,
    an Airflow ``on_kill``) can cancel it.
    """
    node = run.dag.node(node_id)
    registry = registry or default_registry()
    with NodeLease(run.settings.var_dir, run.dag.name, run.run_id, node.id).acquire(attempt) as lease:
        detail = node_started_detail(run, node)
        if lease.superseded is not None:
            old = lease.superseded
            detail["superseded"] = {"attempt": old.attempt, "pid": old.pid, "host": old.host}
            log.warning("node %s: stopped %s, still running, before attempt %d", node.id, old.describe(), attempt)
        run.event(EventKind.NODE_STARTED, node=node.id, attempt=attempt, detail=detail)
        _run_attempt(run, node, registry, attempt, on_executor)


def _run_attempt(
    run: RunContext,
    node: NodePlan,
    registry: Registry,
    attempt: int,
    on_executor: Callable[[Executor], None] | None,
) -> None:
    started = time.monotonic()
    try:
        executor = _executor(registry, node)
        check_inputs(run, node)
        if on_executor is not None:
            on_executor(executor)
        executor.run_node(NodeContext(run, node, attempt))
    except BaseException as exc:
        message = error_text(exc)
        run.event(
            EventKind.NODE_FAILED,
            node=node.id,
            attempt=attempt,
            error=message,
            duration_s=round(time.monotonic() - started, 6),
        )
        raise
    run.event(
        EventKind.NODE_SUCCEEDED,
        node=node.id,
        attempt=attempt,
        duration_s=round(time.monotonic() - started, 6),
    )


def run_pipeline(
    run: RunContext,
    *,
    registry: Registry | None = None,
    on_executor: Callable[[Executor], None] | None = None,
) -> RunResult:
    """Run every node in dependency order on this machine, retrying as the spec says.

    A failed node's downstream nodes are skipped; independent branches still run.
    """
    dag = run.dag
    result = RunResult(run.run_id)
    run.event(EventKind.RUN_STARTED, detail=run_started_detail(run))
    for node in dag.nodes:
        blocked = [u for u in node.upstream if result.states.get(u) is not NodeState.SUCCEEDED]
        if blocked:
            result.states[node.id] = NodeState.SKIPPED
            run.event(EventKind.NODE_SKIPPED, node=node.id, detail={"blocked_by": blocked})
            continue
        retries = node.retries if node.retries is not None else dag.spec.retries
        for attempt in range(1, retries + 2):
            try:
                run_node(run, node.id, registry=registry, attempt=attempt, on_executor=on_executor)
            except EngineNotAvailable as exc:
                result.states[node.id], result.errors[node.id] = NodeState.FAILED, str(exc)
                break  # retrying cannot make an engine appear
            except KeyboardInterrupt:
                result.states[node.id], result.errors[node.id] = NodeState.FAILED, "cancelled"
                run.event(EventKind.RUN_FAILED, error=f"{node.id}: cancelled")
                raise
            except Exception as exc:
                result.states[node.id], result.errors[node.id] = NodeState.FAILED, error_text(exc)
                if attempt <= retries:
                    log.warning(
                        "node %s failed (attempt %d of %d), retrying: %s",
                        node.id,
                        attempt,
                        retries + 1,
                        result.errors[node.id],
                    )
                    continue
            else:
                result.states[node.id] = NodeState.SUCCEEDED
                result.errors.pop(node.id, None)
            break
    if result.succeeded:
        run.event(EventKind.RUN_SUCCEEDED)
    else:
        run.event(EventKind.RUN_FAILED, error="; ".join(f"{k}: {v}" for k, v in result.errors.items()))
    return result
