"""The local runner end to end with the python engine: order, events, retries, failures, atomic outputs."""

from __future__ import annotations

import json
import re
import textwrap
import uuid
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pytest

from weiflow.config import load_settings
from weiflow.dag import compile_file
from weiflow.errors import ConfigError, DatasetError, EngineNotAvailable, ModuleFailed, UserCodeError
from weiflow.registry import default_registry
from weiflow.runtime import NodeState, RunContext, run_node, run_pipeline
from weiflow.storage import SUCCESS_MARKER
from weiflow.tracking import EventKind, MemoryTracker

STEPS = """
import json, os
from pathlib import Path

def produce(step):
    with step.write("numbers") as out:
        (out.path / "data.json").write_text(json.dumps(list(range(int(step.attrs.get("n", 5))))))
        out.rows = int(step.attrs.get("n", 5))
    return "produced"

def consume(step):
    return sum(json.loads((step.read("numbers") / "data.json").read_text()))

def double(step):
    return step.input * 2

def boom(step):
    raise RuntimeError("the model diverged")

def half_write(step):
    with step.write("numbers") as out:
        (out.path / "data.json").write_text("[1, 2")
        raise OSError("disk full")

def flaky(step):
    marker = Path(step.attrs["marker"])
    if not marker.exists():
        marker.write_text("failed once")
        raise RuntimeError("transient")
    return "ok"

def record_params(step):
    Path(step.attrs["out"]).write_text(json.dumps({k: str(v) for k, v in step.params.items()}))
"""


@pytest.fixture
def steps_module(tmp_path: Path) -> str:
    """A user module beside the spec, under a unique name (sys.modules caches by name)."""
    name = f"steps_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(STEPS)
    return name


def pipeline(steps: str, nodes: str, *, retries: int = 0, params: str = "") -> str:
    return textwrap.dedent(f"""\
        <pipeline xmlns="urn:weiflow:pipeline:1" name="p" retries="{retries}">
          <params>{params}</params>
          <datasets>
            <dataset name="numbers" uri="${{storage}}/numbers/${{ds}}" format="json"/>
          </datasets>
        {nodes.replace("STEPS", steps)}
        </pipeline>
        """)


def make_run(path: Path, tracker: MemoryTracker, **kwargs: object) -> RunContext:
    return RunContext.create(compile_file(path), settings=load_settings(), tracker=tracker, **kwargs)  # type: ignore[arg-type]


PRODUCE_CONSUME = """
  <node id="make" engine="python">
    <module id="produce" type="call" callable="STEPS:produce" writes="numbers" n="10"/>
  </node>
  <node id="use" engine="python">
    <module id="sum" type="call" callable="STEPS:consume" reads="numbers"/>
    <module id="twice" type="call" callable="STEPS:double" input="sum"/>
  </node>
"""


def test_runs_nodes_in_order_and_reports_every_event(
    make_spec: Callable[..., Path], steps_module: str, isolated_var: Path
) -> None:
    tracker = MemoryTracker()
    run = make_run(make_spec(pipeline(steps_module, PRODUCE_CONSUME)), tracker, run_id="r1", ds=date(2026, 11, 2))
    result = run_pipeline(run)
    assert result.succeeded
    assert result.states == {"make": NodeState.SUCCEEDED, "use": NodeState.SUCCEEDED}
    assert tracker.kinds() == [
        "run.started",
        "node.started",
        "module.started",
        "dataset.written",
        "module.succeeded",
        "node.succeeded",
        "node.started",
        "module.started",
        "module.succeeded",
        "module.started",
        "module.succeeded",
        "node.succeeded",
        "run.succeeded",
    ]
    written = next(e for e in tracker.events if e.kind is EventKind.DATASET_WRITTEN)
    assert written.dataset is not None
    assert written.dataset.rows == 10 and written.dataset.files == 1
    assert written.dataset.size_bytes == len(json.dumps(list(range(10))))
    out = isolated_var / "storage" / "numbers" / "2026-11-02"
    assert written.dataset.uri == f"file://{out}"
    assert json.loads((out / SUCCESS_MARKER).read_text())["run_id"] == "r1"


