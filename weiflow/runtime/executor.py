"""The seam between the runtime and an engine."""

from __future__ import annotations

from abc import ABC, abstractmethod

from weiflow.runtime.context import NodeContext

__all__ = ["Executor"]


class Executor(ABC):
    """Runs one node of its engine. One instance per node run; built with no arguments.

    ``run_node`` runs the node's inner DAG (usually through ``ctx.run_modules``) and raises
    on failure. ``cancel`` is called from a signal handler or another thread when the run
    is cancelled: it must stop everything the executor started (Spark applications, PS
    clusters) and return quickly.
    """

    @abstractmethod
    def run_node(self, ctx: NodeContext) -> None: ...

    def cancel(self) -> None:  # noqa: B027 - engines with nothing to stop need not override it
        """Stop whatever this executor started; by default there is nothing to stop."""
