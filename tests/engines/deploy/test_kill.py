"""A publish killed with SIGKILL mid-copy, through the engine (``weiflow run-node``), leaves no visible version.

The node publishes a real (tiny) SavedModel padded with 512 MiB of sparse asset files, so the copy
into the repository takes long enough to be caught: the test waits until the repository's
staging directory holds the first padding file, then kills the node. The load check (TensorFlow,
in a child process) runs before the copy, so it passes in both runs; nothing in the test process
imports TensorFlow.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from weiflow.engines.deploy.actions import find_saved_model, publish
from weiflow.modelrepo import ROUTING_FILE, FileRepository
from weiflow.tracking import EventKind, read_events, run_log_path

pytestmark = [pytest.mark.slow, pytest.mark.integration]  # TensorFlow loads the model twice (~15 s)

SPEC = """\
<pipeline xmlns="urn:weiflow:pipeline:1" name="ctr" owner="alice">
  <datasets><dataset name="model" uri="file://EXPORT" format="savedmodel" external="true"/></datasets>
  <node id="pub" engine="deploy">
    <module id="p" type="publish" dataset="model" model-name="ctr" traffic="10"/>
  </node>
</pipeline>
"""
PADDING_FILES, PADDING_BYTES = 4, 128 << 20  # sparse at the source; the copy writes every byte


def _run_node(spec: Path, run_id: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # a file, not a pipe: nobody reads it while the node runs
        argv = [sys.executable, "-m", "weiflow", "run-node", str(spec), "--node", "pub", "--run-id", run_id]
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)


def _wait_for_copy(child: subprocess.Popen[bytes], state: Path, log: Path, timeout_s: float = 120.0) -> Path:
    """The staging directory, once it holds the first padding file: the copy is under way."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.poll() is not None:
            pytest.fail(f"the node ended (exit {child.returncode}) before its copy was caught:\n{log.read_text()}")
        for staging in state.glob("staging-*") if state.is_dir() else []:
            if (staging / "assets" / "padding-0.bin").exists():
                return staging
        time.sleep(0.001)
    pytest.fail(f"no copy seen within {timeout_s:g} s:\n{log.read_text()}")


def _version_1_and_a_large_export(
    export: Callable[..., Path], make_spec: Callable[..., Path], root: Path
) -> tuple[FileRepository, Path, bytes, Path]:
    """Version 1 published in ``root``, and a spec publishing an export padded to copy slowly.

    The repository, the model's directory, its routing file's bytes now, and the spec.
    """
    first = find_saved_model(export(), "ctr")  # a fake: the load check is not what these tests are about
    publish(str(root), "ctr", first, who="alice", load_check=lambda path: {"ok": True})
    repo, model_dir = FileRepository(root), root / "ctr"
    routing_before = (model_dir / ROUTING_FILE).read_bytes()
    dataset = export("good")
    assets = find_saved_model(dataset, "ctr") / "assets"
    assets.mkdir(exist_ok=True)
    for i in range(PADDING_FILES):
        with (assets / f"padding-{i}.bin").open("wb") as padding:
            padding.truncate(PADDING_BYTES)
    return repo, model_dir, routing_before, make_spec(SPEC.replace("EXPORT", str(dataset)))


@pytest.mark.reliability(
    area="kill",
    component="deploy run-node (publish)",
    fault="SIGKILL mid-copy",
    proves="no version appears, the routing file byte-identical; the rerun publishes the next version",
)
def test_a_publish_killed_mid_copy_leaves_no_version_and_the_rerun_publishes_the_next(
    export: Callable[..., Path], make_spec: Callable[..., Path], isolated_var: Path, tmp_path: Path
) -> None:
    root = isolated_var / "storage" / "models"  # ${storage}/models, where the node publishes
    repo, model_dir, routing_before, spec = _version_1_and_a_large_export(export, make_spec, root)

    try:
        log = tmp_path / "killed.log"
        child = _run_node(spec, "r1", log)
        try:
            staging = _wait_for_copy(child, model_dir / ".weiflow", log)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        # The kill landed mid-copy: the staging directory is still there, not all of it copied.
        copied = sum(p.stat().st_size for p in (staging / "assets").glob("padding-*.bin"))
        assert staging.is_dir() and copied < PADDING_FILES * PADDING_BYTES, "the copy finished before the kill"
        assert repo.versions("ctr") == [1]
        assert sorted(p.name for p in model_dir.iterdir() if p.name.isdigit()) == ["1"]
        assert (model_dir / ROUTING_FILE).read_bytes() == routing_before

        log = tmp_path / "rerun.log"
        rerun = _run_node(spec, "r1", log)
        assert rerun.wait(timeout=180) == 0, log.read_text()
        assert repo.versions("ctr") == [1, 2]
        routing = repo.read_routing("ctr")
        assert routing.traffic == {1: 90, 2: 10} and routing.labels == {"stable": 1, "canary": 2}
        assert repo.manifest("ctr", 2).run_id == "r1"
        assert not staging.exists()  # the dead node's leftover went with the rerun's cleanup
    finally:
        shutil.rmtree(root, ignore_errors=True)  # half a gigabyte of copies: free it now, not when pytest prunes


@pytest.mark.reliability(
    area="kill",
    component="deploy run-node (publish)",
    fault="SIGTERM to its group mid-copy (Airflow's on_kill)",
    proves="exit 130, node.failed 'cancelled'; no version appears, the routing file byte-identical, no staging "
    "left; the rerun publishes the next version",
)
def test_a_publish_cancelled_mid_copy_exits_130_leaves_no_version_and_the_rerun_publishes(
    export: Callable[..., Path], make_spec: Callable[..., Path], isolated_var: Path, tmp_path: Path
) -> None:
    root = isolated_var / "storage" / "models"  # ${storage}/models, where the node publishes
    repo, model_dir, routing_before, spec = _version_1_and_a_large_export(export, make_spec, root)

    try:
        log = tmp_path / "cancelled.log"
        with log.open("wb") as out:
            argv = [sys.executable, "-m", "weiflow", "run-node", str(spec), "--node", "pub", "--run-id", "r1"]
            # Its own group, as the Airflow operator starts it: on_kill signals the group.
            child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            staging = _wait_for_copy(child, model_dir / ".weiflow", log)
            os.killpg(child.pid, signal.SIGTERM)
            assert child.wait(timeout=60) == 130, log.read_text()[-3000:]
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        assert repo.versions("ctr") == [1]
        assert sorted(p.name for p in model_dir.iterdir() if p.name.isdigit()) == ["1"]
        assert (model_dir / ROUTING_FILE).read_bytes() == routing_before
        assert not staging.exists(), "a cancelled publish left its staging copy behind"
        events = read_events(run_log_path(isolated_var / "runs", "ctr", "r1"))
        assert [e.error for e in events if e.kind is EventKind.NODE_FAILED] == ["cancelled"]

        log = tmp_path / "rerun.log"
        rerun = _run_node(spec, "r1", log)
        assert rerun.wait(timeout=180) == 0, log.read_text()
        assert repo.versions("ctr") == [1, 2]
        assert repo.read_routing("ctr").traffic == {1: 90, 2: 10}
    finally:
        shutil.rmtree(root, ignore_errors=True)
