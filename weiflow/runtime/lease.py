"""One live attempt per node of a run: a new attempt stops the old one before it starts.

Airflow retries or re-runs a task while its previous attempt may still be alive: the worker that
ran it was lost (its ``run-node`` orphaned, still training), the scheduler restarted and lost
track of it, someone cleared the task in the UI. Two attempts of one node would train side by
side and write the same datasets. So every attempt takes the node's lease first:

- the lease is an exclusive ``flock`` on ``<var>/leases/<pipeline>/<run id>/<node>.lock``, held
  for the attempt's whole life. The kernel releases it when the process dies, however it dies, so
  a lease that can be taken has no live holder, and a lease that cannot is proof its holder lives;
- beside it, ``<node>.holder.json`` says who holds it: host, pid, process group, attempt;
- a newer attempt finding the lease held on this host stops the holder (SIGTERM, so it cancels
  its Spark application or its TensorFlow cluster and exits; then SIGKILL to its process group
  when it leads one, as ``run-node`` under Airflow does, for anything left), then takes the lease
  and says so in its node.started event; an attempt no newer than the holder's is refused: it is
  the stale one;
- a holder on another host cannot be signalled from here: the attempt waits for the lease up to
  its bound, then fails naming the host and pid to stop.

``flock`` fences attempts that share the var directory: one machine, or workers sharing it on a
filesystem with working ``flock`` (local disks, NFSv4). See docs/airflow.md.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import signal
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from weiflow.errors import WeiflowError

__all__ = ["Holder", "NodeBusy", "NodeLease"]

STOP_GRACE_S = 10.0  # SIGTERM, then this long for the old attempt to stop what it started, then SIGKILL
WAIT_S = 30.0  # how long an attempt waits for a lease held elsewhere (or freed slowly) before failing
_POLL_S = 0.05


class NodeBusy(WeiflowError):
    """Another attempt of the node holds its lease and this one may not or cannot stop it."""


@dataclass(frozen=True)
class Holder:
    """Who holds a node's lease."""

    host: str
    pid: int
    pgid: int
    attempt: int
    since: float  # time.time() when it took the lease

    def describe(self) -> str:
        return f"attempt {self.attempt} (pid {self.pid} on {self.host})"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", text)[:200]


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie (exited, not yet reaped by its parent) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc here: signal 0 is all we know
    return state not in ("Z", "X")


class NodeLease:
    """The lease of one node of one run; ``with NodeLease(...).acquire(attempt):`` around the attempt."""

    def __init__(self, var_dir: Path, pipeline: str, run_id: str, node: str) -> None:
        folder = var_dir / "leases" / _safe(pipeline) / _safe(run_id)
        self.node = node
        self.lock_path = folder / f"{_safe(node)}.lock"
        self.holder_path = folder / f"{_safe(node)}.holder.json"
        self._fd: int | None = None
        self.superseded: Holder | None = None  # the attempt this one stopped, if any

    def holder(self) -> Holder | None:
        """Who last took the lease (whether or not it still holds it); None if unknown or unreadable."""
        try:
            return Holder(**json.loads(self.holder_path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def acquire(self, attempt: int, *, wait_s: float = WAIT_S, stop_grace_s: float = STOP_GRACE_S) -> NodeLease:
        """Take the lease for ``attempt``, stopping an older live attempt on this host first.

        Raises :class:`NodeBusy` when a holder is as new as ``attempt`` or newer, or when the lease
        is still held after ``wait_s`` (a holder on another host, or one that would not die).
        """
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)  # not inherited by children (PEP 446)
        try:
            if not self._try_lock(fd):
                self._take_over(fd, attempt, wait_s, stop_grace_s)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        me = Holder(socket.gethostname(), os.getpid(), os.getpgrp(), attempt, time.time())
        tmp = self.holder_path.with_name(f".{self.holder_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(me)))
        tmp.replace(self.holder_path)
        return self

    def _take_over(self, fd: int, attempt: int, wait_s: float, stop_grace_s: float) -> None:
        holder = self._read_holder_of_held_lock(fd)
        if holder is None:
            return  # the holder died while we looked: the lock is ours
        if holder.attempt >= attempt:
            raise NodeBusy(
                f"node '{self.node}': {holder.describe()} holds this run's node; attempt {attempt} is not newer, "
                "so it stops here and leaves that one running (rerun with a higher --attempt to replace it)"
            )
        deadline = time.monotonic() + wait_s
        if holder.host == socket.gethostname() and _alive(holder.pid):
            self._stop(holder, stop_grace_s)
            self.superseded = holder
            deadline = max(deadline, time.monotonic() + 5.0)  # its group is dead: only the kernel's unlock is left
        while not self._try_lock(fd):
            if time.monotonic() > deadline:
                stopped = " although it was stopped" if self.superseded is not None else ""
                raise NodeBusy(
                    f"node '{self.node}': {holder.describe()} still holds this run's node after {wait_s:g} s{stopped}; "
                    f"stop that process (kill {holder.pid} on {holder.host}), then retry"
                )
            time.sleep(_POLL_S)

    def _read_holder_of_held_lock(self, fd: int) -> Holder | None:
        # The holder writes its file just after locking: give a fresh holder a moment to say who it is.
        deadline = time.monotonic() + 2.0
        while True:
            holder = self.holder()
            if holder is not None and _alive(holder.pid):
                return holder
            if self._try_lock(fd):
                return None
            if time.monotonic() > deadline:
                # Held, but by a process that never said who it is: treat it as a foreign holder.
                return holder or Holder("an unknown host", 0, 0, 0, 0.0)
            time.sleep(_POLL_S)

    @staticmethod
    def _stop(holder: Holder, grace_s: float) -> None:
        """SIGTERM to the old attempt, then SIGKILL to what is left of it after ``grace_s``.

        SIGTERM goes to the attempt's own process only: run-node then cancels its engine in order
        (the Spark jobs, then the session; the TensorFlow cluster) and exits 130, rather than every
        process of the group stopping at once on its own. SIGKILL goes to its whole group when it
        leads one, as run-node under Airflow does, for anything left behind (also once the attempt
        itself has exited); never to a group it merely joined.
        """
        with contextlib.suppress(ProcessLookupError):
            os.kill(holder.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while _alive(holder.pid) and time.monotonic() < deadline:
            time.sleep(_POLL_S)
        with contextlib.suppress(ProcessLookupError):
            if holder.pgid == holder.pid:
                os.killpg(holder.pgid, signal.SIGKILL)
            elif _alive(holder.pid):
                os.kill(holder.pid, signal.SIGKILL)

    @staticmethod
    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        return True

    def release(self) -> None:
        if self._fd is not None:
            self.holder_path.unlink(missing_ok=True)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> NodeLease:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
