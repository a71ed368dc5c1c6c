"""Run context: params and `${...}` resolved, datasets located, module attributes typed."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from weiflow.config import Settings
from weiflow.dag.compiler import Dag, ModulePlan, NodePlan
from weiflow.errors import ConfigError, ModuleFailed, WeiflowError
from weiflow.spec import Element, did_you_mean, substitute
from weiflow.spec.params import parse_param_value
from weiflow.spec.uris import uri_problem
from weiflow.storage import StorageRoots, dataset_size
from weiflow.tracking import DatasetInfo, Event, EventKind, Tracker

__all__ = ["NodeContext", "ResolvedDataset", "RunContext", "error_text", "new_run_id", "parse_param_overrides"]

_RUN_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:+\-]{0,249}\Z")


def new_run_id(now: datetime | None = None) -> str:
    """A run id in Airflow's style for runs started outside Airflow."""
    return "local__" + (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%f")


def parse_param_overrides(pairs: list[str]) -> dict[str, str]:
    """``["k=v", ...]`` from the command line into a dict; raises ConfigError on a bad pair."""
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--param '{pair}': expected NAME=VALUE")
        result[key.strip()] = value
    return result


@dataclass(frozen=True)
class ResolvedDataset:
    name: str
    uri: str
    format: str
    external: bool
    retention: str | None


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


@dataclass
class RunContext:
    """Everything a run resolves once: params, context variables, dataset URIs."""

    dag: Dag
    run_id: str
    ds: date
    settings: Settings
    tracker: Tracker
    params: dict[str, Any] = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)
    datasets: dict[str, ResolvedDataset] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        dag: Dag,
        *,
        settings: Settings,
        tracker: Tracker,
        run_id: str | None = None,
        ds: date | None = None,
        overrides: Mapping[str, str] | None = None,
    ) -> RunContext:
        spec = dag.spec
        run_id = run_id or new_run_id()
        if not _RUN_ID.match(run_id) or ".." in run_id:
            raise ConfigError(
                f"run id '{run_id}' is not valid: start with a letter, digit or '_', then use letters, digits "
                "and _ . : + - (no '..', at most 250)"
            )
        ds = ds or datetime.now(UTC).date()
        ctx = cls(dag, run_id, ds, settings, tracker)
        ctx.values = {
            "ds": ds.isoformat(),
            "ds_nodash": ds.strftime("%Y%m%d"),
            "run_id": run_id,
            "storage": settings.storage,
            "pipeline": spec.name,
        }
        overrides = dict(overrides or {})
        declared = [p.name for p in spec.params]
        for name in overrides:
            if name not in declared:
                hint = did_you_mean(name, declared) or f"declared params: {', '.join(declared) or 'none'}"
                raise ConfigError(f"{spec.file}: pipeline '{spec.name}' has no param '{name}' ({hint})")
        for param in spec.params:
            if param.name in overrides:
                raw, origin = overrides[param.name], "given"
            elif param.default is not None:
                raw, origin = substitute(param.default, ctx.values), "default"
            else:
                pos = param.element.pos
                raise ConfigError(
                    f"{spec.file}:{pos.line}:{pos.col}: param '{param.name}' has no default "
                    f"and no value: pass --param {param.name}=..."
                )
            try:
                value = parse_param_value(param.type, raw)
            except ValueError as exc:
                raise ConfigError(f"param '{param.name}' ({origin} value): {exc}") from None
            ctx.params[param.name] = value
            ctx.values[param.name] = _as_text(value)
        roots = StorageRoots(settings.storage_roots, purpose="a run")
        for dataset in spec.datasets:
            uri = ctx.resolve(dataset.uri)
            # The rules a literal URI passed at validate time, now on the resolved one; and, on the
            # storage as it is now, no link under a storage root that leads out of them.
            problem = uri_problem(uri) or roots.link_escape(uri)
            if problem is not None:
                pos = dataset.element.pos_of("uri")
                raise ConfigError(f"{spec.file}:{pos.line}:{pos.col}: dataset '{dataset.name}': uri {problem}")
            ctx.datasets[dataset.name] = ResolvedDataset(
                dataset.name, uri.rstrip("/"), dataset.format, dataset.external, dataset.retention
            )
        return ctx

    def resolve(self, text: str) -> str:
        return substitute(text, self.values)

    def resolve_element(self, element: Element) -> dict[str, str]:
        """A child element's (``<feature>``, ``<conf>``) attributes with references resolved."""
        return {key: self.resolve(attr.value) for key, attr in element.attrs.items()}

    def event(self, kind: EventKind, **fields: Any) -> None:
        self.tracker.emit(Event(kind, self.run_id, self.dag.name, **fields))

    def module_attrs(self, node_id: str, module: ModulePlan) -> dict[str, Any]:
        """The module's attributes, references resolved and typed, declared defaults filled in.

        Undeclared attributes (only for module types with ``extra_attrs``) stay strings.
        """
        attrs: dict[str, Any] = {d.name: d.default for d in module.type.attrs if d.default is not None}
        for key, attr in module.spec.attrs.items():
            text = self.resolve(attr.value)
            decl = module.type.attr(key)
            if decl is None:
                attrs[key] = text
                continue
            try:
                attrs[key] = decl.parse(text)
            except ValueError as exc:
                pos = attr.pos
                raise ModuleFailed(
                    node_id, module.id, f"{self.dag.spec.file}:{pos.line}:{pos.col}: {key}='{text}': {exc}"
                ) from None
        return attrs


