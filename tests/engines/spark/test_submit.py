"""The spark-submit path: the command for YARN and Kubernetes, the owned process, and real runs in client mode."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pytest

from weiflow.config import load_settings
from weiflow.dag import compile_file
from weiflow.engines.spark import submit
from weiflow.engines.spark.driver import _parser, driver_arguments
from weiflow.engines.spark.executor import SparkExecutor
from weiflow.engines.spark.submit import (
    EVENT_PREFIX,
    SubmittedApplication,
    submit_command,
    submit_environment,
    wants_submit,
)
from weiflow.errors import WeiflowError
from weiflow.runtime import Executor, RunContext, run_node
from weiflow.storage import SUCCESS_MARKER, is_complete
from weiflow.tracking import Event, EventKind, MemoryTracker, read_events

DRIVER = str(Path(submit.__file__).with_name("driver.py"))
ARGS = ["feed.xml", "features", "r1", "2026-11-20", "--attempt", "1"]


# --- the command line -------------------------------------------------------------------------


def test_yarn_cluster_mode_command() -> None:
    conf = {
        "spark.master": "yarn",
        "spark.submit.deployMode": "cluster",
        "spark.app.name": "weiflow:feed_ctr:features:r1",
        "spark.yarn.queue": "ranking",
        "spark.archives": "hdfs:///envs/weiflow-0.1.tar.gz#environment",
        "spark.pyspark.python": "./environment/bin/python",
    }
    command = submit_command(conf, ARGS, files=["/specs/feed.xml"], spark_submit="/opt/spark/bin/spark-submit")
    assert command == [
        "/opt/spark/bin/spark-submit",
        "--master",
        "yarn",
        "--deploy-mode",
        "cluster",
        "--name",
        "weiflow:feed_ctr:features:r1",
        "--conf",
        "spark.archives=hdfs:///envs/weiflow-0.1.tar.gz#environment",
        "--conf",
        "spark.pyspark.python=./environment/bin/python",
        "--conf",
        "spark.yarn.queue=ranking",
        "--files",
        "/specs/feed.xml",
        DRIVER,
        *ARGS,
    ]


def test_kubernetes_cluster_mode_command_uses_the_pyspark_launcher() -> None:
    conf = {
        "spark.master": "k8s://https://api.example:6443",
        "spark.submit.deployMode": "cluster",
        "spark.kubernetes.container.image": "registry.example/weiflow:0.1",
        "spark.kubernetes.namespace": "ranking",
        "spark.kubernetes.file.upload.path": "s3a://bucket/spark-uploads",
    }
    command = submit_command(conf, ARGS, files=["/specs/feed.xml", "/specs/vocab.txt"])
    assert Path(command[0]).name == "spark-submit" and Path(command[0]).parent.parent.name == "pyspark"
    assert Path(command[0]).is_file()
    assert command[1:5] == ["--master", "k8s://https://api.example:6443", "--deploy-mode", "cluster"]
    confs = [command[i + 1] for i, arg in enumerate(command) if arg == "--conf"]
    assert confs == [
        "spark.kubernetes.container.image=registry.example/weiflow:0.1",
        "spark.kubernetes.file.upload.path=s3a://bucket/spark-uploads",
        "spark.kubernetes.namespace=ranking",
    ]
    assert command[-len(ARGS) - 3 :] == ["--files", "/specs/feed.xml,/specs/vocab.txt", DRIVER, *ARGS]


@pytest.mark.parametrize(
    ("conf", "env", "expected"),
    [
        ({"spark.master": "yarn"}, {}, False),
        ({"spark.master": "yarn", "spark.submit.deployMode": "cluster"}, {}, True),
        ({"spark.master": "local[2]"}, {"WEIFLOW_SPARK_SUBMIT": "1"}, True),
        ({"spark.master": "local[2]"}, {"WEIFLOW_SPARK_SUBMIT": "0"}, False),
    ],
)
def test_which_nodes_go_through_spark_submit(conf: dict[str, str], env: dict[str, str], expected: bool) -> None:
    assert wants_submit(conf, env) is expected


@pytest.mark.parametrize("master", ["local[2]", "spark://127.0.0.1:7077"])
def test_cluster_mode_on_a_master_that_cannot_run_python_drivers_is_refused_first(
    master: str, fake_cluster: Path, make_spec: Callable[..., Path], isolated_var: Path
) -> None:
    spec = CLUSTER_SPEC.format(raw=isolated_var.parent).replace('value="yarn"', f'value="{master}"')
    ctx, _ = context(make_spec(spec))
    with pytest.raises(WeiflowError, match=f"deployMode=cluster needs a YARN .* not '{re.escape(master)}'"):
        run_node(ctx, "gen")
    assert not fake_cluster.exists()  # spark-submit never started


def test_client_mode_runs_this_python_on_loopback_cluster_mode_adds_nothing() -> None:
    client = submit_environment({"spark.master": "local[2]"}, {"PATH": "/bin"})
    assert client == {"PATH": "/bin", "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    assert submit_environment({"spark.submit.deployMode": "cluster"}, {"PATH": "/bin"}) == {"PATH": "/bin"}
    assert submit_environment({}, {"PYSPARK_PYTHON": "/opt/py"})["PYSPARK_PYTHON"] == "/opt/py"


def test_driver_arguments_parse_back() -> None:
    args = driver_arguments(
        spec="/specs/feed.xml",
        node="features",
        run_id="scheduled__2026-11-20T00:00:00+00:00",
        ds=date(2026, 11, 20),
        attempt=2,
        storage="hdfs://nn/weiflow",
        spec_sha256="ab" * 32,
        params={"day": "2026-11-20", "where": "a = b AND c"},
    )
    parsed = _parser().parse_args(args)
    assert (parsed.spec, parsed.node, parsed.run_id, parsed.ds) == (
        "/specs/feed.xml",
        "features",
        "scheduled__2026-11-20T00:00:00+00:00",
        date(2026, 11, 20),
    )
    assert (parsed.attempt, parsed.storage, parsed.spec_sha256) == (2, "hdfs://nn/weiflow", "ab" * 32)
    assert parsed.param == ["day=2026-11-20", "where=a = b AND c"]


# --- the owned process, with stand-in commands --------------------------------------------------


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def group(pgid: int) -> dict[int, str]:
    """The live processes of a process group, with their command lines (Linux /proc; zombies left out)."""
    members: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                members[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked
    return members


def gone(pgid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while group(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_marked_lines_become_events_the_rest_passes_through() -> None:
    event = Event(EventKind.MODULE_STARTED, "r1", "p", node="n", module="m", attempt=1)
    code = f"""
        import sys
        print("driver says hi")
        print({EVENT_PREFIX + event.to_json()!r})
        print("{EVENT_PREFIX}not json")
        print("line 1\\n\\tat org.apache.spark.deploy.SparkSubmit.main(SparkSubmit.scala:1180)", file=sys.stderr)
        print("line 2", file=sys.stderr)
        sys.exit(3)
    """
    events: list[Event] = []
    out, err = io.StringIO(), io.StringIO()
    app = SubmittedApplication(python(code), env=dict(os.environ), on_event=events.append, stdout=out, stderr=err)
    app.start()
    assert app.wait() == 3
    assert events == [event]
    assert out.getvalue() == f"driver says hi\n{EVENT_PREFIX}not json\n"
    assert "SparkSubmit.scala" in err.getvalue()  # everything passes through
    assert app.error_tail() == "line 1\nline 2"  # the tail for error messages leaves JVM frames out


def test_terminate_stops_the_whole_group_even_what_ignores_sigterm() -> None:
    # The leader exits on SIGTERM; a grandchild ignoring it (a stuck JVM child) is killed after the grace period.
    code = """
        import subprocess, sys, time
        stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
        child = subprocess.Popen([sys.executable, "-c", stubborn + "time.sleep(600)"], stdout=sys.stdout)
        time.sleep(600)
    """
    out = io.StringIO()
    app = SubmittedApplication(python(code), env=dict(os.environ), on_event=print, stdout=out, grace_s=1.0)
    app.start()
    deadline = time.monotonic() + 30
    while "ready" not in out.getvalue():
        assert time.monotonic() < deadline, "the stand-in never started"
        time.sleep(0.05)
    assert app.pid is not None
    started = time.monotonic()
    app.terminate()
    assert app.wait() == -signal.SIGTERM
    assert gone(app.pid, within_s=10)
    assert 0.9 < time.monotonic() - started < 8  # SIGKILL came after the grace period, not before
    app.stop()  # nothing left to stop: returns at once
    assert app.cancelled


@pytest.mark.reliability(
    area="kill",
    component="Spark node through spark-submit",
    fault="its run-node SIGKILLed (no handler runs)",
    proves="the spark-submit process it started is gone within 10 s (PDEATHSIG): no orphaned application",
)
def test_spark_submit_dies_with_its_parent(tmp_path: Path) -> None:
    """A run-node killed with SIGKILL (no handler runs) takes its spark-submit with it."""
    parent_code = """
        import os, sys, time
        from weiflow.engines.spark.submit import SubmittedApplication
        app = SubmittedApplication(["sleep", "600"], env=dict(os.environ), on_event=print)
        app.start()
        print(app.pid, flush=True)
        time.sleep(600)
    """
    parent = subprocess.Popen(python(parent_code), stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        os.kill(child, 0)  # running
        parent.kill()
        parent.wait(10)
        assert gone(child, within_s=10)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


# --- the executor on the submit path, with a stand-in spark-submit ------------------------------

FAKE_CLUSTER = """\
#!{python}
# Stands in for spark-submit running the node on a cluster: records its arguments and
# commits the node's output the way the real driver would, printing nothing WeiFlow reads.
import json, os, pathlib, sys
pathlib.Path(os.environ["FAKE_ARGV"]).write_text(json.dumps(sys.argv[1:]))
if os.environ.get("FAKE_FAIL"):
    print("Exception in thread main: org.apache.hadoop.yarn.exceptions.YarnException: queue ranking is full",
          file=sys.stderr)
    sys.exit(1)
