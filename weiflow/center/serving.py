"""Serve the center in several worker processes, each with its own listening socket.

uvicorn's own ``--workers`` shares one listening socket between its processes, and whichever
process wakes first accepts every connection waiting: 20 clients connecting together all
landed on one of two workers (bench_center), so keep-alive clients never used the second CPU.
Here each worker binds its own ``SO_REUSEPORT`` socket on the same address, and the kernel
spreads new connections over them.
"""

from __future__ import annotations

import multiprocessing
import signal
import socket
import sys
import time
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import TYPE_CHECKING

from weiflow.processes import die_with_parent

if TYPE_CHECKING:
    import uvicorn

__all__ = ["serve"]

APP = "weiflow.center.api:app_from_settings"
STOP_GRACE_S = 10.0
# Per worker: connections and tasks beyond this get 503 at once instead of queueing without end.
LIMIT_CONCURRENCY = 1000
KEEP_ALIVE_S = 5


def _worker(host: str, port: int, log_level: str) -> None:
    import uvicorn

    die_with_parent(signal.SIGTERM)  # a supervisor killed outright leaves no worker serving

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        print(f"weiflow center serve: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        sys.exit(3)
    uvicorn.Server(_config(log_level)).run(sockets=[sock])


def _config(log_level: str, **kwargs: object) -> uvicorn.Config:
    import uvicorn

    return uvicorn.Config(
        APP,
        factory=True,
        log_level=log_level,
        limit_concurrency=LIMIT_CONCURRENCY,
        timeout_keep_alive=KEEP_ALIVE_S,
        # uvicorn would believe X-Forwarded-For from any local process: the login throttle counts per
        # client address, and a local client must not pick its own. Behind a proxy, see docs/center.md.
        proxy_headers=False,
        **kwargs,  # type: ignore[arg-type]
    )


def serve(host: str, port: int, *, workers: int, log_level: str = "info") -> int:
    """Run ``workers`` server processes until SIGTERM or SIGINT, or until one of them dies; the exit status."""
    if workers == 1:
        import uvicorn

        uvicorn.Server(_config(log_level, host=host, port=port)).run()
        return 0
    context = multiprocessing.get_context("spawn")  # no inherited threads (the sweeper) or engines
    processes: list[BaseProcess] = []
    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for _ in range(workers):
            started = context.Process(target=_worker, args=(host, port, log_level), daemon=True)
            started.start()
            processes.append(started)
        print(f"weiflow center: {workers} workers on http://{host}:{port}", file=sys.stderr, flush=True)
        while not stopping and all(p.is_alive() for p in processes):
            time.sleep(0.2)
        failed = [p for p in processes if not p.is_alive()]
        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: uvicorn finishes the requests in flight
        deadline = time.monotonic() + STOP_GRACE_S
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        if failed and not stopping:
            codes = ", ".join(f"pid {p.pid} exit {p.exitcode}" for p in failed)
            print(f"weiflow center serve: a worker stopped ({codes}); stopped the others", file=sys.stderr)
            return 1
        return 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
