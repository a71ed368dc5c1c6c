"""Atomic outputs and the JSON-lines event log."""

from __future__ import annotations

import json
import multiprocessing
import uuid
from pathlib import Path

import fsspec
import pytest

from weiflow.errors import DatasetError
from weiflow.storage import SUCCESS_MARKER, atomic_output, dataset_size, is_complete
from weiflow.tracking import DatasetInfo, Event, EventKind, JsonlTracker, read_events, run_log_path


def test_atomic_output_commits_with_marker(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/ds/day=1"
    with atomic_output(uri, run_id="r1") as out:
        (out.path / "a.txt").write_text("hello")
        assert not is_complete(uri)
        out.rows = 1
    assert is_complete(uri)
    marker = json.loads((tmp_path / "ds" / "day=1" / SUCCESS_MARKER).read_text())
    assert marker["run_id"] == "r1" and marker["rows"] == 1
    assert dataset_size(uri) == (5, 1)


def test_failed_block_keeps_the_previous_output(tmp_path: Path) -> None:
    uri = (tmp_path / "ds").as_uri()
    with atomic_output(uri, run_id="r1") as out:
        (out.path / "a.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_output(uri, run_id="r2") as out:
        (out.path / "a.txt").write_text("new, half")
        raise RuntimeError("killed")
    assert (tmp_path / "ds" / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def _append(path: str, worker: int) -> None:
    tracker = JsonlTracker(Path(path))
    for i in range(200):
        tracker.emit(
            Event(EventKind.MODULE_STARTED, "r", "p", node=f"n{worker}", module=f"m{i}", detail={"pad": "x" * 300})
        )


def test_concurrent_writers_never_interleave_lines(tmp_path: Path) -> None:
    path = run_log_path(tmp_path, "p", "manual__2026-01-01T00:00:00+00:00")
    assert path.name == "manual__2026-01-01T00_00_00_00_00.jsonl"
    processes = [multiprocessing.Process(target=_append, args=(str(path), w)) for w in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(30)
    events = read_events(path)
    assert len(events) == 800
    assert {e.node for e in events} == {"n0", "n1", "n2", "n3"}


def test_event_round_trip(tmp_path: Path) -> None:
    event = Event(
        EventKind.DATASET_WRITTEN,
        "r",
        "p",
        node="n",
        module="m",
        dataset=DatasetInfo("d", "file:///x", "parquet", 10, 2, rows=5, schema={"a": "int"}),
    )
    tracker = JsonlTracker(tmp_path / "log.jsonl")
    tracker.emit(event)
    assert read_events(tmp_path / "log.jsonl") == [event]


def test_a_directory_weiflow_did_not_commit_is_never_replaced(tmp_path: Path) -> None:
    foreign = tmp_path / "someone_elses"
    foreign.mkdir()
    (foreign / "data.csv").write_text("precious")
    with pytest.raises(DatasetError, match="is not a WeiFlow dataset"), atomic_output(f"file://{foreign}", run_id="r"):
        pass
    assert (foreign / "data.csv").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["someone_elses"]


def test_remote_commit_writes_the_marker_last_and_replaces_the_old_output() -> None:
    fs = fsspec.filesystem("memory")
    uri = f"memory://bucket/{uuid.uuid4().hex}/day1"
    for content in ("old", "new"):
        with atomic_output(uri, run_id=content) as out:
            (out.path / "part-0").write_text(content)
    path = uri.removeprefix("memory://")
    assert fs.cat(f"{path}/part-0") == b"new"
    assert json.loads(fs.cat(f"{path}/{SUCCESS_MARKER}"))["run_id"] == "new"
    assert fs.ls(path.rpartition("/")[0], detail=False) == [f"/{path}"]  # no staging or old copies left


def test_a_writer_may_stage_on_the_remote_storage_itself() -> None:
    """Spark executors on other hosts write straight to storage: the staging dir is a hidden sibling there."""
    fs = fsspec.filesystem("memory")
    uri = f"memory://bucket/{uuid.uuid4().hex}/day1"
    path = uri.removeprefix("memory://")
    with atomic_output(uri, run_id="old") as out:
        (out.path / "part-0").write_text("old")
    with atomic_output(uri, run_id="new", stage_on_storage=True) as out:
        assert out.target.startswith("memory://") and f"{path.rpartition('/')[0]}/.day1.tmp-" in out.target
        with fsspec.open(f"{out.target}/part-0", "w") as handle:
            handle.write("new")
        assert fs.cat(f"{path}/part-0") == b"old"  # readers still see the committed output
    assert fs.cat(f"{path}/part-0") == b"new"
    assert json.loads(fs.cat(f"{path}/{SUCCESS_MARKER}"))["run_id"] == "new"
    with pytest.raises(RuntimeError), atomic_output(uri, run_id="failed", stage_on_storage=True) as out:
        with fsspec.open(f"{out.target}/part-0", "w") as handle:
            handle.write("half")
        raise RuntimeError("the writer died")
    assert fs.cat(f"{path}/part-0") == b"new"
    assert fs.ls(path.rpartition("/")[0], detail=False) == [f"/{path}"]  # the failed staging dir is gone


def test_remote_commit_failure_keeps_the_old_output(monkeypatch: pytest.MonkeyPatch) -> None:
    fs = fsspec.filesystem("memory")
    uri = f"memory://bucket/{uuid.uuid4().hex}/day1"
    with atomic_output(uri, run_id="old") as out:
        (out.path / "part-0").write_text("old")
    real_mv = type(fs).mv

    def failing_mv(self: object, source: str, target: str, **kwargs: object) -> None:
        if ".tmp-" in source:
            raise OSError("network down")
        real_mv(self, source, target, **kwargs)

    monkeypatch.setattr(type(fs), "mv", failing_mv)
    with pytest.raises(OSError, match="network down"), atomic_output(uri, run_id="new") as out:
        (out.path / "part-0").write_text("new")
    path = uri.removeprefix("memory://")
    assert fs.cat(f"{path}/part-0") == b"old" and is_complete(uri)
    assert fs.ls(path.rpartition("/")[0], detail=False) == [f"/{path}"]


def test_a_failed_local_commit_keeps_the_previous_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"file://{tmp_path}/ds"
    with atomic_output(uri, run_id="old") as out:
        (out.path / "a").write_text("old")
    real_rename = Path.rename

    def rename_then_fail(self: Path, target: Path) -> Path:
        if ".tmp-" in self.name:
            raise OSError("device busy")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename_then_fail)
    with pytest.raises(DatasetError, match="cannot commit"), atomic_output(uri, run_id="new") as out:
        (out.path / "a").write_text("new")
    assert (tmp_path / "ds" / "a").read_text() == "old" and is_complete(uri)