@dataclass
class NodeContext:
    """What an engine's executor gets for one node: the run, the node, and event helpers."""

    run: RunContext
    node: NodePlan
    attempt: int = 1
    committed: set[str] = field(default_factory=set)  # datasets this node run has committed

    @property
    def run_id(self) -> str:
        return self.run.run_id

    def dataset(self, name: str) -> ResolvedDataset:
        return self.run.datasets[name]

    def module_attrs(self, module: ModulePlan) -> dict[str, Any]:
        return self.run.module_attrs(self.node.id, module)

    def record_dataset(
        self,
        module: ModulePlan,
        name: str,
        *,
        rows: int | None = None,
        schema: dict[str, str] | None = None,
        detail: dict[str, Any] | None = None,
    ) -> DatasetInfo:
        """Report a committed output (size measured on storage) to the tracker."""
        dataset = self.dataset(name)
        size, files = dataset_size(dataset.uri)
        info = DatasetInfo(name, dataset.uri, dataset.format, size, files, rows, schema)
        self.committed.add(name)
        self.run.event(
            EventKind.DATASET_WRITTEN,
            node=self.node.id,
            module=module.id,
            attempt=self.attempt,
            dataset=info,
            detail=detail or {},
        )
        return info

    def run_modules(self, run_module: Callable[[ModulePlan, dict[str, Any]], Any]) -> dict[str, Any]:
        """Run the node's modules in inner-DAG order, emitting an event at every start and end.

        ``run_module(module, inputs)`` gets the outputs of the module's inputs by module id
        (by ``id.port`` for named outputs) and returns the module's output. A failure stops
        the node: it is re-raised as :class:`ModuleFailed` (user-code failures keep their
        :class:`~weiflow.errors.UserCodeError` type).
        """
        outputs: dict[str, Any] = {}
        for module in self.node.modules:
            inputs = {}
            for ref in module.inputs:
                value = outputs[ref.module]
                inputs[str(ref)] = value[ref.port] if ref.port is not None else value
            self.run.event(EventKind.MODULE_STARTED, node=self.node.id, module=module.id, attempt=self.attempt)
            started = time.monotonic()
            try:
                outputs[module.id] = run_module(module, inputs)
                missing = [name for name in module.writes if name not in self.committed]
                if missing:
                    raise ModuleFailed(
                        self.node.id,
                        module.id,
                        f"declares writes of {', '.join(missing)} but committed nothing there "
                        "(a dataset is committed when its write block ends without an error)",
                    )
            except BaseException as exc:
                error = _module_error(self.node.id, module.id, exc)
                self.run.event(
                    EventKind.MODULE_FAILED,
                    node=self.node.id,
                    module=module.id,
                    attempt=self.attempt,
                    error=error_text(error),
                    duration_s=round(time.monotonic() - started, 6),
                )
                if error is exc or not isinstance(exc, Exception):
                    raise
                raise error from exc
            self.run.event(
                EventKind.MODULE_SUCCEEDED,
                node=self.node.id,
                module=module.id,
                attempt=self.attempt,
                duration_s=round(time.monotonic() - started, 6),
            )
        return outputs


def _module_error(node: str, module: str, exc: BaseException) -> BaseException:
    if isinstance(exc, ModuleFailed):
        return exc
    if isinstance(exc, WeiflowError):
        return ModuleFailed(node, module, str(exc))
    if isinstance(exc, Exception):
        return ModuleFailed(node, module, f"{type(exc).__name__}: {exc}")
    return exc  # KeyboardInterrupt, SystemExit: cancellation goes up untouched


def error_text(exc: BaseException) -> str:
    """How an error is recorded in events and shown to users."""
    if isinstance(exc, KeyboardInterrupt):
        return "cancelled"
    return str(exc) if isinstance(exc, WeiflowError) else f"{type(exc).__name__}: {exc}"
