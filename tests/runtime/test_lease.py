"""One live attempt per node of a run: what Airflow's retry of a task whose old attempt still runs meets.

Each test runs ``weiflow run-node`` processes the way the Airflow operator does (a process group
of their own) on a python-engine node that works for as long as its ``seconds`` param says.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import alive
from weiflow.runtime.lease import Holder, NodeBusy, NodeLease
from weiflow.tracking import Event, EventKind, read_events, run_log_path

pytestmark = [pytest.mark.integration]

WORK = """
import os, time
from pathlib import Path

def work(step):
    Path(step.attrs["started"]).write_text(str(os.getpid()))
    deadline = time.monotonic() + float(step.params["seconds"])
    while time.monotonic() < deadline:
        time.sleep(0.05)
    with step.write("out") as out:
        (out.path / "by.txt").write_text(str(os.getpid()))
"""


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    (tmp_path / "leased_steps.py").write_text(WORK)
    path = tmp_path / "leased.xml"
    path.write_text(
        textwrap.dedent(f"""\
        <pipeline xmlns="urn:weiflow:pipeline:1" name="leased">
          <params><param name="seconds" type="float" default="60"/></params>
          <datasets><dataset name="out" uri="${{storage}}/leased/out" format="json"/></datasets>
          <node id="n" engine="python">
            <module id="w" type="call" callable="leased_steps:work" writes="out" started="{tmp_path}/started"/>
          </node>
        </pipeline>
        """)
    )
    return path


def start(spec: Path, attempt: int, seconds: float) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "weiflow", "run-node", str(spec), "--node", "n", "--run-id", "r1"]
    argv += ["--attempt", str(attempt), "--param", f"seconds={seconds}"]
    # A process group of its own, as WeiflowNodeOperator starts it.
    return subprocess.Popen(
        argv, cwd=spec.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def working(spec: Path, proc: subprocess.Popen[str], timeout_s: float = 60) -> None:
    """Wait until ``proc``'s node is inside its work (it wrote its pid into the started file)."""
    marker = spec.parent / "started"
    deadline = time.monotonic() + timeout_s
    while not (marker.is_file() and marker.read_text() == str(proc.pid)):
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "the node never started working"
        time.sleep(0.05)


def node_events(isolated_var: Path) -> list[Event]:
    """The node's own events (not its modules'), in the order the run log has them."""
    events = read_events(run_log_path(isolated_var / "runs", "leased", "r1"))
    return [e for e in events if e.node == "n" and e.module is None]


@pytest.mark.reliability(
    area="retry",
    component="python run-node",
    fault="retried while the old attempt runs",
    proves="the old attempt cancelled (exit 130) before the new one's node.started; the dataset is the new one's",
)
def test_a_new_attempt_stops_the_old_one_before_it_starts(
    spec: Path, isolated_var: Path, processes: list[subprocess.Popen[str]]
) -> None:
    old = start(spec, 1, 60)
    processes.append(old)
    working(spec, old)
    new = start(spec, 2, 0)
    processes.append(new)
    out, _ = new.communicate(timeout=120)
    assert new.returncode == 0, out
    # The old attempt was cancelled (SIGTERM: run-node cancels its engine and exits 130), not left working.
    assert old.wait(timeout=15) == 130
    events = [(e.kind, e.attempt) for e in node_events(isolated_var)]
    assert events == [
        (EventKind.NODE_STARTED, 1),
        (EventKind.NODE_FAILED, 1),
        (EventKind.NODE_STARTED, 2),
        (EventKind.NODE_SUCCEEDED, 2),
    ]
    started = [e for e in node_events(isolated_var) if e.kind is EventKind.NODE_STARTED]
    assert started[1].detail["superseded"]["attempt"] == 1 and started[1].detail["superseded"]["pid"] == old.pid
    # The dataset is the new attempt's, and complete.
    written = isolated_var / "storage" / "leased" / "out"
    assert (written / "by.txt").read_text() == str(new.pid) and (written / "_SUCCESS").is_file()


@pytest.mark.reliability(
    area="retry",
    component="python run-node",
    fault="a stale (older) attempt starts",
    proves="refused with exit 1 and no event; the live attempt untouched",
)
def test_a_stale_attempt_is_refused_and_the_live_one_keeps_running(
    spec: Path, isolated_var: Path, processes: list[subprocess.Popen[str]]
) -> None:
    live = start(spec, 2, 60)
    processes.append(live)
    working(spec, live)
    stale = start(spec, 1, 0)
    out, _ = stale.communicate(timeout=60)
    assert stale.returncode == 1
    assert f"attempt 2 (pid {live.pid} on" in out and "attempt 1 is not newer" in out
    assert live.poll() is None
    # The refused attempt said nothing to the run log: the center never sees it start or fail.
    assert [(e.kind, e.attempt) for e in node_events(isolated_var)] == [(EventKind.NODE_STARTED, 2)]


@pytest.mark.reliability(
    area="retry",
    component="python run-node",
    fault="attempt SIGKILLed (worker lost), then retried",
    proves="the lease is free at once; the retry runs without waiting",
)
def test_an_attempt_killed_outright_leaves_the_node_free(
    spec: Path, isolated_var: Path, processes: list[subprocess.Popen[str]]
) -> None:
    lost = start(spec, 1, 60)
    processes.append(lost)
    working(spec, lost)
    os.killpg(lost.pid, signal.SIGKILL)  # the worker that ran it is lost: no cleanup, no event
    lost.wait()
    again = start(spec, 2, 0)
    out, _ = again.communicate(timeout=120)
    assert again.returncode == 0, out
    started = [e for e in node_events(isolated_var) if e.kind is EventKind.NODE_STARTED]
    assert [e.attempt for e in started] == [1, 2] and "superseded" not in started[1].detail


HOLD = """
import json, sys, time
from weiflow.runtime.lease import NodeLease
from pathlib import Path
lease = NodeLease(Path(sys.argv[1]), "p", "r1", "n").acquire(1)
holder = json.loads(lease.holder_path.read_text())
holder["host"] = "elsewhere"
lease.holder_path.write_text(json.dumps(holder))
print("held", flush=True)
time.sleep(60)
"""


@pytest.mark.reliability(
    area="retry",
    component="node lease",
    fault="holder on another host",
    proves="never signalled; the new attempt fails naming host and pid",
)
def test_a_holder_on_another_host_is_never_signalled(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        lease = NodeLease(tmp_path, "p", "r1", "n")
        with pytest.raises(NodeBusy, match=rf"attempt 1 \(pid {holder.pid} on elsewhere\) still holds .* after 0.5 s"):
            lease.acquire(2, wait_s=0.5)
        assert holder.poll() is None and alive(holder.pid)
    finally:
        holder.kill()
        holder.wait()
    # Once it is gone, the lease is free at once, and says who holds it now.
    with NodeLease(tmp_path, "p", "r1", "n").acquire(2) as lease:
        assert lease.superseded is None
        assert lease.holder() == Holder(**json.loads(lease.holder_path.read_text()))
        assert lease.holder().pid == os.getpid() and lease.holder().attempt == 2  # type: ignore[union-attr]
    assert not lease.holder_path.exists()