def test_module_outputs_flow_in_memory_within_a_node(make_spec: Callable[..., Path], steps_module: str) -> None:
    seen: dict[str, object] = {}

    tracker = MemoryTracker()
    run = make_run(make_spec(pipeline(steps_module, PRODUCE_CONSUME)), tracker)
    run_pipeline(run, on_executor=lambda executor: seen.setdefault("executor", executor))
    ends = [e for e in tracker.events if e.kind is EventKind.MODULE_SUCCEEDED]
    assert [e.module for e in ends] == ["produce", "sum", "twice"]
    assert all(e.duration_s is not None and e.duration_s >= 0 for e in ends)
    assert type(seen["executor"]).__name__ == "PythonExecutor"


def test_user_error_fails_the_node_and_skips_downstream(make_spec: Callable[..., Path], steps_module: str) -> None:
    nodes = """
  <node id="make" engine="python">
    <module id="produce" type="call" callable="STEPS:boom" writes="numbers"/>
  </node>
  <node id="use" engine="python">
    <module id="sum" type="call" callable="STEPS:consume" reads="numbers"/>
  </node>
  <node id="other" engine="python">
    <module id="x" type="call" callable="STEPS:double" />
  </node>
"""
    tracker = MemoryTracker()
    result = run_pipeline(make_run(make_spec(pipeline(steps_module, nodes)), tracker))
    assert result.states["make"] is NodeState.FAILED
    assert result.states["use"] is NodeState.SKIPPED
    # An independent branch still runs (and fails on its own: double has no input).
    assert result.states["other"] is NodeState.FAILED
    assert f"{steps_module}:boom raised RuntimeError: the model diverged" in result.errors["make"]
    failed = next(e for e in tracker.events if e.kind is EventKind.MODULE_FAILED)
    assert (failed.node, failed.module) == ("make", "produce") and "the model diverged" in (failed.error or "")
    assert tracker.kinds()[-1] == "run.failed"


def test_failed_write_leaves_nothing_that_looks_complete(
    make_spec: Callable[..., Path], steps_module: str, isolated_var: Path
) -> None:
    nodes = """
  <node id="make" engine="python">
    <module id="produce" type="call" callable="STEPS:half_write" writes="numbers"/>
  </node>
"""
    result = run_pipeline(make_run(make_spec(pipeline(steps_module, nodes)), MemoryTracker(), ds=date(2026, 1, 1)))
    assert not result.succeeded
    parent = isolated_var / "storage" / "numbers"
    assert not (parent / "2026-01-01").exists()
    assert list(parent.iterdir()) == []  # the staging directory is gone too