out = pathlib.Path(os.environ["FAKE_OUT"])
out.mkdir(parents=True)
(out / "part-00000.parquet").write_bytes(b"x" * 10)
(out / "_SUCCESS").write_text(json.dumps({{"run_id": "r1", "rows": 7}}))
"""


@pytest.fixture
def fake_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    script = tmp_path / "spark-submit"
    script.write_text(FAKE_CLUSTER.format(python=sys.executable))
    script.chmod(0o755)
    monkeypatch.setattr(submit, "spark_submit_path", lambda: script)
    monkeypatch.setenv("FAKE_ARGV", str(tmp_path / "argv.json"))
    return tmp_path / "argv.json"


CLUSTER_SPEC = """
<pipeline xmlns="urn:weiflow:pipeline:1" name="sub">
  <params><param name="min" type="int" default="1"/></params>
  <datasets>
    <dataset name="raw" uri="file://{raw}" format="parquet" external="true"/>
    <dataset name="out" uri="${{storage}}/sub/out/${{ds}}" format="parquet"/>
  </datasets>
  <node id="gen" engine="spark">
    <conf name="spark.master" value="yarn"/>
    <conf name="spark.submit.deployMode" value="cluster"/>
    <conf name="spark.yarn.queue" value="ranking"/>
    <module id="read" type="read" dataset="raw"/>
    <module id="keep" type="filter" input="read" condition="k &gt;= ${{min}}"/>
    <module id="write" type="write" input="keep" dataset="out"/>
  </node>
