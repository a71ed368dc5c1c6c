"""Child processes that cannot outlive the process that started them.

Engines start long-lived children (spark-submit and its JVM, TensorFlow servers that never exit
on their own). Each is started through :func:`dying_with_parent`, so Linux kills it when its
parent dies, even when the parent is killed with SIGKILL and has no chance to clean up.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Sequence

__all__ = ["die_with_parent", "dying_with_parent"]

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
