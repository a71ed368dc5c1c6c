"""The `weiflow` command as users run it: a real subprocess, real files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, needs_tools
from weiflow.tracking import read_events

pytestmark = pytest.mark.integration


def weiflow(*args: str, cwd: Path | None = None, check: bool = False) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "weiflow", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_validate_examples_is_clean() -> None:
    result = weiflow("validate", str(EXAMPLES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""
    assert "3 file(s) checked: 0 error(s), 0 warning(s)" in result.stderr


def test_validate_reports_every_file_and_fails(tmp_path: Path) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text((EXAMPLES / "feed_ctr.xml").read_text().replace('dataset="events"', 'dataset="event"'))
    result = weiflow("validate", str(EXAMPLES / "user_activity_report.xml"), str(bad))
    assert result.returncode == 1
    line = next(n for n, text in enumerate(bad.read_text().splitlines(), 1) if 'dataset="event"' in text)
    assert f"{bad}:{line}:" in result.stdout and "error: module 'read': unknown dataset 'event'" in result.stdout
    assert "hint: did you mean 'events'?" in result.stdout

    as_json = weiflow("validate", "--format", "json", str(bad))
    [problem] = json.loads(as_json.stdout)
    assert problem["line"] == line and problem["severity"] == "error"


def test_validate_missing_file(tmp_path: Path) -> None:
    result = weiflow("validate", str(tmp_path / "nope.xml"))
    assert result.returncode == 1
    assert f"{tmp_path / 'nope.xml'}:1:1: error: cannot read spec" in result.stdout


def test_compile_writes_json_atomically(tmp_path: Path) -> None:
    out = tmp_path / "out" / "dag.json"
    weiflow("compile", str(EXAMPLES / "feed_ctr.xml"), "-o", str(out), check=True)
    document = json.loads(out.read_text())
    assert document["schema"] == "weiflow.dag/1"
    assert [n["id"] for n in document["nodes"]] == ["features", "train", "deploy"]
    assert list(out.parent.iterdir()) == [out]


def test_graph_text_and_dot() -> None:
    text = weiflow("graph", str(EXAMPLES / "feed_ctr.xml"), check=True).stdout
    assert text.splitlines()[0] == "feed_ctr  (3 nodes)"
    assert "├── train [tensorflow]  <- features via dataset:samples, features via dataset:holdout" in text
    dot = weiflow("graph", "-f", "dot", str(EXAMPLES / "feed_ctr.xml"), check=True).stdout
    assert dot.startswith("digraph feed_ctr {")
    assert "subgraph cluster_features" in dot and '"features/w_train" -> "train/fit"' in dot


@needs_tools("dot")
def test_graph_svg(tmp_path: Path) -> None:
    out = tmp_path / "dag.svg"
    weiflow("graph", str(EXAMPLES / "feed_ctr.xml"), "-o", str(out), check=True)
    assert out.read_text().lstrip().startswith("<?xml") and "<svg" in out.read_text()


def test_graph_svg_falls_back_to_text_without_graphviz(tmp_path: Path) -> None:
    no_graphviz = {**os.environ, "PATH": str(tmp_path)}  # `dot` cannot be found
    result = subprocess.run(
        [sys.executable, "-m", "weiflow", "graph", str(EXAMPLES / "feed_ctr.xml"), "-o", str(tmp_path / "dag.svg")],
        env=no_graphviz,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "drawing a text tree" in result.stderr
    assert (tmp_path / "dag.txt").read_text().startswith("feed_ctr  (3 nodes)")


def test_run_demo_pipeline(tmp_path: Path) -> None:
    result = weiflow(
        "run",
        str(EXAMPLES / "user_activity_report.xml"),
        "--ds",
        "2026-11-20",
        "--run-id",
        "demo1",
        "--param",
        "users=50",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    log = tmp_path / "var" / "runs" / "user_activity_report" / "demo1.jsonl"
    assert f"run log: {log}" in result.stderr
    events = read_events(log)
    assert events[0].kind == "run.started" and events[-1].kind == "run.succeeded"
    report = tmp_path / "var" / "storage" / "user_activity" / "report" / "2026-11-20" / "summary.json"
    assert json.loads(report.read_text())["day"] == "2026-11-20"


def test_run_failure_exit_code_and_message(tmp_path: Path) -> None:
    result = weiflow("run", str(EXAMPLES / "feed_ctr.xml"), cwd=tmp_path)
    assert result.returncode == 1
    assert "features                 failed" in result.stderr
    # The external input is not on this machine: the node says so before starting Spark.
    assert "node 'features': external dataset 'events' not found at " in result.stderr
    assert "/feed/impressions/" in result.stderr


def test_run_node_chain_like_airflow(tmp_path: Path) -> None:
    spec = str(EXAMPLES / "user_activity_report.xml")
    common = ("--run-id", "manual__2026-11-20T00:00:00+00:00", "--ds", "2026-11-20")
    early = weiflow("run-node", spec, "--node", "stats", *common, cwd=tmp_path)
    assert early.returncode == 1 and "run node 'ingest' of this run first" in early.stderr
    for node in ("ingest", "stats", "report"):
        result = weiflow("run-node", spec, "--node", node, *common, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    unknown = weiflow("run-node", spec, "--node", "stat", *common, cwd=tmp_path)
    assert unknown.returncode == 2 and "has no node 'stat' did you mean 'stats'?" in unknown.stderr


def test_run_node_alone_announces_the_whole_run_with_every_dataset(tmp_path: Path) -> None:
    spec = str(EXAMPLES / "user_activity_report.xml")
    result = weiflow("run-node", spec, "--node", "ingest", "--run-id", "af1", "--ds", "2026-11-20", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    events = read_events(tmp_path / "var" / "runs" / "user_activity_report" / "af1.jsonl")
    assert [e.kind for e in events[:2]] == ["run.started", "node.started"]
    # Also the datasets only the later nodes read or write: the center protects them from the first node on.
    storage = f"file://{tmp_path / 'var' / 'storage' / 'user_activity'}"
    assert events[0].detail["uses"] == [f"{storage}/{name}/2026-11-20" for name in ("events", "report", "stats")]
    assert events[0].detail["upstream"] == {"ingest": [], "stats": ["ingest"], "report": ["stats"]}
    assert events[0].attempt is None and "queued" not in events[0].detail  # a node never claims the run's attempt


def test_bad_param_is_a_usage_error(tmp_path: Path) -> None:
    result = weiflow("run", str(EXAMPLES / "user_activity_report.xml"), "--param", "users=many", cwd=tmp_path)
    assert result.returncode == 2
    assert "param 'users' (given value): expected a whole number, got 'many'" in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_cancels_a_running_node(tmp_path: Path, signum: int) -> None:
    (tmp_path / "slow_steps.py").write_text(
        "import time\n"
        "def slow(step):\n"
        "    with step.write('out') as out:\n"
        "        (out.path / 'part').write_text('x')\n"
        "        print('started', flush=True)\n"
        "        time.sleep(60)\n"
    )
    spec = tmp_path / "slow.xml"
    spec.write_text(
        '<pipeline xmlns="urn:weiflow:pipeline:1" name="slow">'
        '<datasets><dataset name="out" uri="${storage}/out" format="files"/></datasets>'
        '<node id="n" engine="python"><module id="m" type="call" callable="slow_steps:slow" writes="out"/></node>'
        "</pipeline>"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "weiflow", "run-node", str(spec), "--node", "n", "--run-id", "r"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "started"
    started = time.monotonic()
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=10)
    assert time.monotonic() - started < 5
    assert process.returncode == 130, stderr
    events = read_events(tmp_path / "var" / "runs" / "slow" / "r.jsonl")
    assert [(e.kind, e.error) for e in events if e.kind == "node.failed"] == [("node.failed", "cancelled")]
    storage = tmp_path / "var" / "storage"
    assert not (storage / "out").exists() and list(storage.iterdir()) == []  # nothing half-written is left


def test_modules_lists_the_registry() -> None:
    out = weiflow("modules", "tensorflow", check=True).stdout
    assert out.startswith("tensorflow  ")
    assert "batch-size" in out and "whole number (>= 1)" in out
    assert weiflow("modules", "deploy", check=True).stdout.startswith("deploy  (runs here)")


def test_config_file_and_environment(tmp_path: Path) -> None:
    (tmp_path / "weiflow.toml").write_text('var_dir = "state"\nstorage = "lake"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIFLOW_")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "weiflow",
            "run",
            str(EXAMPLES / "user_activity_report.xml"),
            "--run-id",
            "c1",
            "--ds",
            "2026-01-01",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "state" / "runs" / "user_activity_report" / "c1.jsonl").exists()
    assert (tmp_path / "lake" / "user_activity" / "events" / "2026-01-01" / "_SUCCESS").exists()
    (tmp_path / "weiflow.toml").write_text('var_dri = "x"\n')
    result = subprocess.run(
        [sys.executable, "-m", "weiflow", "validate", str(EXAMPLES)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "weiflow.toml: unknown key 'var_dri' (did you mean 'var_dir'?)" in result.stderr


def test_validate_shows_warnings_of_a_valid_spec(tmp_path: Path) -> None:
    spec = tmp_path / "warn.xml"
    spec.write_text(
        '<pipeline xmlns="urn:weiflow:pipeline:1" name="w">\n'
        '  <datasets><dataset name="unused" uri="${storage}/u" format="json"/></datasets>\n'
        '  <node id="n" engine="python"><module id="m" type="call" callable="x:y"/></node>\n'
        "</pipeline>\n"
    )
    result = weiflow("validate", str(spec))
    assert result.returncode == 0
    assert f"{spec}:2:22: warning: dataset 'unused' is never used" in result.stdout
    assert "0 error(s), 1 warning(s)" in result.stderr


def test_unwritable_output_is_a_clear_error(tmp_path: Path) -> None:
    result = weiflow("compile", str(EXAMPLES / "feed_ctr.xml"), "-o", str(tmp_path))  # a directory
    assert result.returncode == 2
    assert f"weiflow: cannot write {tmp_path}" in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_modules_of_an_unknown_engine() -> None:
    result = weiflow("modules", "sprak")
    assert result.returncode == 2 and "no engine 'sprak' did you mean 'spark'?" in result.stderr
