"""Storage that refuses a dataset write: full (a file-size limit on the process) or read-only.

``weiflow run`` of a python node that writes a dataset, as a real process: a good version is
written first, then the same dataset is rewritten under the fault. The node fails with an error
that names the dataset and the storage's reason; nothing is left that looks complete (no staging
directory, no second ``_SUCCESS``); the good version is intact, byte for byte; and the same run,
once the fault clears, succeeds and commits the new version.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from weiflow.storage import SUCCESS_MARKER

pytestmark = pytest.mark.integration

STEPS = """
import os

def produce(step):
    size = int(os.environ["FAULT_BYTES"])
    with step.write("numbers") as out:
        for part in range(4):  # several files: the limit strikes after some are written
            with (out.path / f"part-{part}.json").open("w") as handle:
                for _ in range(size // 4 // 64):
                    handle.write("[" + ",".join(["1"] * 31) + "]\\n")
        out.rows = size // 64
"""

SPEC = """\
<pipeline xmlns="urn:weiflow:pipeline:1" name="faults">
  <datasets>
    <dataset name="numbers" uri="${storage}/numbers/${ds}" format="json"/>
  </datasets>
  <node id="make" engine="python">
    <module id="produce" type="call" callable="STEPS:produce" writes="numbers"/>
  </node>
</pipeline>
"""
DS = "2026-01-01"
LIMIT = 64 * 1024  # bytes per file the faulty write may reach


class Pipeline:
    """The spec and its steps in ``root``; runs it with ``weiflow run`` as a separate process."""

    def __init__(self, root: Path) -> None:
        steps = f"steps_{uuid.uuid4().hex[:8]}"
        (root / f"{steps}.py").write_text(STEPS)
        self.spec = root / "faults.xml"
        self.spec.write_text(SPEC.replace("STEPS", steps))
        self.var = root / "var"
        self.dataset = self.var / "storage" / "numbers" / DS

    def run(self, run_id: str, size: int, *, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WEIFLOW_")}
        env.update(WEIFLOW_VAR_DIR=str(self.var), FAULT_BYTES=str(size))
        argv = [*prefix, sys.executable, "-m", "weiflow", "run", str(self.spec), "--ds", DS, "--run-id", run_id]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, cwd=self.spec.parent)

    def snapshot(self) -> dict[str, bytes]:
        """Every file of the dataset directory and its neighbours (staging leftovers would show here)."""
        parent = self.dataset.parent
        return {str(p.relative_to(parent)): p.read_bytes() for p in sorted(parent.rglob("*")) if p.is_file()}

    def failed_event(self, run_id: str) -> dict[str, object]:
        log = self.var / "runs" / "faults" / f"{run_id}.jsonl"
        events = [json.loads(line) for line in log.read_text().splitlines()]
        return next(e for e in events if e["kind"] == "node.failed")


def check_fault(pipeline: Pipeline, run: subprocess.CompletedProcess[str], good: dict[str, bytes], why: str) -> None:
    """The faulty write failed clearly and left the good version, and nothing else, behind."""
    assert run.returncode == 1, run.stderr[-3000:]
    uri = f"file://{pipeline.dataset}"
    assert f"cannot write dataset {uri}" in run.stderr and why in run.stderr, run.stderr[-3000:]
    error = str(pipeline.failed_event("bad")["error"])
    assert f"cannot write dataset {uri}" in error and why in error, error
    assert pipeline.snapshot() == good  # the good version byte for byte; no staging directory, no other marker
    assert json.loads((pipeline.dataset / SUCCESS_MARKER).read_text())["run_id"] == "good"


def check_rerun(pipeline: Pipeline, size: int) -> None:
    rerun = pipeline.run("bad", size)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert json.loads((pipeline.dataset / SUCCESS_MARKER).read_text())["run_id"] == "bad"
    assert sum(p.stat().st_size for p in pipeline.dataset.glob("part-*")) > LIMIT
    assert [p.name for p in pipeline.dataset.parent.iterdir()] == [DS]


@pytest.fixture
def pipeline(tmp_path: Path) -> Pipeline:
    pipeline = Pipeline(tmp_path)
    written = pipeline.run("good", 4096)
    assert written.returncode == 0, written.stderr[-3000:]
    assert (pipeline.dataset / SUCCESS_MARKER).exists()
    return pipeline


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit (util-linux) is not installed")
@pytest.mark.reliability(
    area="dependency",
    component="storage (python engine's step.write)",
    fault="storage full mid-write: a 64 KiB file-size limit on the node's process (RLIMIT_FSIZE, EFBIG)",
    proves="the node fails naming the dataset and the storage's reason; no _SUCCESS or staging left; the "
    "previous version intact byte for byte; the rerun after the fault commits the new version",
)
def test_a_write_over_a_file_size_limit_fails_cleanly_and_keeps_the_good_version(pipeline: Pipeline) -> None:
    good = pipeline.snapshot()
    # CPython ignores SIGXFSZ, so going over the limit is an EFBIG error in the writer, as a full disk's ENOSPC is.
    faulty = pipeline.run("bad", 1 << 20, prefix=("prlimit", f"--fsize={LIMIT}"))
    check_fault(pipeline, faulty, good, "File too large")
    check_rerun(pipeline, 1 << 20)


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """``directory`` read-only for everyone, root included: a read-only bind mount over it, or failing that
    the immutable attribute; skips the test when neither is permitted here."""
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(directory), str(directory)], capture_output=True)
    if mounted.returncode == 0:
        try:
            yield
        finally:
            subprocess.run(["umount", str(directory)], check=True)
        return
    immutable = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, text=True)
    if immutable.returncode != 0:
        pytest.skip(
            f"cannot make {directory} read-only here: mount --bind -o ro said {mounted.stderr.strip()!r}, "
            f"chattr +i said {immutable.stderr.strip()!r}"
        )
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="making a directory read-only for the node needs root (mount, chattr)")
@pytest.mark.reliability(
    area="dependency",
    component="storage (python engine's step.write)",
    fault="storage read-only during the write (a read-only bind mount, else chattr +i)",
    proves="the node fails naming the dataset and the storage's reason; the previous version intact byte for "
    "byte, nothing else written; the rerun once writable commits the new version",
)
def test_a_write_to_read_only_storage_fails_cleanly_and_keeps_the_good_version(pipeline: Pipeline) -> None:
    good = pipeline.snapshot()
    with read_only(pipeline.dataset.parent):
        probe = pipeline.dataset.parent / "probe"
        with contextlib.suppress(OSError):
            probe.write_text("x")
        if probe.exists():
            probe.unlink()
            pytest.skip(f"{pipeline.dataset.parent} stayed writable under the read-only mount")
        faulty = pipeline.run("bad", 1 << 20)
    check_fault(pipeline, faulty, good, "Read-only file system")
    check_rerun(pipeline, 1 << 20)
