"""A Spark node through ``spark-submit``: the command line, and the process that runs it.

``run-node`` takes this path when the node's Spark settings say
``spark.submit.deployMode=cluster`` (the driver then runs inside the cluster: a YARN
application master, a Kubernetes driver pod), or when ``WEIFLOW_SPARK_SUBMIT=1`` asks for it
in client mode. The driver program is :mod:`weiflow.engines.spark.driver`; it runs the node's
modules exactly as an in-process node does and prints its tracking events on stdout, marked,
for the submitting process to pass on.

The submitting process owns the ``spark-submit`` process: it runs in a process group of its
own (the JVM, the Python driver and its workers with it), is killed if its parent dies, and
is stopped as a whole on cancel: SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

import pyspark

from weiflow.processes import dying_with_parent, signal_group, stop_groups
from weiflow.tracking import Event

__all__ = [
    "EVENT_PREFIX",
    "SUBMIT_ENV",
    "SubmittedApplication",
    "cluster_mode_problem",
    "deploy_mode",
    "spark_submit_path",
    "submit_command",
    "submit_environment",
    "wants_submit",
]

SUBMIT_ENV = "WEIFLOW_SPARK_SUBMIT"
EVENT_PREFIX = "weiflow-event "  # marks the driver's tracking events among its other output
DRIVER_PROGRAM = Path(__file__).with_name("driver.py")

_JVM_FRAME = re.compile(r"\s+(at |\.\.\. \d+ more)")
# Settings spark-submit takes as options of its own rather than as --conf.
_OPTIONS = {"spark.master": "--master", "spark.submit.deployMode": "--deploy-mode", "spark.app.name": "--name"}


def deploy_mode(conf: Mapping[str, str]) -> str:
    return conf.get("spark.submit.deployMode", "client")


def wants_submit(conf: Mapping[str, str], env: Mapping[str, str] | None = None) -> bool:
    """Whether the node goes through spark-submit: cluster deploy mode, or ``WEIFLOW_SPARK_SUBMIT=1``."""
    env = os.environ if env is None else env
    return deploy_mode(conf) == "cluster" or env.get(SUBMIT_ENV, "") == "1"


def cluster_mode_problem(conf: Mapping[str, str]) -> str | None:
    """Why spark-submit would refuse this conf's cluster deploy mode, said before starting it."""
    master = conf.get("spark.master", "")
    if deploy_mode(conf) != "cluster" or master == "yarn" or master.startswith("k8s://"):
        return None
    return (
        f"spark.submit.deployMode=cluster needs a YARN (yarn) or Kubernetes (k8s://...) master, not '{master}': "
        "Spark runs Python drivers in the cluster only there; use client mode for local and standalone masters"
    )


def spark_submit_path() -> Path:
    """The pyspark package's own launcher: the same Spark version as the library that runs the node."""
    return Path(pyspark.__file__).parent / "bin" / "spark-submit"


def submit_command(
    conf: Mapping[str, str],
    driver_args: Sequence[str],
    *,
    files: Sequence[str] = (),
    spark_submit: str | Path | None = None,
) -> list[str]:
    """The spark-submit command line running the WeiFlow driver with ``driver_args``.

    ``conf`` is the node's complete Spark conf: master, deploy mode and app name become
    spark-submit's options, every other setting a ``--conf``. ``files`` are shipped to the
    driver's working directory (the spec, in cluster mode).
    """
    command = [str(spark_submit or spark_submit_path())]
    for key, option in _OPTIONS.items():
        if key in conf:
            command += [option, conf[key]]
    for key in sorted(conf):
        if key not in _OPTIONS:
            command += ["--conf", f"{key}={conf[key]}"]
    if files:
        command += ["--files", ",".join(files)]
    return [*command, str(DRIVER_PROGRAM), *driver_args]


def submit_environment(conf: Mapping[str, str], env: Mapping[str, str]) -> dict[str, str]:
    """spark-submit's environment: ``env``, plus, in client mode, this machine's Python and loopback address.

    In client mode the driver and (with a local master) the Python workers run here, so they
    use this interpreter, whose packages include weiflow. In cluster mode nothing local is
    added: ``spark.pyspark.python`` and the cluster's own network settings apply there.
    """
    result = dict(env)
    if deploy_mode(conf) != "cluster":
        result.setdefault("PYSPARK_PYTHON", sys.executable)
        result.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    return result


class SubmittedApplication:
    """One spark-submit process: started, watched, relayed and, when asked, stopped as a whole.

    Lines the driver marks with :data:`EVENT_PREFIX` go to ``on_event``; all other output
    passes through to ``stdout``/``stderr``, the last lines of stderr kept for error messages.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: Mapping[str, str],
        on_event: Callable[[Event], None],
        stdout: IO[str] | None = None,
        stderr: IO[str] | None = None,
        grace_s: float = 10.0,
        tail_lines: int = 30,
    ) -> None:
        self.command = list(command)
        self.env = dict(env)
        self.on_event = on_event
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.grace_s = grace_s
        self._tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._process: subprocess.Popen[str] | None = None
        self._readers: list[threading.Thread] = []
        self.cancelled = False

    @property
    def pid(self) -> int | None:
        """The process id of spark-submit, which is also its process group's id."""
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        self._process = subprocess.Popen(
            # Killed with run-node even when run-node has no chance to stop it (SIGKILL, the OOM killer).
            dying_with_parent(self.command),
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,  # a group of its own, so stopping it reaches the JVM's children too
        )
        assert self._process.stdout is not None and self._process.stderr is not None
        self._readers = [
            threading.Thread(target=self._relay_stdout, args=(self._process.stdout,), daemon=True),
            threading.Thread(target=self._relay_stderr, args=(self._process.stderr,), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def wait(self) -> int:
        """Wait for spark-submit to exit and its output to be relayed; returns its exit status."""
        assert self._process is not None, "not started"
        status = self._process.wait()
        for reader in self._readers:
            reader.join(self.grace_s)
        return status

    def terminate(self) -> None:
        """Stop the whole group without blocking: SIGTERM now, SIGKILL after the grace period."""
        self.cancelled = True
        if self._signal(signal.SIGTERM):
            timer = threading.Timer(self.grace_s, self._signal, args=(signal.SIGKILL,))
            timer.daemon = True
            timer.start()

    def stop(self) -> None:
        """Make sure nothing of the group is left: SIGTERM, wait up to the grace period, then SIGKILL."""
        if self._process is not None:
            stop_groups([self._process], self.grace_s)

    def error_tail(self) -> str:
        return "".join(self._tail).rstrip()

    def _signal(self, signum: int) -> bool:
        return self._process is not None and signal_group(self._process.pid, signum)

    def _relay_stdout(self, stream: IO[str]) -> None:
        for line in stream:
            if line.startswith(EVENT_PREFIX):
                try:
                    event = Event.from_json(line[len(EVENT_PREFIX) :])
                except (ValueError, TypeError, KeyError):
                    pass  # not an event after all: shown as output below
                else:
                    self.on_event(event)
                    continue
            self.stdout.write(line)

    def _relay_stderr(self, stream: IO[str]) -> None:
        for line in stream:
            if not _JVM_FRAME.match(line):  # the tail is for people: messages, not JVM stack frames
                self._tail.append(line)
            self.stderr.write(line)