</pipeline>
"""


def context(spec: Path, **params: str) -> tuple[RunContext, MemoryTracker]:
    tracker = MemoryTracker()
    ctx = RunContext.create(
        compile_file(spec),
        settings=load_settings(),
        tracker=tracker,
        run_id="r1",
        ds=date(2026, 11, 20),
        overrides=params,
    )
    return ctx, tracker


def test_cluster_mode_ships_the_spec_and_reports_outputs_from_their_markers(
    fake_cluster: Path, make_spec: Callable[..., Path], isolated_var: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = isolated_var / "storage" / "sub" / "out" / "2026-11-20"
    monkeypatch.setenv("FAKE_OUT", str(out))
    spec = make_spec(CLUSTER_SPEC.format(raw=isolated_var.parent), name="feed.xml")
    ctx, tracker = context(spec, min="3")
    run_node(ctx, "gen")
    argv = json.loads(fake_cluster.read_text())
    assert argv[:6] == ["--master", "yarn", "--deploy-mode", "cluster", "--name", "weiflow:sub:gen:r1"]
    confs = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--conf"]
    assert "spark.yarn.queue=ranking" in confs and "spark.ui.enabled=false" in confs
    assert not any(c.startswith("spark.driver.host=") for c in confs)  # executors must reach a cluster driver
    driver = argv.index(DRIVER)
    assert argv[driver - 2 : driver] == ["--files", str(spec)]
    assert argv[driver + 1 : driver + 5] == ["feed.xml", "gen", "r1", "2026-11-20"]  # the shipped copy, by name
    assert argv[driver + 5 :] == [
        "--attempt",
        "1",
        "--storage",
        f"file://{isolated_var / 'storage'}",
        "--spec-sha256",
        ctx.dag.spec.sha256,
        "--param",
        "min=3",
    ]
    written = [e for e in tracker.events if e.kind is EventKind.DATASET_WRITTEN]
    assert len(written) == 1 and written[0].module == "write" and written[0].dataset is not None
    assert (written[0].dataset.rows, written[0].dataset.files, written[0].dataset.size_bytes) == (7, 1, 10)
    assert tracker.kinds()[-1] == "node.succeeded"


def test_a_failed_submission_reports_the_end_of_its_output(
    fake_cluster: Path, make_spec: Callable[..., Path], isolated_var: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FAIL", "1")
    ctx, tracker = context(make_spec(CLUSTER_SPEC.format(raw=isolated_var.parent)))
    with pytest.raises(
        WeiflowError, match=r"node 'gen': spark-submit exited with status 1; .*\n.*queue ranking is full"
    ):
        run_node(ctx, "gen")
    assert tracker.kinds() == ["node.started", "node.failed"]


# --- real spark-submit, client mode against local[2] --------------------------------------------

LOCAL_SPEC = """
<pipeline xmlns="urn:weiflow:pipeline:1" name="sub">
  <params><param name="min" type="int" default="1"/></params>
  <datasets>
    <dataset name="raw" uri="file://{raw}" format="parquet" external="true"/>
    <dataset name="out" uri="${{storage}}/sub/out/${{ds}}" format="parquet"/>
  </datasets>
  <node id="gen" engine="spark">
    <conf name="spark.sql.shuffle.partitions" value="2"/>
    <module id="read" type="read" dataset="raw"/>
    <module id="keep" type="{keep_type}" input="read" {keep_attrs}/>
    <module id="write" type="write" input="keep" dataset="out" files="1"/>
  </node>
