"""``weiflow center serve``: the real command, several worker processes on 127.0.0.1, stopped cleanly."""

from __future__ import annotations

import os
import signal
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


def test_serve_runs_worker_processes_that_answer_and_leaves_none_behind(tmp_path: Path) -> None:
    env = {**os.environ, "WEIFLOW_VAR_DIR": str(tmp_path / "var"), "WEIFLOW_DATABASE_URL": f"sqlite:///{tmp_path}/c.db"}
    env.pop("WEIFLOW_CONFIG", None)
    made = weiflow("center", "user", "vera", "--role", "viewer", env=env)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "weiflow", "center", "serve", "--port", str(port), "--workers", "2", "--sweep-every=0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{base}/api/openapi.json", timeout=1)
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, "the center did not start"
                time.sleep(0.2)
        workers = children(server.pid)
        assert len([p for p in workers if alive(p)]) >= 2, workers  # the two workers (and uvicorn's helpers)
        headers = {"Authorization": f"Bearer {token}"}
        for _ in range(10):  # a connection each: whichever worker accepts it must know the database
            assert httpx.get(f"{base}/api/v1/me", headers=headers).json()["username"] == "vera"
            assert httpx.get(f"{base}/api/v1/datasets", headers=headers).status_code == 200
        assert httpx.get(f"{base}/api/v1/me").status_code == 401
    finally:
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=30)
    assert server.returncode == 0, out[-2000:]
    deadline = time.monotonic() + 5
    while any(alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in workers if alive(p)]


def test_serve_refuses_zero_workers(tmp_path: Path) -> None:
    env = {**os.environ, "WEIFLOW_VAR_DIR": str(tmp_path / "var"), "WEIFLOW_DATABASE_URL": f"sqlite:///{tmp_path}/c.db"}
    result = weiflow("center", "serve", "--workers", "0", env=env)
    assert result.returncode == 2
    assert "--workers 0: needs at least 1" in result.stderr
