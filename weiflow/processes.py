"""Child processes that cannot outlive the process that started them, and the ports they listen on.

Engines start long-lived children (spark-submit and its JVM, TensorFlow servers that never exit
on their own). Each is started through :func:`dying_with_parent`, so Linux kills it when its
parent dies, even when the parent is killed with SIGKILL and has no chance to clean up. Each
runs in a process group of its own, which :func:`stop_groups` stops as a whole.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["die_with_parent", "dying_with_parent", "free_port", "signal_group", "stop_groups"]

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None

# Run in the child before the real command: the parent-death signal survives exec. A few lines
# of Python instead of Popen's preexec_fn, which is unsafe in a process with threads (py4j's, an
# Airflow task runner's, our own): the forked child could block on a lock another thread held.
_EXEC_DYING_WITH_PARENT = """\
import ctypes, os, signal, sys
ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    os._exit(1)  # the parent died before the request took effect
os.execvp(sys.argv[2], sys.argv[2:])
"""


def dying_with_parent(argv: Sequence[str]) -> list[str]:
    """``argv`` wrapped so that the process it becomes gets SIGKILL when this process exits (Linux)."""
    if sys.platform != "linux":
        return list(argv)
    return [sys.executable, "-I", "-S", "-c", _EXEC_DYING_WITH_PARENT, str(os.getpid()), *argv]


def die_with_parent(signum: int = signal.SIGKILL) -> None:
    """Ask Linux to send ``signum`` to this process when its parent exits (a no-op elsewhere)."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signum)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    Another process may take it before the caller binds it: rare, and the caller then fails with
    its bind error rather than hanging.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def signal_group(pgid: int, signum: int) -> bool:
    """Send ``signum`` to the process group ``pgid``; False when the group is gone already.

    PermissionError counts as gone too: some systems answer it for a group whose members are
    all zombies.
    """
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop_groups(procs: Sequence[subprocess.Popen[Any]], grace_s: float) -> bool:
    """Stop each process's group (started with ``start_new_session``) and reap the processes.

    SIGTERM to every group, up to ``grace_s`` for all of them to exit, then SIGKILL to every
    group: also to those whose leader exited, for what it left behind. Returns whether every
    process exited within the grace period.
    """
    for proc in procs:
        signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    in_time = True
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            in_time = False
    for proc in procs:
        signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
    return in_time
