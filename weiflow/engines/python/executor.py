"""Runs `call` modules: imports the user's callable and calls it with a :class:`Step`."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from weiflow.dag.compiler import ModulePlan
from weiflow.errors import DatasetError, UserCodeError, WeiflowError
from weiflow.registry import resolve_object
from weiflow.runtime import Executor, NodeContext
from weiflow.storage import StagedOutput, atomic_output, is_complete, local_path

__all__ = ["PythonExecutor", "Step"]


class Step:
    """What a user callable receives: params, inputs, attributes, and dataset access.

    ``step.read(name)`` gives the local directory of a dataset the module declares in
    ``reads=``; ``with step.write(name) as out:`` gives a staging directory ``out.path``
    that is committed atomically when the block ends (set ``out.rows`` to report rows).
    """

    def __init__(self, ctx: NodeContext, module: ModulePlan, attrs: Mapping[str, Any], inputs: dict[str, Any]):
        self._ctx = ctx
        self._module = module
        self.run_id = ctx.run_id
        self.ds = ctx.run.ds
        self.pipeline = ctx.run.dag.name
        self.node = ctx.node.id
        self.module = module.id
        self.params: Mapping[str, Any] = dict(ctx.run.params)
        self.attrs: Mapping[str, Any] = {k: v for k, v in attrs.items() if k not in ("callable", "reads", "writes")}
        self.inputs: Mapping[str, Any] = inputs
        self.log = logging.getLogger(f"weiflow.step.{self.pipeline}.{self.node}.{self.module}")

    @property
    def input(self) -> Any:
        """The output of the only upstream module."""
        if len(self.inputs) != 1:
            raise ValueError(f"module '{self.module}' has {len(self.inputs)} inputs; use step.inputs[...]")
        return next(iter(self.inputs.values()))

    def read(self, name: str) -> Path:
        if name not in self._module.reads:
            raise DatasetError(
                f"module '{self.module}' reads dataset '{name}' without declaring it: add "
                f'reads="{name}" to the module'
            )
        dataset = self._ctx.dataset(name)
        path = local_path(dataset.uri)
        if path is None:
            raise DatasetError(f"dataset '{name}' is at {dataset.uri}; python steps read local datasets only")
        if not dataset.external and not is_complete(dataset.uri):
            raise DatasetError(f"dataset '{name}' at {dataset.uri} is incomplete (no _SUCCESS marker)")
        return path

    @contextmanager
    def write(self, name: str) -> Iterator[StagedOutput]:
        if name not in self._module.writes:
            raise DatasetError(
                f"module '{self.module}' writes dataset '{name}' without declaring it: add "
                f'writes="{name}" to the module'
            )
        dataset = self._ctx.dataset(name)
        with atomic_output(dataset.uri, run_id=self.run_id) as output:
            yield output
        self._ctx.record_dataset(self._module, name, rows=output.rows, schema=output.schema)


@contextmanager
def on_import_path(directory: Path) -> Iterator[None]:
    """Put the spec's directory first on the import path while its steps run (as Airflow does for dags/)."""
    entry = str(directory)
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)


def load_callable(target: str) -> Any:
    """Import ``package.module:function``."""
    obj = resolve_object(target)
    if not callable(obj):
        raise TypeError(f"{target} is a {type(obj).__name__}, not a function")
    return obj


class PythonExecutor(Executor):
    def run_node(self, ctx: NodeContext) -> None:
        with on_import_path(Path(ctx.run.dag.spec.file).resolve().parent):
            ctx.run_modules(lambda module, inputs: self._call(ctx, module, inputs))

    def _call(self, ctx: NodeContext, module: ModulePlan, inputs: dict[str, Any]) -> Any:
        attrs = ctx.module_attrs(module)
        target = attrs["callable"]
        where = f"{ctx.run.dag.spec.file}:{module.spec.element.pos.line}"
        try:
            function = load_callable(target)
        except (ImportError, AttributeError, TypeError) as exc:
            raise UserCodeError(
                ctx.node.id,
                module.id,
                f"cannot load callable '{target}' ({where}): {type(exc).__name__}: {exc}",
            ) from exc
        try:
            return function(Step(ctx, module, attrs, inputs))
        except WeiflowError:
            raise  # WeiFlow's own failure (a dataset, storage): not the user's bug
        except Exception as exc:
            raise UserCodeError(ctx.node.id, module.id, f"{target} raised {type(exc).__name__}: {exc}") from exc
