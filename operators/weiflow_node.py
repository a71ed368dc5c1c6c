"""``WeiflowNodeOperator``: the Airflow task that runs one outer node of a WeiFlow pipeline.

The operator is deliberately thin. It runs the entry point ``weiflow run`` itself uses::

    python -m weiflow run-node SPEC --node NODE --run-id RUN_ID --ds DS --param NAME=VALUE ... --attempt TRY

as a subprocess, with the Airflow run id, the run's logical date and the run's resolved params,
and streams the subprocess's output into the task log. Everything else (typing params,
resolving ``${...}``, checking inputs, running the engine, events) happens in ``run-node``, so
a node behaves the same under Airflow as under ``weiflow run``.

Exit status of ``run-node``: 0 success; 1 failed (Airflow retries it as the task's ``retries``
say); 2 bad usage or configuration, such as a param value of the wrong type (the task fails at
once: a retry would fail the same way); 130 cancelled.

Cancelling: ``run-node`` starts in a process group of its own. ``on_kill`` (Airflow calls it when
the task is marked failed or cleared in the UI, or times out) sends SIGTERM to that group;
``run-node`` then asks its engine to stop what it started (a Spark application, a
parameter-server cluster) and exits 130. Whatever is still alive after ``kill_grace`` seconds
gets SIGKILL, the whole group at once, so no process is left behind. The default grace, 3 s,
stays under the 5 s after which Airflow's task supervisor kills the task process itself.

Extra link: ``WeiFlow console`` opens the node in the console's page of its run (when the worker's
settings name a ``center_url``; :mod:`weiflow.airflow.links`), from the moment the node starts.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from weiflow.airflow.links import WeiflowConsoleLink, push_console_link
from weiflow.airflow.runs import given_params, run_date
from weiflow.processes import stop_groups

__all__ = ["WeiflowNodeOperator"]

EXIT_USAGE = 2
EXIT_CANCELLED = 130


class WeiflowNodeOperator(BaseOperator):
    """Run one node of a WeiFlow spec through ``weiflow run-node``.

    :param spec: path of the pipeline's XML spec, as the worker sees it.
    :param node: the outer node's id.
    :param spec_params: names of the spec's params; those set in the run's params are passed
        as ``--param``, the others (left empty) resolve to the spec's defaults in ``run-node``.
    :param weiflow_command: how to start WeiFlow; default ``[sys.executable, "-m", "weiflow"]``,
        the worker's own interpreter.
    :param kill_grace: seconds between SIGTERM and SIGKILL when the task is killed.
    """

    ui_color = "#dbe9f6"
    # A template field is part of the serialized DAG: WeiFlow's run listener, in the scheduler,
    # reads the spec of a DAG run from it to report the whole run to the control center.
    template_fields: Sequence[str] = ("spec",)
    operator_extra_links = (WeiflowConsoleLink(),)

    def __init__(
        self,
        *,
        spec: str,
        node: str,
        spec_params: Sequence[str] = (),
        weiflow_command: Sequence[str] | None = None,
        kill_grace: float = 3.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.node = node
        self.spec_params = list(spec_params)
        self.weiflow_command = list(weiflow_command) if weiflow_command else [sys.executable, "-m", "weiflow"]
        self.kill_grace = kill_grace
        self._process: subprocess.Popen[str] | None = None
        self._killed = False

    def command_line(self, context: Context) -> list[str]:
        """The ``run-node`` command for this task instance."""
        ds = run_date(context.get("logical_date"), context["dag_run"].run_after)  # no logical date on some manual runs
        argv = [*self.weiflow_command, "run-node", self.spec, "--node", self.node, "--run-id", context["run_id"]]
        argv += ["--ds", ds]
        for name, value in given_params(context.get("params") or {}, self.spec_params).items():
            argv += ["--param", f"{name}={value}"]
        argv += ["--attempt", str(context["ti"].try_number)]
        return argv

    def execute(self, context: Context) -> None:
        argv = self.command_line(context)
        push_console_link(self, context["ti"])  # Airflow pushes it only when the task ends
        self.log.info("Running %s", " ".join(argv))
        self._killed = False
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
            cwd=Path(self.spec).parent,  # so run-node finds the project's weiflow.toml above the spec
            process_group=0,  # its own group: on_kill signals run-node and all it started, not us
        )
        self._process = process
        try:
            assert process.stdout is not None
            for line in process.stdout:
                self.log.info("%s", line.rstrip("\n"))
            code = process.wait()
        finally:
            if process.poll() is None:  # execute itself was interrupted: leave nothing behind
                self._stop(process)
        if code == 0:
            return
        if self._killed or code in (EXIT_CANCELLED, -signal.SIGTERM, -signal.SIGKILL):
            raise AirflowException(f"node '{self.node}' was cancelled (run-node exit status {code})")
        if code == EXIT_USAGE:
            raise AirflowFailException(
                f"node '{self.node}': run-node refused the run (exit status 2, see the log above); not retrying"
            )
        raise AirflowException(f"node '{self.node}' failed (run-node exit status {code}, see the log above)")

    def on_kill(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        self._killed = True
        self.log.info("Stopping node '%s': SIGTERM to process group %d", self.node, process.pid)
        self._stop(process)

    def _stop(self, process: subprocess.Popen[str]) -> None:
        """SIGTERM to the node's process group, SIGKILL to whatever is left after the grace.

        SIGKILL also when run-node has exited: a child it started may still be in the group.
        """
        if not stop_groups([process], self.kill_grace):
            self.log.warning("Node '%s' was still running after %.1f s: SIGKILL", self.node, self.kill_grace)