def test_rerun_of_the_same_run_replaces_the_output(
    make_spec: Callable[..., Path], steps_module: str, isolated_var: Path
) -> None:
    path = make_spec(pipeline(steps_module, PRODUCE_CONSUME))
    for _ in range(2):
        assert run_pipeline(make_run(path, MemoryTracker(), run_id="same", ds=date(2026, 1, 1))).succeeded
    out = isolated_var / "storage" / "numbers" / "2026-01-01"
    assert sorted(p.name for p in out.iterdir()) == [SUCCESS_MARKER, "data.json"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["2026-01-01"]


def test_retries_rerun_a_failed_node(make_spec: Callable[..., Path], steps_module: str, tmp_path: Path) -> None:
    marker = tmp_path / "flaky-marker"
    nodes = f"""
  <node id="n" engine="python">
    <module id="f" type="call" callable="STEPS:flaky" marker="{marker}"/>
  </node>
"""
    tracker = MemoryTracker()
    result = run_pipeline(make_run(make_spec(pipeline(steps_module, nodes, retries=1)), tracker))
    assert result.succeeded
    attempts = [(str(e.kind), e.attempt) for e in tracker.events if e.kind.startswith("node.")]
    assert attempts == [("node.started", 1), ("node.failed", 1), ("node.started", 2), ("node.succeeded", 2)]


def test_no_retry_without_retries(make_spec: Callable[..., Path], steps_module: str, tmp_path: Path) -> None:
    nodes = f"""
  <node id="n" engine="python">
    <module id="f" type="call" callable="STEPS:flaky" marker="{tmp_path / "m"}"/>
  </node>
"""
    tracker = MemoryTracker()
    assert not run_pipeline(make_run(make_spec(pipeline(steps_module, nodes)), tracker)).succeeded
    assert tracker.kinds().count("node.started") == 1


def test_run_node_refuses_missing_input(make_spec: Callable[..., Path], steps_module: str) -> None:
    run = make_run(make_spec(pipeline(steps_module, PRODUCE_CONSUME)), MemoryTracker())
    with pytest.raises(DatasetError, match=r"input dataset 'numbers' .* run node 'make' of this run first"):
        run_node(run, "use")
    run_node(run, "make")
    run_node(run, "use")  # now it is there


def test_a_node_whose_engine_cannot_run_fails_clearly_and_is_not_retried(
    make_spec: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # An engine declared without an executor (as deploy was before it ran): its nodes validate only.
    deploy = default_registry().engines["deploy"]
    monkeypatch.setattr(deploy, "executor", None)
    monkeypatch.setattr(deploy, "unavailable", "engine 'deploy' is declared but this WeiFlow build cannot run it yet")
    path = make_spec("""
  <datasets>
    <dataset name="m" uri="file:///models/m" format="savedmodel" external="true"/>
    <dataset name="report" uri="${storage}/report" format="json"/>
  </datasets>
  <node id="ship" engine="deploy" retries="2"><module id="pub" type="publish" dataset="m" model-name="x"/></node>
  <node id="tell" engine="python" depends="ship">
    <module id="f" type="call" callable="json:dumps" writes="report"/>
  </node>
""")
    tracker = MemoryTracker()
    run = make_run(path, tracker)
    result = run_pipeline(run)
    assert result.states == {"ship": "failed", "tell": "skipped"}
    assert "engine 'deploy' is declared" in result.errors["ship"]
    assert tracker.kinds().count("node.started") == 1  # not retried, although the node says retries="2"
    with pytest.raises(EngineNotAvailable, match="cannot run it yet"):
        run_node(run, "ship")


def test_missing_callable_is_a_user_code_error(make_spec: Callable[..., Path], steps_module: str) -> None:
    nodes = """
  <node id="n" engine="python"><module id="f" type="call" callable="STEPS:no_such_function"/></node>
"""
    run = make_run(make_spec(pipeline(steps_module, nodes)), MemoryTracker())
    with pytest.raises(UserCodeError, match=r"cannot load callable '.*:no_such_function' \(.*spec.xml:\d+\)"):
        run_node(run, "n")


def test_params_are_typed_and_overridable(make_spec: Callable[..., Path], steps_module: str, tmp_path: Path) -> None:
    out = tmp_path / "params.json"
    params = """
    <param name="day" type="date" default="${ds}"/>
    <param name="rate" type="float" default="0.5"/>
    <param name="path" type="string" default="${storage}/x/${day}"/>
    <param name="flag" type="bool" default="false"/>"""
    nodes = f"""
  <node id="n" engine="python"><module id="f" type="call" callable="STEPS:record_params" out="{out}"/></node>
"""
    path = make_spec(pipeline(steps_module, nodes, params=params))
    run = make_run(path, MemoryTracker(), ds=date(2026, 3, 4), overrides={"rate": "0.25", "flag": "yes"})
    assert run.params["rate"] == 0.25 and run.params["flag"] is True and run.params["day"] == date(2026, 3, 4)
    assert run_pipeline(run).succeeded
    recorded = json.loads(out.read_text())
    assert recorded["path"] == f"{load_settings().storage}/x/2026-03-04"

    with pytest.raises(ConfigError, match=r"param 'rate' \(given value\): expected a number, got 'fast'"):
        make_run(path, MemoryTracker(), overrides={"rate": "fast"})
    with pytest.raises(ConfigError, match=r"no param 'rte' \(did you mean 'rate'\?\)"):
        make_run(path, MemoryTracker(), overrides={"rte": "1"})


def test_param_without_default_must_be_given(make_spec: Callable[..., Path], steps_module: str) -> None:
    nodes = """<node id="n" engine="python"><module id="f" type="call" callable="STEPS:double"/></node>"""
    path = make_spec(pipeline(steps_module, nodes, params='<param name="table" type="string"/>'))
    with pytest.raises(ConfigError, match=r"spec.xml:\d+:\d+: param 'table' has no default .* --param table="):
        make_run(path, MemoryTracker())
    assert make_run(path, MemoryTracker(), overrides={"table": "t1"}).params["table"] == "t1"


MORE_STEPS = """
import json
from pathlib import Path

def declare_but_skip(step):
    return "forgot to write"

def write_outside(step):
    with step.write("numbers") as out:
        (out.path / "x").write_text("1")
    step.read("numbers")  # declared in writes=, not reads=: WeiFlow's own error, not the user's

def use_helper(step):
    import helper_for_steps  # a module beside the spec, imported while the step runs
    return helper_for_steps.VALUE

def read_back(step):
    return json.loads((step.read("numbers") / "data.json").read_text())
"""


@pytest.fixture
def more_steps(tmp_path: Path) -> str:
    name = f"more_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(STEPS + MORE_STEPS)
    (tmp_path / "helper_for_steps.py").write_text("VALUE = 42\n")
    return name


def test_a_declared_write_that_never_happens_fails_the_module(make_spec: Callable[..., Path], more_steps: str) -> None:
    nodes = """
  <node id="make" engine="python">
    <module id="produce" type="call" callable="STEPS:declare_but_skip" writes="numbers"/>
  </node>
"""
    result = run_pipeline(make_run(make_spec(pipeline(more_steps, nodes)), MemoryTracker()))
    assert result.states["make"] is NodeState.FAILED
    assert "declares writes of numbers but committed nothing there" in result.errors["make"]


def test_weiflow_errors_inside_a_step_are_not_blamed_on_user_code(
    make_spec: Callable[..., Path], more_steps: str
) -> None:
    nodes = """
  <node id="make" engine="python">
    <module id="produce" type="call" callable="STEPS:write_outside" writes="numbers"/>
  </node>
"""
    run = make_run(make_spec(pipeline(more_steps, nodes)), MemoryTracker())
    with pytest.raises(ModuleFailed) as caught:
        run_node(run, "make")
    assert not isinstance(caught.value, UserCodeError)
    assert "reads dataset 'numbers' without declaring it" in str(caught.value)


def test_steps_import_modules_beside_the_spec_while_running(make_spec: Callable[..., Path], more_steps: str) -> None:
    nodes = """<node id="n" engine="python"><module id="m" type="call" callable="STEPS:use_helper"/></node>"""
    tracker = MemoryTracker()
    assert run_pipeline(make_run(make_spec(pipeline(more_steps, nodes)), tracker)).succeeded


def test_a_reader_runs_after_the_writer_in_the_same_node(make_spec: Callable[..., Path], more_steps: str) -> None:
    # The reader comes first in the file; the dataset edge orders it after the writer.
    nodes = """
  <node id="n" engine="python">
    <module id="reader" type="call" callable="STEPS:read_back" reads="numbers"/>
    <module id="writer" type="call" callable="STEPS:produce" writes="numbers" n="3"/>
  </node>
"""
    dag = compile_file(make_spec(pipeline(more_steps, nodes)))
    assert [m.id for m in dag.node("n").modules] == ["writer", "reader"]
    tracker = MemoryTracker()
    assert run_pipeline(RunContext.create(dag, settings=load_settings(), tracker=tracker)).succeeded


def test_a_param_cannot_move_a_dataset_out_of_storage(make_spec: Callable[..., Path], tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "file.txt").write_text("precious")
    spec = """
  <params><param name="name" type="string" default="ok"/></params>
  <datasets><dataset name="out" uri="${storage}/p/${name}" format="json"/></datasets>
  <node id="n" engine="python"><module id="m" type="call" callable="x:y" writes="out"/></node>
"""
    dag = compile_file(make_spec(spec))
    for bad, message in (
        ("../../../victim", "has a '.' or '..' segment"),
        ("x::memory://y", "chains filesystems"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            RunContext.create(dag, settings=load_settings(), tracker=MemoryTracker(), overrides={"name": bad})
    assert (victim / "file.txt").read_text() == "precious"


@pytest.mark.parametrize("run_id", [".", "..", "a/../b", "/abs", "-rf"])
def test_run_ids_that_could_name_a_path_are_refused(run_id: str, make_spec: Callable[..., Path]) -> None:
    dag = compile_file(make_spec('<node id="n" engine="python"><module id="m" type="call" callable="x:y"/></node>'))
    with pytest.raises(ConfigError, match=r"run id .* is not valid"):
        RunContext.create(dag, settings=load_settings(), tracker=MemoryTracker(), run_id=run_id)
