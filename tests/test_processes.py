"""A child started through dying_with_parent dies with its parent, even when the parent gets SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import alive
from weiflow.processes import ServerNotReady, free_port, running_server, signal_group, stop_groups

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")

PARENT = """
import subprocess, sys, time
from weiflow.processes import dying_with_parent
child = subprocess.Popen(dying_with_parent([sys.executable, "-c", "import time; time.sleep(60)"]))
print(child.pid, flush=True)
time.sleep(60)
"""


def test_the_child_is_killed_when_its_parent_is_killed() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert alive(child)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(child)


def test_stop_groups_terms_then_kills_what_ignores_sigterm() -> None:
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    stubborn = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(60)",
        ],
        start_new_session=True,
        stdout=subprocess.PIPE,
    )
    assert stubborn.stdout is not None and stubborn.stdout.readline()  # its handler is in place
    assert stop_groups([polite], grace_s=5) is True and polite.returncode == -signal.SIGTERM
    started = time.monotonic()
    assert stop_groups([stubborn], grace_s=0.5) is False and stubborn.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 5
    assert not alive(polite.pid) and not alive(stubborn.pid)
    assert signal_group(polite.pid, signal.SIGTERM) is False  # the group is gone


# A server whose readiness URL answers 503 for its first READY_AFTER requests, then 200.
SLOW_SERVER = """
import http.server, sys
port, ready_after = int(sys.argv[1]), int(sys.argv[2])
seen = []
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        seen.append(1)
        self.send_response(200 if len(seen) > ready_after else 503)
        self.end_headers()
    def log_message(self, *args):
        print("request", flush=True)
print("listening", flush=True)
http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def test_running_server_waits_for_ready_and_stops_the_server_after(tmp_path: Path) -> None:
    port = free_port()
    argv = [sys.executable, "-c", SLOW_SERVER, str(port), "3"]
    with running_server(argv, ready_url=f"http://127.0.0.1:{port}/ready", log=tmp_path / "log") as proc:
        assert proc.poll() is None
        # Three 503s were not ready; the fourth answer, a 200, was.
        assert (tmp_path / "log").read_text().count("request") == 4
    assert proc.poll() is not None and not alive(proc.pid)


def test_running_server_reports_an_exit_or_a_timeout_with_the_log(tmp_path: Path) -> None:
    dies = [sys.executable, "-c", "print('bad flag --x'); raise SystemExit(3)"]
    with (
        pytest.raises(ServerNotReady, match=r"exited 3(.|\n)*bad flag --x"),
        running_server(dies, ready_url=f"http://127.0.0.1:{free_port()}/", log=tmp_path / "dies.log"),
    ):
        pytest.fail("entered the block of a server that exited")
    port = free_port()
    never = [sys.executable, "-c", SLOW_SERVER, str(port), "1000000"]
    with (
        pytest.raises(ServerNotReady, match="not ready after 1 s"),
        running_server(never, ready_url=f"http://127.0.0.1:{port}/", log=tmp_path / "never.log", timeout_s=1),
    ):
        pytest.fail("entered the block of a server that never got ready")
