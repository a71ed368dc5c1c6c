"""The model manager: loading, routing, hot reload and unloading, with a fake loader (no TensorFlow).

Version directories are real (a fake ``saved_model.pb``, a real manifest), routing files are
written by the model repository's own code, and concurrency is arranged with events, never sleeps.
"""

from __future__ import annotations

import os
import random
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from weiflow.errors import ConfigError
from weiflow.modelrepo import ROUTING_FILE, FileRepository, Manifest, Routing, update_routing
from weiflow.modelrepo.contracts import MANIFEST_PATH
from weiflow.serving.config import AllVersions, LatestVersions, ModelConfig, SpecificVersions
from weiflow.serving.manager import (
    AVAILABLE,
    END,
    UNLOADING,
    ModelManager,
    ModelNotFound,
    ServedModel,
    UnknownVersionLabel,
)

WAIT_S = 10  # how long an event may take before a test fails instead of hanging


class WarmupFailed(Exception):
    """What the real Servable raises when a version answers its warm-up records with NaN."""


class FakeServable:
    def __init__(self, model: str, version: int, path: Path, loader: FakeLoader) -> None:
        self.model, self.version, self.path = model, version, path
        self.closed = False
        self._loader = loader

    def warmup(self, *, max_records: int = 1000) -> int:
        if (self.model, self.version) in self._loader.nan:
            raise WarmupFailed("version outputs NaN for its warm-up records")
        return 1

    def close(self) -> None:
        self.closed = True
        self._loader.closed.append((self.model, self.version))


class FakeLoader:
    """Records loads and closes; fails or blocks the versions it is told to."""

    def __init__(self) -> None:
        self.loads: list[tuple[str, int]] = []
        self.closed: list[tuple[str, int]] = []
        self.fail: set[tuple[str, int]] = set()
        self.nan: set[tuple[str, int]] = set()
        self.blocked: dict[tuple[str, int], tuple[threading.Event, threading.Event]] = {}

    def block(self, model: str, version: int) -> tuple[threading.Event, threading.Event]:
        """(started, release): the load of that version signals ``started``, then waits for ``release``."""
        events = threading.Event(), threading.Event()
        self.blocked[model, version] = events
        return events

    def __call__(self, model: str, version: int, path: Path) -> FakeServable:
        self.loads.append((model, version))
        if (model, version) in self.blocked:
            started, release = self.blocked[model, version]
            started.set()
            assert release.wait(WAIT_S), "the test never released the load"
        if (model, version) in self.fail:
            raise OSError(f"SavedModel at {path} is corrupt")
        return FakeServable(model, version, path, self)


def write_version(base: Path, version: int, *, manifest: bool = True, saved_model: bool = True) -> Path:
    path = base / str(version)
    (path / "variables").mkdir(parents=True, exist_ok=True)
    if saved_model:
        (path / "saved_model.pb").write_bytes(b"fake graph %d" % version)
    if manifest:
        (path / MANIFEST_PATH).parent.mkdir(parents=True, exist_ok=True)
        document = Manifest(pipeline="ctr", run_id=f"run-{version}", featuremap_sha256="0" * 64, publisher="tests")
        (path / MANIFEST_PATH).write_text(document.to_json())
    return path


def change_routing(root: Path, model: str, change: Callable[[Routing, list[int]], Routing]) -> Routing:
    """Rewrite a model's routing the way deploy, promote and rollback do."""
    return update_routing(FileRepository(root), model, change)


def publish(root: Path, model: str, version: int, traffic: int) -> Routing:
    return change_routing(root, model, lambda r, existing: r.publish(version, traffic, existing=existing, who="t"))


def promote(root: Path, model: str, version: int, traffic: int) -> Routing:
    return change_routing(root, model, lambda r, existing: r.promote(version, traffic, existing=existing, who="t"))


def config_model(base: Path, policy: object = None, labels: dict[str, int] | None = None) -> ServedModel:
    config = ModelConfig("half_plus_two", str(base), policy or LatestVersions(), labels or {})  # type: ignore[arg-type]
    return ServedModel.from_config(config)


