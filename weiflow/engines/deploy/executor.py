"""Runs a deploy node: ``publish`` (gated), ``promote`` and ``rollback`` against the model repository.

The repository is ``repository=`` or ``${storage}/models``. Every change is reported as a
METRICS event whose ``detail.model`` the control center records ({name, version, uri,
deployed, traffic}); the executor itself never talks to a database.

After a publish, versions that route nothing are pruned to the newest ``keep-last=`` (or the
published dataset's ``retention="keep-last:N"``): each removal is a METRICS event with
``detail.action`` "remove" (deployed false, traffic 0); a version that cannot be removed is
logged as a warning, and the publish, already done, still succeeds.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from weiflow.dag.compiler import ModulePlan
from weiflow.engines.deploy.actions import (
    DeployError,
    LoadChecker,
    default_repository,
    find_saved_model,
    promote,
    publish,
    publisher,
    rollback,
    version_uri,
)
from weiflow.errors import ModuleFailed
from weiflow.modelrepo import FileRepository, ModelRepoError, Repository, Routing
from weiflow.runtime import Executor, NodeContext, ResolvedDataset
from weiflow.storage import is_complete, local_path
from weiflow.tracking import EventKind

__all__ = ["DeployExecutor"]

log = logging.getLogger(__name__)

# The one retention policy that concerns versions (the XSD has checked the policy's grammar).
_KEEP_LAST = re.compile(r"\s*keep-last:([1-9][0-9]*)\s*")


class DeployExecutor(Executor):
    def __init__(self) -> None:
        self._checker = LoadChecker()

    def run_node(self, ctx: NodeContext) -> None:
        ctx.run_modules(lambda module, inputs: self._run_module(ctx, module))

    def cancel(self) -> None:
        self._checker.cancel()

    def _run_module(self, ctx: NodeContext, module: ModulePlan) -> Any:
        attrs = ctx.module_attrs(module)
        runner = _MODULES[module.type.name]
        try:
            return runner(self, ctx, module, attrs)
        except (DeployError, ModelRepoError) as exc:
            raise ModuleFailed(ctx.node.id, module.id, str(exc)) from exc

    # --- module types -----------------------------------------------------------------

    def _publish(self, ctx: NodeContext, module: ModulePlan, attrs: dict[str, Any]) -> Routing:
        dataset = ctx.dataset(attrs["dataset"])
        root = local_path(dataset.uri)
        if root is None:
            raise DeployError(
                f"dataset '{dataset.name}' is at {dataset.uri}; publish reads local datasets only (the load check "
                "opens the model from disk)",
                "export to local storage (or a mounted file system)",
            )
        if not dataset.external and not is_complete(dataset.uri):
            raise DeployError(f"dataset '{dataset.name}' at {dataset.uri} is incomplete (no _SUCCESS marker)")
        source = find_saved_model(root, attrs["model-name"])
        published = publish(
            _repository(ctx, attrs),
            attrs["model-name"],
            source,
            traffic=attrs["traffic"],
            require=attrs.get("require"),
            pipeline=ctx.run.dag.name,
            run_id=ctx.run_id,
            who=publisher(ctx.run.dag.spec.owner),
            load_check=self._checker,
            keep_last=_keep_last(dataset, attrs),
        )
        _report(ctx, module, published.repository, published.routing, published.version)
        if published.pruned.routing is not None:
            for version in published.pruned.removed:
                _report_version(ctx, module, published.repository, published.pruned.routing, version, action="remove")
        for problem in published.pruned.problems:
            log.warning("%s.%s: publish succeeded, but pruning did not: %s", ctx.node.id, module.id, problem)
        return published.routing

    def _promote(self, ctx: NodeContext, module: ModulePlan, attrs: dict[str, Any]) -> Routing:
        repo = FileRepository(_repository(ctx, attrs))
        who = publisher(ctx.run.dag.spec.owner)
        routing = promote(repo, attrs["model-name"], attrs.get("version"), attrs["traffic"], who=who)
        version = routing.history[-1].version
        assert version is not None
        _report(ctx, module, repo, routing, version)
        return routing

    def _rollback(self, ctx: NodeContext, module: ModulePlan, attrs: dict[str, Any]) -> Routing:
        repo = FileRepository(_repository(ctx, attrs))
        routing = rollback(repo, attrs["model-name"], who=publisher(ctx.run.dag.spec.owner))
        version = routing.history[-1].version
        assert version is not None
        _report(ctx, module, repo, routing, version)
        return routing


def _repository(ctx: NodeContext, attrs: dict[str, Any]) -> str:
    return str(attrs.get("repository") or default_repository(ctx.run.settings.storage))


def _keep_last(dataset: ResolvedDataset, attrs: dict[str, Any]) -> int | None:
    """``keep-last=``, else the dataset's ``keep-last:N`` retention; None: prune nothing.

    An external dataset's retention is ignored, as validation warns ("WeiFlow never deletes it").
    """
    if attrs.get("keep-last") is not None:
        return int(attrs["keep-last"])
    match = None if dataset.external else _KEEP_LAST.fullmatch(dataset.retention or "")
    return int(match.group(1)) if match else None


def _report(ctx: NodeContext, module: ModulePlan, repo: Repository, routing: Routing, version: int) -> None:
    """One event per version whose share the change touched (the one it concerned last)."""
    change = routing.history[-1]
    touched = [*sorted((set(change.before) | set(change.after)) - {version}), version]
    for number in touched:
        _report_version(ctx, module, repo, routing, number, action=change.action)


def _report_version(
    ctx: NodeContext, module: ModulePlan, repo: Repository, routing: Routing, version: int, *, action: str
) -> None:
    """A METRICS event for ``version``: its share, its manifest's metrics, and the routing after the change.

    The control center records the version from ``detail.model`` and mirrors the routing from
    ``detail.routing`` (the routing file with its latest change).
    """
    traffic = routing.traffic.get(version, 0)
    model: dict[str, Any] = {
        "name": routing.model,
        "version": version,
        "uri": version_uri(repo, routing.model, version),  # <repository>/<model>/<version>: the center reads both
        "deployed": traffic > 0,
        "traffic": traffic,
    }
    if action != "remove":
        try:
            manifest = repo.manifest(routing.model, version)
            model |= {"metrics": dict(manifest.metrics), "publisher": manifest.publisher}
        except ModelRepoError as exc:  # the report is a courtesy: the change itself is done
            log.warning("%s.%s: cannot read the manifest of version %d: %s", ctx.node.id, module.id, version, exc)
    ctx.run.event(
        EventKind.METRICS,
        node=ctx.node.id,
        module=module.id,
        attempt=ctx.attempt,
        detail={"model": model, "action": action, "routing": routing.snapshot()},
    )


_MODULES: dict[str, Callable[[DeployExecutor, NodeContext, ModulePlan, dict[str, Any]], Routing]] = {
    "publish": DeployExecutor._publish,
    "promote": DeployExecutor._promote,
    "rollback": DeployExecutor._rollback,
}
