"""TensorFlow nodes end to end: PS training to a known AUC, the launcher's lifecycle, resume, export.

Every test runs real processes: the PS and worker servers, the chief, and (for the lifecycle
tests) ``weiflow run-node`` itself, killed or signalled the way a scheduler would.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import alive
from tests.engines.tensorflow.samples import write_samples
from tests.reliability_plugin import long_run
from weiflow.config import load_settings
from weiflow.curves import read_progress
from weiflow.dag import compile_file
from weiflow.runtime import RunContext, run_pipeline
from weiflow.storage import is_complete
from weiflow.tracking import Event, EventKind, MemoryTracker, read_events, run_log_path

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HERE = Path(__file__).parent
WEIFLOW = str(Path(sys.executable).parent / "weiflow")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tf-data")
    write_samples(root / "samples", 40_000, files=4, seed=0)
    write_samples(root / "holdout", 8_000, files=1, seed=1)
    return root


def pipeline(data: Path, cluster: str, train: str, rest: str = "") -> str:
    return textwrap.dedent(f"""\
        <pipeline xmlns="urn:weiflow:pipeline:1" name="ctr">
          <datasets>
            <dataset name="samples" uri="file://{data}/samples" format="parquet" external="true"/>
            <dataset name="holdout" uri="file://{data}/holdout" format="parquet" external="true"/>
            <dataset name="model" uri="${{storage}}/model/${{run_id}}" format="savedmodel"/>
          </datasets>
          <node id="train" engine="tensorflow">
            {cluster}
            <module id="fit" type="train" dataset="samples" {train}/>
            {rest}
          </node>
        </pipeline>
        """)


def assert_all_gone(pids: list[int], within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    assert not [p for p in pids if alive(p)], "cluster processes outlived the run"


def cluster_pids(events: list[Event]) -> dict[str, int]:
    started = [e for e in events if e.kind is EventKind.CLUSTER_STARTED]
    assert started, "no cluster.started event"
    return {task: int(pid) for task, pid in started[-1].detail["processes"].items()}


def metrics(events: list[Event], module: str) -> dict[str, float]:
    found = [e.detail for e in events if e.kind is EventKind.METRICS and e.module == module]
    assert found, f"no metrics from module {module}"
    return found[-1]


def test_ps_training_reaches_the_signal_evaluates_and_exports_a_servable_model(
    data: Path, make_spec: Callable[..., Path], isolated_var: Path
) -> None:
    # 402 steps: not a whole number of the chief's 4-step unrolled blocks, so the remainder runs too.
    spec = make_spec(
        pipeline(
            data,
            '<cluster ps="1" workers="2" backend="local"/>',
            'model="wide_deep" hidden-units="32,16" steps="402" batch-size="256" learning-rate="0.1"',
            '<module id="eval" type="evaluate" input="fit" dataset="holdout" metrics="auc,logloss,accuracy"/>'
            '<module id="save" type="export" input="fit" dataset="model" model-name="ctr" version="7"/>',
        )
    )
    tracker = MemoryTracker()
    run = RunContext.create(compile_file(spec), settings=load_settings(), tracker=tracker, run_id="r1")
    result = run_pipeline(run)
    assert result.succeeded, result.errors

    # The launcher stopped every process once the chief was done: PS servers included.
    pids = cluster_pids(tracker.events)
    assert sorted(pids) == ["chief:0", "ps:0", "worker:0", "worker:1"]
    assert_all_gone(list(pids.values()))

    trained = metrics(tracker.events, "fit")
    assert trained["steps"] == 402 and trained["ps"] == 1 and trained["workers"] == 2

    # Progress while it trained: a point per scheduled call, from both workers, the steps adding up to the target.
    points = [e.detail for e in tracker.events if e.kind is EventKind.PROGRESS and e.module == "fit"]
    steps = [p["step"] for p in points]
    assert steps == sorted(steps) and steps[-1] == 402 and len(points) >= 5
    assert {p["worker"] for p in points} == {0, 1}
    assert all(p["steps"] == 402 and 0 < p["loss"] < 2 and p["examples_per_s"] > 0 for p in points)
    assert all(0 < p["auc"] <= 1 for p in points) and points[-1]["auc"] > 0.7
    # The events came while training ran, not after: the first is logged before the train module's metrics.
    kinds = [(e.kind, e.module) for e in tracker.events]
    assert kinds.index((EventKind.PROGRESS, "fit")) < kinds.index((EventKind.METRICS, "fit"))
    evaluated = metrics(tracker.events, "eval")
    assert evaluated["auc"] >= 0.75, evaluated
    assert 0 < evaluated["logloss"] < 0.69 and evaluated["examples"] == 8000

    # TF Serving's layout, committed atomically, with the feature map beside the SavedModel.
    out = isolated_var / "storage" / "model" / "r1"
    assert is_complete(f"file://{out}")
    version = out / "ctr" / "7"
    assert (version / "saved_model.pb").is_file()
    assert json.loads((version / "assets.extra" / "featuremap.json").read_text())["features"]
    # The evaluate metrics travel with the export, for a deploy node's require= gate.
    carried = json.loads((version / "assets.extra" / "weiflow-metrics.json").read_text())
    assert carried["run_id"] == "r1" and carried["pipeline"] == "ctr"
    assert carried["metrics"] == {k: evaluated[k] for k in ("auc", "logloss", "accuracy")}
    # The training curve beside the model: a PNG drawn from the same points the events carried.
    curve = version / "assets.extra" / "training-curve.png"
    assert curve.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    from PIL import Image

    with Image.open(curve) as image:
        assert image.size == (700, 500)
    assert read_progress(version / "assets.extra" / "training-progress.jsonl") == points
    # ...and the exported model passes the publish load check.
    from weiflow.engines.deploy.actions import LoadChecker

    assert LoadChecker(timeout_s=120)(version)["ok"]

    # The SavedModel, loaded in a fresh process, predicts what the trained model predicts.
    rows = pq.read_table(data / "holdout").slice(0, 300).to_pydict()
    job = isolated_var / "tensorflow" / "ctr" / "r1" / "train" / "fit" / "job.json"

    def predict(kind: str, where: Path) -> list[float]:
        proc = subprocess.run(
            [sys.executable, str(HERE / "predict.py"), kind, str(where)],
            input=json.dumps(rows),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return list(json.loads(proc.stdout))

    served, trained_now = predict("savedmodel", version), predict("checkpoint", job)
    assert len(served) == 300
    assert served == pytest.approx(trained_now, rel=1e-5, abs=1e-6)
    assert len({round(p, 3) for p in served}) > 10  # a model that learned something, not a constant


def start_node(spec: Path, run_id: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [WEIFLOW, "run-node", str(spec), "--node", "train", "--run-id", run_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(extra_env or {})},
    )


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def run_log(isolated_var: Path, run_id: str) -> Path:
    return run_log_path(isolated_var / "runs", "ctr", run_id)


def training_started(isolated_var: Path, run_id: str) -> Callable[[], bool]:
    """True once the chief has logged a finished step, i.e. every process is up and training."""

    def check() -> bool:
        log = isolated_var / "tensorflow" / "ctr" / run_id / "train" / "fit" / "logs" / "chief-0.log"
        return log.is_file() and "step " in log.read_text(errors="replace")

    return check


LONG = 'model="logistic" steps="1000000" batch-size="64" checkpoint-every="100"'


# Each task with each signal in the long run (./dev reliability); in CI the chief and the PS with SIGKILL and a
# worker with SIGTERM, which these processes do not handle (the same end as SIGKILL, by another signal; each case
# ~13 s). The rerun after each kill (a second cluster, ~12 s) runs in the long run; in CI,
# test_a_killed_node_resumes_from_its_checkpoint_when_rerun proves resuming.
CLUSTER_KILLS = [("ps:0", "SIGKILL"), ("chief:0", "SIGKILL"), ("worker:1", "SIGTERM")]
if long_run():
    CLUSTER_KILLS += [("worker:1", "SIGKILL"), ("ps:0", "SIGTERM"), ("chief:0", "SIGTERM")]


@pytest.mark.reliability(
    area="kill",
    component="TF cluster process (a worker, the PS, the chief)",
    fault="SIGKILL or SIGTERM mid-training (the PS and the chief SIGKILLed, a worker SIGTERMed in CI; each both ways "
    "in the long run)",
    proves="the node fails fast naming the task and the signal; no process of the cluster left (by pid); in the "
    "long run, the rerun resumes from the last checkpoint and finishes",
)
@pytest.mark.parametrize(("task", "how"), CLUSTER_KILLS)
def test_a_killed_cluster_process_fails_the_node_fast_and_leaves_no_process(
    task: str, how: str, data: Path, make_spec: Callable[..., Path], isolated_var: Path
) -> None:
    spec = make_spec(pipeline(data, '<cluster ps="1" workers="2"/>', LONG))
    run_id = f"k-{task.replace(':', '')}"
    node = start_node(spec, run_id)
    checkpoints = isolated_var / "tensorflow" / "ctr" / run_id / "train" / "fit" / "checkpoints"
    try:
        wait_for((checkpoints / "checkpoint").is_file, 120, "a first checkpoint")
        pids = cluster_pids(read_events(run_log(isolated_var, run_id)))
        os.kill(pids[task], signal.Signals[how])
        out, _ = node.communicate(timeout=30)
    finally:
        node.kill()
    assert node.returncode == 1, out
    named = "the chief of" if task == "chief:0" else task
    assert named in out and how in out
    assert_all_gone(list(pids.values()))
    if not long_run():
        return

    # The rerun (same run id: Airflow's retry) restores the last checkpoint the killed attempt left and
    # trains the rest: here a target 100 steps past it, so that it ends.
    saved = int(re.search(r'model_checkpoint_path: "ckpt-(\d+)"', (checkpoints / "checkpoint").read_text())[1])
    rerun_spec = make_spec(
        pipeline(data, '<cluster ps="1" workers="2"/>', LONG.replace('steps="1000000"', f'steps="{saved + 100}"')),
        name="rerun.xml",
    )
    rerun = start_node(rerun_spec, run_id)
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out
    trained = metrics(read_events(run_log(isolated_var, run_id)), "fit")
    assert trained["resumed_from"] == saved and trained["steps"] == saved + 100


@pytest.mark.reliability(
    area="kill",
    component="TF launcher (run-node)",
    fault="SIGTERM mid-training",
    proves="exit 130, node failed 'cancelled'; no process of the cluster left (by pid)",
)
def test_sigterm_to_the_launcher_stops_every_process_of_the_cluster(
    data: Path, make_spec: Callable[..., Path], isolated_var: Path
) -> None:
    spec = make_spec(pipeline(data, '<cluster ps="1" workers="2"/>', LONG))
    node = start_node(spec, "t1")
    try:
        wait_for(training_started(isolated_var, "t1"), 120, "training to start")
        pids = cluster_pids(read_events(run_log(isolated_var, "t1")))
        node.send_signal(signal.SIGTERM)
        out, _ = node.communicate(timeout=30)
    finally:
        node.kill()
    assert node.returncode == 130, out
    assert_all_gone(list(pids.values()))
    failed = [e for e in read_events(run_log(isolated_var, "t1")) if e.kind is EventKind.NODE_FAILED]
    assert failed and failed[-1].error == "cancelled"


@pytest.mark.reliability(
    area="kill",
    component="TF launcher (run-node)",
    fault="SIGKILL mid-training",
    proves="children die with it; the rerun resumes from the last checkpoint and reaches the step target",
)
def test_a_killed_node_resumes_from_its_checkpoint_when_rerun(
    data: Path, make_spec: Callable[..., Path], isolated_var: Path
) -> None:
    spec = make_spec(
        pipeline(
            data, '<cluster ps="1" workers="1"/>', 'model="dnn" steps="3000" batch-size="64" checkpoint-every="100"'
        )
    )
    checkpoints = isolated_var / "tensorflow" / "ctr" / "r2" / "train" / "fit" / "checkpoints"
    node = start_node(spec, "r2")
    try:
        wait_for((checkpoints / "checkpoint").is_file, 120, "a first checkpoint")
        pids = cluster_pids(read_events(run_log(isolated_var, "r2")))
        node.kill()  # SIGKILL: no cleanup in the launcher; its children die with it (PDEATHSIG)
        node.wait(10)
    finally:
        node.kill()
    assert_all_gone(list(pids.values()))

    rerun = start_node(spec, "r2")
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out
    trained = metrics(read_events(run_log(isolated_var, "r2")), "fit")
    assert trained["steps"] == 3000
    assert trained["resumed_from"] is not None and 100 <= trained["resumed_from"] < 3000


@pytest.mark.reliability(
    area="retry",
    component="TF run-node (1 PS + 2 workers)",
    fault="retried while the old attempt trains",
    proves="every process of the old cluster gone before the new cluster starts",
)
def test_a_retry_stops_the_cluster_of_the_attempt_still_training_before_starting_its_own(
    data: Path, make_spec: Callable[..., Path], isolated_var: Path
) -> None:
    # Airflow retried the task while the first attempt's run-node, orphaned by a lost worker, still trains.
    spec = make_spec(pipeline(data, '<cluster ps="1" workers="2"/>', LONG))

    def attempt(number: int) -> subprocess.Popen[str]:
        argv = [WEIFLOW, "run-node", str(spec), "--node", "train", "--run-id", "d1", "--attempt", str(number)]
        return subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )

    first = attempt(1)
    second = None
    try:
        wait_for(training_started(isolated_var, "d1"), 120, "training to start")
        old = cluster_pids(read_events(run_log(isolated_var, "d1")))
        second = attempt(2)

        def second_cluster() -> bool:
            return any(
                e.kind is EventKind.CLUSTER_STARTED and e.attempt == 2 for e in read_events(run_log(isolated_var, "d1"))
            )

        wait_for(second_cluster, 180, "the second attempt's cluster")
        # By the time the new attempt had a cluster, the old one's processes were all gone: never two side by side.
        assert not [pid for pid in old.values() if alive(pid)]
        assert first.wait(timeout=5) == 130
        new = cluster_pids(read_events(run_log(isolated_var, "d1")))
        assert set(new.values()).isdisjoint(old.values())
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 130
        assert_all_gone(list(new.values()))
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    events = read_events(run_log(isolated_var, "d1"))
    node = [(e.kind, e.attempt) for e in events if e.node == "train" and e.module is None]
    assert node[:3] == [(EventKind.NODE_STARTED, 1), (EventKind.NODE_FAILED, 1), (EventKind.NODE_STARTED, 2)]