</pipeline>
"""


@pytest.fixture
def raw_parquet(tmp_path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "raw"
    path.mkdir()
    pq.write_table(pa.table({"k": list(range(10)), "city": ["beijing", "shanghai"] * 5}), path / "part-0.parquet")
    return path


@pytest.fixture
def submit_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEIFLOW_SPARK_SUBMIT", "1")
    monkeypatch.setenv("WEIFLOW_SPARK_MASTER", "local[2]")


@pytest.mark.slow
@pytest.mark.integration
def test_run_node_through_spark_submit_commits_and_relays_events(
    raw_parquet: Path, tmp_path: Path, submit_env: None
) -> None:
    spec = tmp_path / "sub.xml"
    spec.write_text(LOCAL_SPEC.format(raw=raw_parquet, keep_type="filter", keep_attrs='condition="k &gt;= ${min}"'))
    command = [sys.executable, "-m", "weiflow", "run-node", str(spec), "--node", "gen", "--run-id", "r1"]
    result = subprocess.run(
        [*command, "--ds", "2026-11-20", "--param", "min=4"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # The application really was spark-submit's: its driver logs at INFO, an in-process one at WARN.
    assert "SparkContext: Submitted application: weiflow:sub:gen:r1" in result.stderr
    out = tmp_path / "var" / "storage" / "sub" / "out" / "2026-11-20"
    assert json.loads((out / SUCCESS_MARKER).read_text())["rows"] == 6
    events = read_events(tmp_path / "var" / "runs" / "sub" / "r1.jsonl")
    assert [(str(e.kind), e.module) for e in events] == [
        ("run.started", None),  # run-node announces the whole run before its node
        ("node.started", None),
        ("module.started", "read"),
        ("module.succeeded", "read"),
        ("module.started", "keep"),
        ("module.succeeded", "keep"),
        ("module.started", "write"),
        ("dataset.written", "write"),
        ("module.succeeded", "write"),
        ("node.succeeded", None),
    ]
    written = next(e.dataset for e in events if e.dataset is not None)
    assert (written.name, written.rows, written.files) == ("out", 6, 1)
    assert written.schema == {"k": "bigint", "city": "string"}


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.reliability(
    area="kill",
    component="Spark node through spark-submit",
    fault="cancelled mid-write: SIGTERM to the spark-submit process group (run-node's own SIGTERM handling)",
    proves="the JVM and the Python driver gone within 10 s, no SIGKILL needed; node.failed 'cancelled'; the "
    "dataset not complete",
)
def test_cancel_stops_the_spark_submit_process_group(
    raw_parquet: Path, make_spec: Callable[..., Path], isolated_var: Path, submit_env: None
) -> None:
    slow = 'query="SELECT r.id, uuid() AS u FROM read CROSS JOIN range(500000000) r"'
    ctx, tracker = context(make_spec(LOCAL_SPEC.format(raw=raw_parquet, keep_type="sql", keep_attrs=slow)))
    executors: list[Executor] = []
    failure: list[BaseException] = []

    def node() -> None:
        try:
            run_node(ctx, "gen", on_executor=executors.append)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=node)
    thread.start()
    deadline = time.monotonic() + 120
    while not any(e.kind is EventKind.MODULE_STARTED and e.module == "write" for e in tracker.events):
        assert thread.is_alive(), failure
        assert time.monotonic() < deadline, "the submitted node never reached its write"
        time.sleep(0.1)
    executor = executors[0]
    assert isinstance(executor, SparkExecutor) and executor._app is not None
    pgid = executor._app.pid
    assert pgid is not None
    processes = group(pgid)
    assert any("SparkSubmit" in cmd for cmd in processes.values())  # the JVM
    assert any("driver.py" in cmd for cmd in processes.values())  # the Python driver
    time.sleep(2)  # Spark tasks are running now
    cancelled = time.monotonic()
    executor.cancel()
    thread.join(60)
    assert not thread.is_alive()
    assert time.monotonic() - cancelled < 10  # the JVM and the driver stop on SIGTERM; no SIGKILL was needed
    assert len(failure) == 1 and "cancelled" in str(failure[0])
    assert gone(pgid, within_s=5)
    assert not is_complete(f"file://{isolated_var / 'storage' / 'sub' / 'out' / '2026-11-20'}")
    assert tracker.kinds()[-1] == "node.failed"
