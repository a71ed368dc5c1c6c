"""The file repository's guarantees on a local file system, with real processes: the layout TF
Serving reads, atomic versions and routing, concurrent publishes and promotes, killed copies."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.synchronize import Barrier
from pathlib import Path

import fsspec
import pytest

from tests.engines.deploy.conftest import tree_digest
from tests.modelrepo.conftest import write_saved_model
from weiflow.modelrepo import FileRepository, Manifest, ModelRepoError, Routing, update_routing
from weiflow.modelrepo.files import _HOST

Make = Callable[..., tuple[Path, Manifest]]
FORK = multiprocessing.get_context("fork")


def test_the_layout_is_what_tf_serving_reads(tmp_path: Path, saved_model: Make) -> None:
    repo = FileRepository(f"file://{tmp_path}/models")
    path, manifest = saved_model()
    (path / "assets").mkdir()  # an empty directory of the SavedModel is kept too
    assert repo.add_version("feed_ctr", path, manifest) == 1
    update_routing(repo, "feed_ctr", lambda r, vs: r.publish(1, 100, existing=vs, who="alice"))
    model = tmp_path / "models" / "feed_ctr"
    assert (model / "1" / "assets").is_dir()
    assert sorted(p.name for p in model.iterdir()) == [".weiflow", "1", "weiflow-routing.json"]
    files = sorted(str(p.relative_to(model / "1")) for p in (model / "1").rglob("*") if p.is_file())
    assert files == [
        "assets.extra/featuremap.json",
        "assets.extra/weiflow-manifest.json",
        "saved_model.pb",
        "variables/variables.data-00000-of-00001",
        "variables/variables.index",
    ]
    for name in files[2:]:
        assert (model / "1" / name).read_bytes() == (path / name).read_bytes()
    assert Manifest.from_json((model / "1/assets.extra/weiflow-manifest.json").read_text()) == manifest
    assert repo.version_uri("feed_ctr", 1) == str(model / "1")
    assert json.loads((model / "weiflow-routing.json").read_text())["traffic"] == {"1": 100}
    assert sorted(p.name for p in (model / ".weiflow").iterdir()) == ["claims", "routing.lock"]


def test_a_version_without_manifest_is_not_listed_but_its_number_is_not_reused(
    tmp_path: Path, saved_model: Make
) -> None:
    repo = FileRepository(tmp_path)
    write_saved_model(tmp_path / "feed_ctr" / "4")  # copied in by hand: TF Serving layout, no manifest
    assert repo.versions("feed_ctr") == []
    assert repo.add_version("feed_ctr", *saved_model()) == 5


def test_a_routing_file_of_another_model_or_a_damaged_one_is_refused(tmp_path: Path) -> None:
    repo = FileRepository(tmp_path)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "weiflow-routing.json").write_text(Routing("a").to_json())
    with pytest.raises(ModelRepoError, match=r"b/weiflow-routing.json is the routing of model 'a', not 'b'"):
        repo.read_routing("b")
    (tmp_path / "b" / "weiflow-routing.json").write_text('{"schema": "weiflow.routing/1", "mo')
    with pytest.raises(ModelRepoError, match=r"b/weiflow-routing.json: not a valid routing file"):
        repo.read_routing("b")


def test_readers_never_see_a_half_written_routing_file(tmp_path: Path, saved_model: Make) -> None:
    repo = FileRepository(tmp_path)
    repo.add_version("m", *saved_model())
    repo.add_version("m", *saved_model())
    update_routing(repo, "m", lambda r, vs: r.publish(1, 100, existing=vs, who="a"))
    update_routing(repo, "m", lambda r, vs: r.publish(2, 1, existing=vs, who="a"))
    stop, seen, errors = threading.Event(), set(), []

    def read() -> None:
        reader = FileRepository(tmp_path)
        while not stop.is_set():
            try:
                seen.add(reader.read_routing("m").generation)
            except Exception as exc:  # any failure is the finding
                errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(3)]
    for thread in threads:
        thread.start()
    for i in range(60):
        update_routing(repo, "m", lambda r, vs, i=i: r.promote(2, 1 + i % 99, existing=vs, who="a"))
    stop.set()
    for thread in threads:
        thread.join()
    assert errors == [] and len(seen) > 5


def _add(root: str, source: str, manifest: str, barrier: Barrier, queue: multiprocessing.Queue[int]) -> None:
    repo = FileRepository(root)
    barrier.wait()
    for _ in range(2):
        queue.put(repo.add_version("feed_ctr", source, Manifest.from_json(manifest)))


@pytest.mark.integration
def test_concurrent_publishes_get_distinct_versions(tmp_path: Path, saved_model: Make) -> None:
    processes, queue, barrier = [], FORK.Queue(), FORK.Barrier(4)
    for i in range(4):
        path, manifest = saved_model(run_id=f"run-{i}")
        args = (str(tmp_path / "models"), str(path), manifest.to_json(), barrier, queue)
        processes.append(FORK.Process(target=_add, args=args))
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    versions = sorted(queue.get(timeout=5) for _ in range(8))
    assert versions == list(range(1, 9))
    repo = FileRepository(tmp_path / "models")
    assert repo.versions("feed_ctr") == versions
    runs = [repo.manifest("feed_ctr", v).run_id for v in versions]
    assert sorted(runs) == sorted(f"run-{i}" for i in range(4) for _ in range(2))  # nothing overwritten
    assert sorted(p.name for p in (tmp_path / "models/feed_ctr/.weiflow").iterdir()) == ["claims"]


def _relabel(root: str, worker: int, barrier: Barrier) -> None:
    repo = FileRepository(root)
    barrier.wait()
    for i in range(10):
        update_routing(
            repo,
            "feed_ctr",
            lambda r, vs, i=i: r.label(f"w{worker}", 1 + i % 2, existing=vs, who=f"w{worker}"),
            attempts=100,
        )


@pytest.mark.integration
def test_concurrent_promotes_lose_no_update(tmp_path: Path, saved_model: Make) -> None:
    repo = FileRepository(tmp_path)
    repo.add_version("feed_ctr", *saved_model())
    repo.add_version("feed_ctr", *saved_model())
    barrier = FORK.Barrier(4)
    processes = [FORK.Process(target=_relabel, args=(str(tmp_path), w, barrier)) for w in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    routing = repo.read_routing("feed_ctr")
    assert routing.generation == 40 and len(routing.history) == 40
    assert sorted(c.who for c in routing.history) == sorted(f"w{w}" for w in range(4) for _ in range(10))
    assert routing.labels == {f"w{w}": 2 for w in range(4)}


# A publisher that copies one file, says so, then hangs: the test kills it right there.
_SLOW_PUBLISH = """
import sys, time
from pathlib import Path
import weiflow.modelrepo.files as files
from weiflow.modelrepo import FileRepository, Manifest
stage = sys.argv[4]
if stage == "copy":
    real = files._copy_file
    def copy(*args):
        real(*args)
        print("copying", flush=True)
        time.sleep(600)
    files._copy_file = copy
