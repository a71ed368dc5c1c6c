"""Child processes that cannot outlive the process that started them, and the ports they listen on.

Engines start long-lived children (spark-submit and its JVM, TensorFlow servers that never exit
on their own). Each is started through :func:`dying_with_parent`, so Linux kills it when its
parent dies, even when the parent is killed with SIGKILL and has no chance to clean up. Each
runs in a process group of its own, which :func:`stop_groups` stops as a whole.

:func:`serve_workers` runs an ASGI app (the control center, the prediction service) in several
worker processes. uvicorn's own ``--workers`` shares one listening socket between its processes,
and whichever process wakes first accepts every connection waiting: 20 clients connecting
together all landed on one of two workers (bench_center), so keep-alive clients never used the
second CPU. Here each worker binds its own ``SO_REUSEPORT`` socket on the same address, and the
kernel spreads new connections over them.

:func:`running_server` starts a server (``weiflow serve``, the center, anything with a readiness
URL) for the length of a ``with`` block: the demo, the tests and the benchmarks use it.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = [
    "HTTP_PROTOCOL",
    "ServerNotReady",
    "die_with_parent",
    "dying_with_parent",
    "free_port",
    "running_server",
    "serve_workers",
    "signal_group",
    "stop_groups",
]

# uvicorn's HTTP protocol with a deadline on each request's head (weiflow.httpserver): by import string, so
# each worker imports it and this module stays free of uvicorn. serve_workers uses it unless told otherwise.
HTTP_PROTOCOL = "weiflow.httpserver:HeadTimeoutProtocol"
WORKERS_STOP_GRACE_S = 10.0  # how long serve_workers gives its workers to finish the requests in flight

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


class ServerNotReady(RuntimeError):
    """A server started by :func:`running_server` exited, or did not answer ready in time; says which, with its log."""


def _answers(url: str, accept: Callable[[int], bool]) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return accept(answer.status)
    except urllib.error.HTTPError as exc:
        return accept(exc.code)
    except (urllib.error.URLError, OSError):
        return False  # not listening yet, or reset while it starts


@contextlib.contextmanager
def running_server(
    argv: Sequence[str],
    *,
    ready_url: str,
    log: Path,
    timeout_s: float = 120.0,
    env: Mapping[str, str] | None = None,
    accept: Callable[[int], bool] = lambda status: status == 200,
    stop_grace_s: float = 30.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """``argv`` running for the block, output in ``log``; entered once GET ``ready_url`` answers as ``accept`` wants.

    Started dying with this process and in a group of its own, so nothing outlives a killed caller;
    stopped as a group after the block (SIGTERM, SIGKILL after ``stop_grace_s``). Raises
    :class:`ServerNotReady`, quoting the log's end, when it exits or is not ready within ``timeout_s``.
    """
    with log.open("wb") as out:
        proc = subprocess.Popen(
            dying_with_parent(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout_s
        while not _answers(ready_url, accept):
            if proc.poll() is not None or time.monotonic() > deadline:
                ended = (
                    f"exited {proc.returncode}" if proc.returncode is not None else f"not ready after {timeout_s:g} s"
                )
                tail = log.read_text(errors="replace")[-3000:]
                raise ServerNotReady(f"{argv[0]} {' '.join(argv[1:3])} ... {ended}; the end of {log}:\n{tail}")
            time.sleep(0.2)
        yield proc
    finally:
        stop_groups([proc], stop_grace_s)


def _serve_one(app: str, host: str, port: int, options: Mapping[str, Any], name: str) -> None:
    """A worker of :func:`serve_workers`: its own ``SO_REUSEPORT`` socket, then uvicorn on it."""
    import uvicorn

    die_with_parent(signal.SIGTERM)  # a supervisor killed outright leaves no worker serving

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        print(f"{name}: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        sys.exit(3)
    uvicorn.Server(uvicorn.Config(app, factory=True, **options)).run(sockets=[sock])


def serve_workers(
    app: str, host: str, port: int, *, workers: int, name: str, options: Mapping[str, Any] | None = None
) -> int:
    """Serve the ASGI app factory ``app`` ("module:function") in ``workers`` processes until SIGTERM or
    SIGINT, or until one of them dies; the exit status. ``options`` go to ``uvicorn.Config``.

    Workers are spawned, not forked: they inherit no threads (a sweeper, a model poller) or engines,
    and each builds its app from the environment.
    """
    import uvicorn

    options = {"http": HTTP_PROTOCOL, **(options or {})}
    if workers == 1:
        uvicorn.Server(uvicorn.Config(app, factory=True, host=host, port=port, **options)).run()
        return 0
    context = multiprocessing.get_context("spawn")
    processes: list[BaseProcess] = []
    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for _ in range(workers):
            started = context.Process(target=_serve_one, args=(app, host, port, options, name), daemon=True)
            started.start()
            processes.append(started)
        print(f"{name}: {workers} workers on http://{host}:{port}", file=sys.stderr, flush=True)
        while not stopping and all(p.is_alive() for p in processes):
            time.sleep(0.2)
        failed = [p for p in processes if not p.is_alive()]
        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: uvicorn finishes the requests in flight
        deadline = time.monotonic() + WORKERS_STOP_GRACE_S
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        if failed and not stopping:
            codes = ", ".join(f"pid {p.pid} exit {p.exitcode}" for p in failed)
            print(f"{name}: a worker stopped ({codes}); stopped the others", file=sys.stderr)
            return 1
        return 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