@pytest.fixture
def loader() -> FakeLoader:
    return FakeLoader()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A model repository whose model 'ctr' has versions 1 and 2, 90/10."""
    write_version(tmp_path / "ctr", 1)
    write_version(tmp_path / "ctr", 2)
    publish(tmp_path, "ctr", 1, 100)
    publish(tmp_path, "ctr", 2, 10)
    return tmp_path


@pytest.fixture
def started() -> Iterator[list[ModelManager]]:
    """Managers a test starts; stopped at the end whatever happens."""
    managers: list[ModelManager] = []
    yield managers
    for manager in managers:
        manager.stop()


def routed_manager(root: Path, loader: FakeLoader, **kw: object) -> ModelManager:
    manager = ModelManager.for_repository(str(root), loader=loader, poll_s=0, **kw)  # type: ignore[arg-type]
    manager.poll_once()
    return manager


# -- loading, readiness, status --------------------------------------------------------------


def test_start_loads_what_is_there_and_reports_ready(
    tmp_path: Path, loader: FakeLoader, started: list[ModelManager]
) -> None:
    write_version(tmp_path, 1, manifest=False)
    write_version(tmp_path, 2, manifest=False)
    manager = ModelManager([config_model(tmp_path)], loader=loader, poll_s=3600)
    assert not manager.ready()
    manager.start()
    started.append(manager)
    assert manager.ready()
    assert manager.loaded() == {"half_plus_two": [2]}  # TensorFlow Serving's default: the latest one
    assert loader.loads == [("half_plus_two", 2)]
    with manager.lease("half_plus_two") as servable:
        assert servable.version == 2


def test_a_model_without_versions_is_not_ready(tmp_path: Path, loader: FakeLoader) -> None:
    write_version(tmp_path / "a", 1)
    manager = ModelManager(
        [config_model(tmp_path / "a"), ServedModel("empty", str(tmp_path / "missing"), LatestVersions())],
        loader=loader,
    )
    manager.poll_once()
    assert not manager.ready()
    assert manager.loaded() == {"half_plus_two": [1], "empty": []}
    with pytest.raises(ModelNotFound, match=r"^Could not find any versions of model empty$"):
        manager.status("empty")


def test_status_is_tensorflow_servings_answer(tmp_path: Path, loader: FakeLoader) -> None:
    write_version(tmp_path, 1, manifest=False)
    manager = ModelManager([config_model(tmp_path)], loader=loader)
    manager.poll_once()
    assert manager.status("half_plus_two") == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    write_version(tmp_path, 2, manifest=False)
    manager.poll_once()
    statuses = manager.status("half_plus_two")["model_version_status"]
    assert [(s["version"], s["state"]) for s in statuses] == [("2", AVAILABLE), ("1", END)]  # newest first
    assert manager.status("half_plus_two", 1)["model_version_status"][0]["status"]["error_code"] == "OK"
    with pytest.raises(ModelNotFound, match=r"^Could not find version 7 of model half_plus_two$"):
        manager.status("half_plus_two", 7)
    with pytest.raises(ModelNotFound, match=r"^Could not find any versions of model nope$"):
        manager.status("nope")


# -- pins and labels ------------------------------------------------------------------------


def test_version_and_label_pins_on_a_config_model(tmp_path: Path, loader: FakeLoader) -> None:
    for version in (1, 2, 3):
        write_version(tmp_path, version, manifest=False)
    served = config_model(tmp_path, SpecificVersions((1, 2)), {"stable": 1, "next": 3})
    manager = ModelManager([served], loader=loader)
    manager.poll_once()
    assert manager.loaded() == {"half_plus_two": [1, 2]}
    assert manager.resolve("half_plus_two") == 2  # the highest loaded one
    assert manager.resolve("half_plus_two", version=1) == 1
    assert manager.resolve("half_plus_two", label="stable") == 1
    with manager.lease("half_plus_two", version=1) as servable:
        assert servable.version == 1
    with pytest.raises(ModelNotFound, match=r"^Servable not found for request: Specific\(half_plus_two, 3\)$"):
        manager.resolve("half_plus_two", version=3)
    with pytest.raises(ModelNotFound, match=r"^Servable not found for request: Specific\(half_plus_two, 3\)$"):
        manager.resolve("half_plus_two", label="next")  # a label on a version not loaded
    with pytest.raises(UnknownVersionLabel, match=r"^Unrecognized servable version label: canary$") as caught:
        manager.resolve("half_plus_two", label="canary")
    assert caught.value.http_status == 400
    with pytest.raises(ModelNotFound, match=r"^Servable not found for request: Latest\(foo\)$") as missing:
        manager.resolve("foo")
    assert missing.value.http_status == 404
    with pytest.raises(ModelNotFound, match=r"^Servable not found for request: Specific\(foo, 1\)$"):
        manager.resolve("foo", version=1)


def test_routed_labels_come_from_the_routing_file(repo: Path, loader: FakeLoader) -> None:
    manager = routed_manager(repo, loader)
    assert manager.loaded() == {"ctr": [1, 2]}
    assert manager.resolve("ctr", label="stable") == 1
    assert manager.resolve("ctr", label="canary") == 2
    assert manager.resolve("ctr", version=2, key="ignored when pinned") == 2


# -- routing -------------------------------------------------------------------------------


def test_keys_split_90_10_and_stick_across_managers(repo: Path, loader: FakeLoader) -> None:
    first, second = routed_manager(repo, loader), routed_manager(repo, FakeLoader())
    keys = [f"user-{n}" for n in range(10_000)]
    assigned = [first.resolve("ctr", key=key) for key in keys]
    shares = Counter(assigned)
    assert abs(shares[2] / len(keys) - 0.10) <= 0.02, shares
    assert [second.resolve("ctr", key=key) for key in keys] == assigned  # another process, or a restart
    with first.lease("ctr", key="user-7") as servable:
        assert servable.version == assigned[7]


def test_growing_a_canary_keeps_its_first_keys(tmp_path: Path, loader: FakeLoader) -> None:
    write_version(tmp_path / "ctr", 1)
    write_version(tmp_path / "ctr", 2)
    publish(tmp_path, "ctr", 1, 100)
    publish(tmp_path, "ctr", 2, 5)
    manager = routed_manager(tmp_path, loader)
    keys = [f"user-{n}" for n in range(10_000)]
    at_five = {key for key in keys if manager.resolve("ctr", key=key) == 2}
    promote(tmp_path, "ctr", 2, 10)
    manager.poll_once()
    at_ten = {key for key in keys if manager.resolve("ctr", key=key) == 2}
    assert at_five < at_ten
    assert abs(len(at_five) / len(keys) - 0.05) <= 0.02 and abs(len(at_ten) / len(keys) - 0.10) <= 0.02


def test_unkeyed_requests_draw_by_the_split(repo: Path, loader: FakeLoader) -> None:
    manager = routed_manager(repo, loader, rng=random.Random(1234))
    shares = Counter(manager.resolve("ctr") for _ in range(10_000))
    assert abs(shares[2] / 10_000 - 0.10) <= 0.02, shares
    with manager.lease("ctr") as servable:
        assert servable.version in (1, 2)


def test_a_routing_change_takes_effect_only_once_its_version_is_loaded(repo: Path, loader: FakeLoader) -> None:
    manager = routed_manager(repo, loader)
    keys = [f"user-{n}" for n in range(2_000)]
    before = {key: manager.resolve("ctr", key=key) for key in keys}
    write_version(repo / "ctr", 3)
    promote(repo, "ctr", 3, 50)  # stable 1 keeps 50%, version 2 leaves
    load_started, release = loader.block("ctr", 3)
    poll = threading.Thread(target=manager.poll_once)
    poll.start()
    try:
        assert load_started.wait(WAIT_S)
        # The new routing names version 3, still loading: the old routing serves, labels included.
        assert {key: manager.resolve("ctr", key=key) for key in keys} == before
        assert manager.resolve("ctr", label="canary") == 2
        with pytest.raises(ModelNotFound):
            manager.resolve("ctr", version=3)
        assert manager.status("ctr", 3)["model_version_status"][0]["state"] == "LOADING"
    finally:
        release.set()
        poll.join(WAIT_S)
    after = Counter(manager.resolve("ctr", key=key) for key in keys)
    assert set(after) == {1, 3}
    assert manager.resolve("ctr", label="canary") == 3
    assert manager.loaded() == {"ctr": [1, 3]}  # version 2 is routed nothing: unloaded
    assert ("ctr", 2) in loader.closed


def test_no_lease_fails_while_a_version_and_a_routing_change_land(repo: Path, loader: FakeLoader) -> None:
    manager = routed_manager(repo, loader)
    stop = threading.Event()
    failures: list[str] = []
    leases = Counter[int]()
    counted = threading.Lock()
    enough_after_swap = threading.Event()

    def client(number: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                with manager.lease("ctr", key=f"client-{number}-{n % 50}") as servable:
                    if servable.closed:
                        failures.append(f"version {servable.version} leased after it was closed")
                    version = servable.version
            except Exception as exc:  # every failure is the test's finding
                failures.append(repr(exc))
                continue
            with counted:
                leases[version] += 1
                if leases[3] >= 200:
                    enough_after_swap.set()

    clients = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for thread in clients:
        thread.start()
    try:
        write_version(repo / "ctr", 3)
        promote(repo, "ctr", 3, 100)  # all traffic to 3: 1 and 2 are drained and unloaded
        manager.poll_once()
        assert enough_after_swap.wait(WAIT_S)
    finally:
        stop.set()
        for thread in clients:
            thread.join(WAIT_S)
    assert failures == []
    assert manager.loaded() == {"ctr": [3]}
    assert sorted(loader.closed) == [("ctr", 1), ("ctr", 2)]


# -- broken, half-written and vanishing versions ----------------------------------------------


@pytest.mark.parametrize("failure", ["load", "warm-up"])
def test_a_broken_version_never_replaces_the_good_one(tmp_path: Path, loader: FakeLoader, failure: str) -> None:
    write_version(tmp_path, 1, manifest=False)
    changes: list[tuple[str, int, str]] = []
    manager = ModelManager([config_model(tmp_path)], loader=loader, on_change=lambda *change: changes.append(change))
    manager.poll_once()
    (loader.fail if failure == "load" else loader.nan).add(("half_plus_two", 2))
    write_version(tmp_path, 2, manifest=False)
    manager.poll_once()
    assert manager.loaded() == {"half_plus_two": [1]}
    assert manager.resolve("half_plus_two") == 1
    broken = manager.status("half_plus_two", 2)["model_version_status"][0]
    assert broken["state"] == "END"
    assert broken["status"]["error_code"] != "OK"
    expected = r"failed to load: SavedModel at .* is corrupt" if failure == "load" else r"warm-up failed: .*NaN.*"
    assert re.fullmatch(expected, broken["status"]["error_message"]), broken
    assert ("half_plus_two", 2, "END") in changes
    if failure == "warm-up":
        assert ("half_plus_two", 2) in loader.closed  # loaded, refused, released

    manager.poll_once()
    manager.poll_once()
    assert loader.loads.count(("half_plus_two", 2)) == 1  # not retried every poll

    loader.fail.clear()
    loader.nan.clear()
    (tmp_path / "2" / "saved_model.pb").write_bytes(b"republished")
    stat = (tmp_path / "2").stat()
    os.utime(tmp_path / "2", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    manager.poll_once()
    assert loader.loads.count(("half_plus_two", 2)) == 2
    assert manager.loaded() == {"half_plus_two": [2]}


def test_a_routing_naming_a_broken_version_is_not_applied(repo: Path, loader: FakeLoader) -> None:
    manager = routed_manager(repo, loader)
    loader.fail.add(("ctr", 3))
    write_version(repo / "ctr", 3)
    promote(repo, "ctr", 3, 100)
    manager.poll_once()
    manager.poll_once()
    assert manager.loaded() == {"ctr": [1, 2]}  # the 90/10 routing keeps serving
    assert manager.resolve("ctr", label="stable") == 1
    assert manager.status("ctr", 3)["model_version_status"][0]["state"] == "END"
    assert loader.loads.count(("ctr", 3)) == 1


def test_half_written_versions_are_ignored_until_complete(tmp_path: Path, loader: FakeLoader) -> None:
    base = tmp_path / "ctr"
    write_version(base, 1)
    write_version(base, 2, saved_model=False)  # the copy has not reached saved_model.pb yet
    write_version(base, 3, manifest=False)  # a repository version is complete with its manifest
    (base / ".tmp-4").mkdir()
    (base / ".tmp-4" / "saved_model.pb").write_bytes(b"staging")
    manager = routed_manager(tmp_path, loader)
    assert manager.loaded() == {"ctr": [1]}
    assert loader.loads == [("ctr", 1)]
    (base / "2" / "saved_model.pb").write_bytes(b"done")
    manager.poll_once()
    assert manager.loaded() == {"ctr": [2]}  # nothing routed: the newest complete version


def test_unloading_waits_for_leases_in_flight(tmp_path: Path, loader: FakeLoader) -> None:
    write_version(tmp_path, 1, manifest=False)
    unloading = threading.Event()
    manager = ModelManager(
        [config_model(tmp_path)],
        loader=loader,
        on_change=lambda model, version, state: unloading.set() if (version, state) == (1, UNLOADING) else None,
    )
    manager.poll_once()
    in_lease, finish = threading.Event(), threading.Event()

    def request() -> None:
        with manager.lease("half_plus_two") as servable:
            in_lease.set()
            assert finish.wait(WAIT_S)
            assert not servable.closed

    client = threading.Thread(target=request)
    client.start()
    assert in_lease.wait(WAIT_S)
    write_version(tmp_path, 2, manifest=False)
    poll = threading.Thread(target=manager.poll_once)
    poll.start()
    try:
        assert unloading.wait(WAIT_S)
        assert ("half_plus_two", 1) not in loader.closed  # draining: the request still holds it
        assert manager.resolve("half_plus_two") == 2  # new requests already go to the new one
        with pytest.raises(ModelNotFound):
            manager.resolve("half_plus_two", version=1)
    finally:
        finish.set()
        client.join(WAIT_S)
        poll.join(WAIT_S)
    assert ("half_plus_two", 1) in loader.closed
    assert manager.status("half_plus_two", 1)["model_version_status"][0]["state"] == "END"


def test_a_version_whose_directory_disappears_is_unloaded(tmp_path: Path, loader: FakeLoader) -> None:
    for version in (1, 2):
        write_version(tmp_path, version, manifest=False)
    manager = ModelManager([config_model(tmp_path, AllVersions())], loader=loader)
    manager.poll_once()
    (tmp_path / "2").rename(tmp_path / ".deleted-2")
    manager.poll_once()
    assert manager.loaded() == {"half_plus_two": [1]}
    assert loader.closed == [("half_plus_two", 2)]


# -- the routing file -------------------------------------------------------------------------


def test_a_damaged_routing_file_keeps_the_last_good_one(repo: Path, loader: FakeLoader) -> None:
    manager = routed_manager(repo, loader)
    keys = [f"user-{n}" for n in range(500)]
    before = [manager.resolve("ctr", key=key) for key in keys]
    routing_file = repo / "ctr" / ROUTING_FILE
    good = routing_file.read_text()
    for damaged in ('{"schema": "weiflow.routing/1", "traffic": {"1": 90', "[]", good.replace('"ctr"', '"other"')):
        routing_file.write_text(damaged)
        manager.poll_once()
        assert [manager.resolve("ctr", key=key) for key in keys] == before
        assert manager.loaded() == {"ctr": [1, 2]}
    routing_file.unlink()
    manager.poll_once()
    assert manager.loaded() == {"ctr": [1, 2]}
    routing_file.write_text(good)
    promote(repo, "ctr", 1, 100)  # repaired, then changed: the change applies
    manager.poll_once()
    assert manager.loaded() == {"ctr": [1]}


# -- the repository and the lifecycle -------------------------------------------------------------


def test_for_repository_serves_every_model_or_those_named(tmp_path: Path, loader: FakeLoader) -> None:
    for model in ("ctr", "cvr"):
        write_version(tmp_path / model, 1)
    (tmp_path / ".weiflow").mkdir()  # hidden: not a model
    assert routed_manager(tmp_path, loader).loaded() == {"ctr": [1], "cvr": [1]}
    assert routed_manager(tmp_path, loader, only=["cvr"]).loaded() == {"cvr": [1]}
    with pytest.raises(ConfigError, match=r"has no model 'ctx' \(models: ctr, cvr\)"):
        ModelManager.for_repository(str(tmp_path), only=["ctx"])
    with pytest.raises(ConfigError, match="local directory"):
        ModelManager.for_repository("s3://bucket/models")
    with pytest.raises(ConfigError, match="no such directory"):
        ModelManager.for_repository(str(tmp_path / "nowhere"))


def test_a_model_published_later_is_served_without_a_restart_and_readiness_holds(
    tmp_path: Path, loader: FakeLoader
) -> None:
    write_version(tmp_path / "ctr", 1)
    every = routed_manager(tmp_path, loader)
    only_ctr = routed_manager(tmp_path, loader, only=["ctr"])
    (tmp_path / "cvr").mkdir()  # a first publish has begun: the model directory, no version yet
    every.poll_once()
    assert every.ready()  # a replica serving ctr stays in service while cvr has nothing to load
    with pytest.raises(ModelNotFound):
        every.resolve("cvr")
    write_version(tmp_path / "cvr", 1)
    every.poll_once()
    only_ctr.poll_once()
    assert every.loaded() == {"ctr": [1], "cvr": [1]}
    assert only_ctr.loaded() == {"ctr": [1]}  # --model_name picked one model: it serves only that one


def test_an_empty_repository_is_served_from_its_first_publish(tmp_path: Path, loader: FakeLoader) -> None:
    every = ModelManager.for_repository(str(tmp_path), loader=loader, poll_s=3600)
    every.poll_once()
    assert every.ready() and every.loaded() == {}  # nothing to wait for: a fresh platform's service is in service
    write_version(tmp_path / "ctr", 1)
    every.poll_once()
    assert every.loaded() == {"ctr": [1]}
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no models yet, and --file_system_poll_wait_seconds=0"):
        ModelManager.for_repository(str(tmp_path / "empty"), poll_s=0)  # it would never look again


def test_stop_unloads_everything_and_a_failing_hook_breaks_nothing(tmp_path: Path, loader: FakeLoader) -> None:
    write_version(tmp_path, 1, manifest=False)

    def hook(model: str, version: int, state: str) -> None:
        raise RuntimeError("metrics backend down")

    manager = ModelManager([config_model(tmp_path)], loader=loader, on_change=hook, poll_s=3600)
    manager.start()
    assert manager.ready()
    manager.stop()
    assert loader.closed == [("half_plus_two", 1)]
    assert not manager.ready()
    assert manager.loaded() == {"half_plus_two": []}


def test_versions_load_one_at_a_time(tmp_path: Path, loader: FakeLoader) -> None:
    write_version(tmp_path, 1, manifest=False)
    manager = ModelManager([config_model(tmp_path, AllVersions())], loader=loader)
    manager.poll_once()
    write_version(tmp_path, 2, manifest=False)
    write_version(tmp_path, 3, manifest=False)
    load_started, release = loader.block("half_plus_two", 3)
    poll = threading.Thread(target=manager.poll_once)
    poll.start()
    try:
        assert load_started.wait(WAIT_S)
        assert loader.loads == [("half_plus_two", 1), ("half_plus_two", 3)]  # 2 waits: one extra in memory
        assert manager.status("half_plus_two", 2)["model_version_status"][0]["state"] == "START"
    finally:
        release.set()
        poll.join(WAIT_S)
    assert manager.loaded() == {"half_plus_two": [1, 2, 3]}


def test_a_load_finishing_after_stop_is_closed(tmp_path: Path, loader: FakeLoader) -> None:
    write_version(tmp_path, 1, manifest=False)
    manager = ModelManager([config_model(tmp_path)], loader=loader)
    manager.poll_once()
    write_version(tmp_path, 2, manifest=False)
    load_started, release = loader.block("half_plus_two", 2)
    poll = threading.Thread(target=manager.poll_once)
    poll.start()
    assert load_started.wait(WAIT_S)
    manager.stop()
    release.set()
    poll.join(WAIT_S)
    assert sorted(loader.closed) == [("half_plus_two", 1), ("half_plus_two", 2)]
    assert manager.loaded() == {"half_plus_two": []}
