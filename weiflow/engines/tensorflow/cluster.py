"""A parameter-server cluster as the launcher sees it, and the local backend that owns its processes.

A :class:`ClusterJob` is what every backend runs: ``ps`` parameter servers and ``workers``
workers (plain ``tf.distribute.Server`` processes, see server.py) plus one chief, the
coordinator that drives training (trainer.py). Every process learns its place from
``TF_CONFIG``, the variable TensorFlow's own cluster resolvers read, so the same commands run
as local processes or as Kubernetes pods.

PS and worker servers never exit on their own. The backend owns them: the job ends when the
chief ends, and then every server is stopped; when any server dies first, or the launcher is
cancelled, everything is stopped at once. Local children also get ``PR_SET_PDEATHSIG`` so they
die with the launcher even when it is killed with SIGKILL and has no chance to clean up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from weiflow.errors import WeiflowError
from weiflow.processes import dying_with_parent, free_port, stop_groups

__all__ = [
    "STOP_GRACE_S",
    "ClusterBackend",
    "ClusterFailed",
    "ClusterJob",
    "LocalCluster",
    "TaskRef",
    "own_process",
]

CHIEF, PS, WORKER = "chief", "ps", "worker"
STOP_GRACE_S = 3.0  # SIGTERM to SIGKILL when the launcher stops a process group


class ClusterFailed(WeiflowError):
    """A process of the cluster failed or died; every other process has been stopped."""


@dataclass(frozen=True)
class TaskRef:
    """One process of the cluster: its job (chief, ps, worker) and index."""

    job: str
    index: int

    def __str__(self) -> str:
        return f"{self.job}:{self.index}"


@dataclass(frozen=True)
class ClusterJob:
    """What a backend runs. ``name`` is unique per node run and DNS-safe (it names pods)."""

    name: str
    ps: int
    workers: int
    chief_argv: tuple[str, ...]
    server_argv: tuple[str, ...] = (sys.executable, "-m", "weiflow.engines.tensorflow.server")
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def servers(self) -> list[TaskRef]:
        """The processes that never exit on their own: every PS, then every worker."""
        return [TaskRef(PS, i) for i in range(self.ps)] + [TaskRef(WORKER, i) for i in range(self.workers)]

    def tf_config(self, cluster: Mapping[str, Sequence[str]], task: TaskRef) -> str:
        return json.dumps(
            {"cluster": {k: list(v) for k, v in cluster.items()}, "task": {"type": task.job, "index": task.index}}
        )


class ClusterBackend(Protocol):
    """Runs a :class:`ClusterJob`. ``run`` blocks until the chief ends and always leaves nothing running.

    ``run`` returns when the chief exits with 0, after stopping every server; it raises
    :class:`ClusterFailed` when the chief fails or a server dies first, after stopping the
    rest. ``stop`` may be called from another thread or a signal handler: it stops everything
    and makes ``run`` raise.
    """

    def run(self, job: ClusterJob) -> None: ...

    def stop(self) -> None: ...

    def processes(self) -> Mapping[str, int | str]:
        """Task name (``ps:0``) to what the backend identifies it by: a pid, a pod name."""
        ...


def own_process(argv: Sequence[str], *, env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start a child in its own process group that dies with this process, output to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            dying_with_parent(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def exit_text(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


class LocalCluster:
    """The local backend: every process of the job on 127.0.0.1, owned by this process.

    Logs go to ``<log_dir>/<job>-<index>.log``; the error raised on failure quotes the tail of
    the failed process's log.
    """

    def __init__(self, log_dir: Path, *, poll_s: float = 0.1) -> None:
        self.log_dir = log_dir
        self.poll_s = poll_s
        self._procs: dict[TaskRef, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def processes(self) -> Mapping[str, int | str]:
        with self._lock:
            return {str(task): proc.pid for task, proc in self._procs.items()}

    def run(self, job: ClusterJob) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        cluster: dict[str, list[str]] = {CHIEF: [f"127.0.0.1:{free_port()}"]}
        if job.ps:
            cluster[PS] = [f"127.0.0.1:{free_port()}" for _ in range(job.ps)]
            cluster[WORKER] = [f"127.0.0.1:{free_port()}" for _ in range(job.workers)]
        tasks = [*job.servers, TaskRef(CHIEF, 0)] if job.ps else [TaskRef(CHIEF, 0)]
        try:
            for task in tasks:
                argv = job.chief_argv if task.job == CHIEF else job.server_argv
                env = {**os.environ, **job.env, "TF_CONFIG": job.tf_config(cluster, task)}
                with self._lock:
                    if self._stopped.is_set():
                        raise ClusterFailed(f"cluster '{job.name}' was stopped before it started")
                    self._procs[task] = own_process(argv, env=env, log=self._log(task))
            self._watch(job)
        finally:
            self.stop()

    def _watch(self, job: ClusterJob) -> None:
        chief = self._procs[TaskRef(CHIEF, 0)]
        while True:
            if self._stopped.is_set():
                raise ClusterFailed(f"cluster '{job.name}' was stopped (cancelled)")
            code = chief.poll()
            if code == 0:
                return
            if code is not None:
                raise ClusterFailed(f"the chief of '{job.name}' {exit_text(code)}{self._tail(TaskRef(CHIEF, 0))}")
            for task, proc in self._procs.items():
                code = proc.poll()
                if task.job != CHIEF and code is not None:
                    raise ClusterFailed(
                        f"{task} of '{job.name}' (pid {proc.pid}) {exit_text(code)} while training ran; "
                        f"every process of the cluster was stopped{self._tail(task)}"
                    )
            time.sleep(self.poll_s)

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            procs = list(self._procs.values())
        stop_groups(procs, STOP_GRACE_S)

    def _log(self, task: TaskRef) -> Path:
        return self.log_dir / f"{task.job}-{task.index}.log"

    def _tail(self, task: TaskRef, lines: int = 15) -> str:
        try:
            text = self._log(task).read_text(errors="replace")
        except OSError:
            return ""
        wanted = [line for line in text.splitlines() if line.strip() and not line.startswith(("I0000", "W0000"))]
        return f"; last lines of {self._log(task)}:\n" + "\n".join(wanted[-lines:]) if wanted else ""
