"""A child started through dying_with_parent dies with its parent, even when the parent gets SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import alive
from weiflow.processes import signal_group, stop_groups

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