else:
    real_rename = Path.rename
    def rename(self, target):
        print("claimed", flush=True)
        time.sleep(600)
    Path.rename = rename
FileRepository(sys.argv[1]).add_version("feed_ctr", sys.argv[2], Manifest.from_json(Path(sys.argv[3]).read_text()))
"""


@pytest.mark.integration
@pytest.mark.parametrize(("stage", "next_version"), [("copy", 1), ("claim", 2)])
def test_a_publish_killed_mid_copy_leaves_no_version_and_the_rerun_succeeds(
    tmp_path: Path, saved_model: Make, stage: str, next_version: int
) -> None:
    root = tmp_path / "models"
    path, manifest = saved_model()
    (tmp_path / "manifest.json").write_text(manifest.to_json())
    argv = [sys.executable, "-c", _SLOW_PUBLISH, str(root), str(path), str(tmp_path / "manifest.json"), stage]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline() if child.stdout else ""
        assert line.strip() in ("copying", "claimed"), child.stderr.read() if child.stderr else ""
        state = root / "feed_ctr" / ".weiflow"
        staging = [p for p in state.iterdir() if p.name.startswith("staging-")]
        assert len(staging) == 1 and staging[0].name == f"staging-{_HOST}-{child.pid}-" + staging[0].name.split("-")[-1]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    repo = FileRepository(root)
    assert repo.versions("feed_ctr") == [] and not any(p.name.isdigit() for p in (root / "feed_ctr").iterdir())
    # The next publish removes the dead writer's staging directory and takes the next free number.
    assert repo.add_version("feed_ctr", path, manifest) == next_version
    assert repo.versions("feed_ctr") == [next_version]
    assert not [p for p in state.iterdir() if p.name.startswith("staging-")]


def test_cleanup_removes_only_what_dead_or_long_silent_writers_left(tmp_path: Path, saved_model: Make) -> None:
    repo = FileRepository(tmp_path, stale_after_s=3600)
    repo.add_version("m", *saved_model())
    state = tmp_path / "m" / ".weiflow"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = state / f"staging-{_HOST}-{os.getpid()}-aaaa"
    gone = state / f"staging-{_HOST}-{dead.pid}-bbbb"
    elsewhere_recent = state / "staging-otherhost-1-cccc"
    elsewhere_old = state / "removed-otherhost-1-dddd"
    tmp_file = state / f"routing-{_HOST}-{dead.pid}-eeee.tmp"
    for directory in (mine, gone, elsewhere_recent, elsewhere_old):
        (directory / "variables").mkdir(parents=True)
    tmp_file.write_text("{")
    old = time.time() - 7200
    os.utime(elsewhere_old, (old, old))
    removed = repo.cleanup()
    assert sorted(removed) == sorted(str(p) for p in (gone, elsewhere_old, tmp_file))
    assert mine.exists() and elsewhere_recent.exists() and repo.versions("m") == [1]


def test_an_object_store_add_killed_mid_copy_is_cleaned_up_once_its_writer_is_gone(saved_model: Make) -> None:
    memory = fsspec.filesystem("memory")
    root = "memory://objstore-cleanup"
    repo = FileRepository(root, stale_after_s=3600)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    # What a killed add leaves on an object store: a claim, and part of the version written in place.
    memory.pipe_file(
        "/objstore-cleanup/m/.weiflow/claims/1",
        json.dumps({"host": _HOST, "pid": dead.pid, "at": time.time()}).encode(),
    )
    memory.pipe_file("/objstore-cleanup/m/1/saved_model.pb", b"half")
    assert repo.versions("m") == []
    assert repo.add_version("m", *saved_model()) == 2
    assert not memory.exists("/objstore-cleanup/m/1") and repo.versions("m") == [2]
    memory.rm("/objstore-cleanup", recursive=True)


def test_a_routing_lock_held_too_long_is_reported(tmp_path: Path, saved_model: Make) -> None:
    import fcntl

    repo = FileRepository(tmp_path, lock_timeout_s=0.2)
    repo.add_version("m", *saved_model())
    with (tmp_path / "m/.weiflow/routing.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(ModelRepoError, match=r"routing.lock stayed locked for 0.2s"):
            update_routing(repo, "m", lambda r, vs: r.publish(1, 100, existing=vs, who="a"))
    assert repo.read_routing("m").generation == 0


def _unrouted_second_version(root: Path, saved_model: Make) -> FileRepository:
    repo = FileRepository(root)
    for _ in range(2):
        repo.add_version("m", *saved_model())
    update_routing(repo, "m", lambda r, vs: r.publish(1, 100, existing=vs, who="a"))
    return repo


@pytest.mark.parametrize(
    ("link", "listed", "refusal"),
    [
        # Someone swapped version 2 for a link to data elsewhere: a link is no version of WeiFlow's.
        ("version", [1], r"model 'm' has no version 2 \(versions: 1\)"),
        # The whole model directory lives elsewhere, behind a link: its versions are listed, never deleted.
        ("model", [1, 2], r"refusing to remove version 2 of model 'm': .* is a symbolic link or resolves outside"),
    ],
)
def test_removing_a_version_behind_a_link_to_outside_is_refused_and_nothing_changes(
    tmp_path: Path, saved_model: Make, link: str, listed: list[int], refusal: str
) -> None:
    repo = _unrouted_second_version(tmp_path / "models", saved_model)
    outside, inside = tmp_path / "outside", tmp_path / ("models/m/2" if link == "version" else "models/m")
    inside.rename(outside)
    inside.symlink_to(outside)
    before, routing = tree_digest(outside), repo.read_routing("m")
    assert before and repo.versions("m") == listed
    with pytest.raises(ModelRepoError, match=refusal):
        repo.remove_version("m", 2, who="a")
    assert tree_digest(outside) == before and repo.read_routing("m") == routing and repo.versions("m") == listed


def test_deleting_never_follows_a_link_inside_a_version_or_a_leftover(
    tmp_path: Path, saved_model: Make, caplog: pytest.LogCaptureFixture
) -> None:
    repo = _unrouted_second_version(tmp_path / "models", saved_model)
    outside = tmp_path / "outside"
    (outside / "data").mkdir(parents=True)
    (outside / "data" / "precious").write_text("keep me")
    (tmp_path / "models/m/2/variables/elsewhere").symlink_to(outside / "data")
    # A dead writer's leftover that is itself a link to outside: cleanup must not empty the target.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = tmp_path / f"models/m/.weiflow/staging-{_HOST}-{dead.pid}-ffff"
    leftover.symlink_to(outside / "data")
    before = tree_digest(outside)
    assert repo.remove_version("m", 2, who="a").history[-1].action == "remove"
    assert repo.versions("m") == [1] and not (tmp_path / "models/m/2").exists()
    assert repo.cleanup("m") == []
    assert f"left {leftover} in place: refusing to delete" in caplog.text and leftover.is_symlink()
    assert tree_digest(outside) == before
    removed_aside = [p for p in leftover.parent.iterdir() if p.name.startswith("removed-")]
    assert removed_aside == []  # the version set aside was deleted, its inner link with it (not its target)
