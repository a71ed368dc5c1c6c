"""``weiflow center serve``: the real command, several worker processes on 127.0.0.1, stopped cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import alive
from weiflow.processes import free_port

pytestmark = pytest.mark.integration


def weiflow(*args: str, env: dict[str, str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "weiflow", *args], env=env, capture_output=True, text=True, timeout=60, **kwargs
    )


def children(pid: int) -> list[int]:
    found = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in found.read_text().split()] if found.exists() else []


def connections(port: int, pids: list[int]) -> dict[int, int]:
    """Established TCP connections to ``port`` held by each of ``pids``, from /proc."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":  # local port, ESTABLISHED
            inodes.add(fields[9])
    found = {}
    for pid in pids:
        fds = Path(f"/proc/{pid}/fd")
        found[pid] = sum(1 for fd in fds.iterdir() if str(fd.readlink()).removeprefix("socket:[").rstrip("]") in inodes)
    return found


def listening(port: int) -> int:
    """Sockets listening on ``port`` (one per worker once every worker has started)."""
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for line in lines if int(line.split()[1].split(":")[1], 16) == port and line.split()[3] == "0A")


def center_env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "WEIFLOW_VAR_DIR": str(tmp_path / "var"), "WEIFLOW_DATABASE_URL": f"sqlite:///{tmp_path}/c.db"}
    env.pop("WEIFLOW_CONFIG", None)
    return env


def start_center(env: dict[str, str], port: int) -> tuple[subprocess.Popen[str], list[int]]:
    """``weiflow center serve`` with two workers, answering; the server and its worker pids."""
    server = subprocess.Popen(
        [sys.executable, "-m", "weiflow", "center", "serve", "--port", str(port), "--workers", "2", "--sweep-every=0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/openapi.json", timeout=1)
            break
        except httpx.TransportError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise AssertionError(f"the center did not start: {server.communicate()[0][-2000:]}") from None
            time.sleep(0.2)
    # One worker answering is not both: the kernel spreads connections only over listening sockets.
    while listening(port) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    # The server processes (multiprocessing's resource tracker is a child too).
    workers = [p for p in children(server.pid) if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert len(workers) == 2 and all(alive(p) for p in workers), workers
    return server, workers


def all_gone(pids: list[int], within_s: float = 5) -> bool:
    deadline = time.monotonic() + within_s
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(alive(p) for p in pids)


def test_serve_runs_worker_processes_that_answer_and_leaves_none_behind(tmp_path: Path) -> None:
    env = center_env(tmp_path)
    made = weiflow("center", "user", "vera", "--role", "viewer", env=env)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    port = free_port()
    server, workers = start_center(env, port)
    spawned = children(server.pid)
    try:
        base = f"http://127.0.0.1:{port}"
        # 20 keep-alive connections opened together spread over both workers (own SO_REUSEPORT
        # sockets); with one shared socket, the first worker to wake took nearly all of them.
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
        try:
            for client in clients:
                client.sendall(b"GET /api/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
            for client in clients:
                assert client.recv(64).startswith(b"HTTP/1.1 200")
            per_worker = connections(port, workers)
            assert sum(per_worker.values()) == 20 and min(per_worker.values()) >= 3, per_worker
        finally:
            for client in clients:
                client.close()
        headers = {"Authorization": f"Bearer {token}"}
        for _ in range(10):  # a connection each: whichever worker accepts it must know the database
            assert httpx.get(f"{base}/api/v1/me", headers=headers).json()["username"] == "vera"
            assert httpx.get(f"{base}/api/v1/datasets", headers=headers).status_code == 200
        assert httpx.get(f"{base}/api/v1/me").status_code == 401
    finally:
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=30)
    assert server.returncode == 0, out[-2000:]
    assert all_gone(spawned)


def test_a_dead_worker_stops_the_center_with_an_error(tmp_path: Path) -> None:
    server, workers = start_center(center_env(tmp_path), free_port())
    spawned = children(server.pid)
    try:
        os.kill(workers[0], signal.SIGKILL)
        out, _ = server.communicate(timeout=30)
    finally:
        server.kill()
    assert server.returncode == 1
    assert f"pid {workers[0]} exit -9" in out and "stopped the others" in out
    assert all_gone(spawned)


def test_serve_refuses_zero_workers(tmp_path: Path) -> None:
    env = {**os.environ, "WEIFLOW_VAR_DIR": str(tmp_path / "var"), "WEIFLOW_DATABASE_URL": f"sqlite:///{tmp_path}/c.db"}
    result = weiflow("center", "serve", "--workers", "0", env=env)
    assert result.returncode == 2
    assert "--workers 0: needs at least 1" in result.stderr
