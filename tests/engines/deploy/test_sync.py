"""``weiflow deploy sync``: a repository mirrored into a local directory, on local directories (file URIs)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.engines.deploy.conftest import tree_digest
from tests.modelrepo.conftest import manifest_for, write_saved_model
from weiflow.config import load_settings
from weiflow.engines.deploy import cli, sync
from weiflow.engines.deploy.sync import SyncReport, sync_forever, sync_once
from weiflow.errors import ConfigError
from weiflow.modelrepo import FEATURE_MAP_PATH, ROUTING_FILE, FileRepository, update_routing
from weiflow.modelrepo.contracts import STATE_DIR

MODEL = "feed_ctr"


class Source:
    """A model repository on local disk, published to as the deploy engine does."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = root.as_uri()  # file:///...: the sync reads it as any URI
        self.repo = FileRepository(root)
        self.count = 0

    def publish(self, traffic: int = 100, model: str = MODEL) -> int:
        self.count += 1
        export = write_saved_model(self.root.parent / "exports" / f"m{self.count}", weights=bytes([self.count]) * 9000)
        version = self.repo.add_version(model, export, manifest_for(export))
        update_routing(self.repo, model, lambda r, versions: r.publish(version, traffic, existing=versions, who="bob"))
        return version

    def promote(self, version: int, traffic: int) -> None:
        update_routing(self.repo, MODEL, lambda r, versions: r.promote(version, traffic, existing=versions, who="bob"))


@pytest.fixture
def source(tmp_path: Path) -> Source:
    return Source(tmp_path / "repository")


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def canary(source: Source, dest: Path) -> Source:
    """Version 1 mirrored into ``dest``; then version 2 published at the source with 10% of traffic."""
    source.publish()
    sync_once(source.uri, dest)
    source.publish(traffic=10)
    return source


def served(root: Path) -> dict[str, str]:
    """What a server reading ``root`` sees: every file but the bookkeeping in hidden directories and files."""
    return {
        path: digest
        for path, digest in tree_digest(root).items()
        if digest != "dir" and not any(part.startswith(".") for part in Path(path).parts)
    }


def leftovers(dest: Path, model: str = MODEL) -> list[str]:
    state = dest / model / STATE_DIR
    return sorted(p.name for p in state.iterdir() if p.name.startswith("sync-")) if state.exists() else []


def test_a_first_pass_copies_every_version_then_the_routing(source: Source, dest: Path) -> None:
    source.publish()
    source.publish(traffic=10)
    report = sync_once(source.uri, dest)
    assert report.ok and report.copied == [(MODEL, 1), (MODEL, 2)] and report.routing == [MODEL]
    assert served(dest) == served(source.root)  # byte for byte, the routing included
    local = FileRepository(dest)
    assert local.versions(MODEL) == [1, 2]
    assert local.read_routing(MODEL).traffic == {1: 90, 2: 10}
    assert leftovers(dest) == []


def test_a_pass_with_nothing_new_writes_nothing(source: Source, dest: Path) -> None:
    source.publish()
    sync_once(source.uri, dest)
    routing = dest / MODEL / ROUTING_FILE
    before = routing.stat().st_mtime_ns, routing.stat().st_ino
    report = sync_once(source.uri, dest)
    assert report == SyncReport()
    assert (routing.stat().st_mtime_ns, routing.stat().st_ino) == before  # a polling server sees no change


def test_new_versions_and_routing_changes_arrive(source: Source, dest: Path) -> None:
    source.publish()
    sync_once(source.uri, dest)
    source.publish(traffic=10)
    assert sync_once(source.uri, dest).copied == [(MODEL, 2)]
    source.promote(2, 100)
    report = sync_once(source.uri, dest)
    assert report.copied == [] and report.routing == [MODEL]
    assert FileRepository(dest).read_routing(MODEL).traffic == {2: 100}


def test_a_version_gone_at_the_source_goes_here_once_the_routing_lets_it_go(source: Source, dest: Path) -> None:
    for _ in range(3):
        source.publish()
    sync_once(source.uri, dest)
    source.repo.remove_version(MODEL, 1, who="bob")
    shutil.rmtree(source.root / MODEL / "3")  # removed by hand while live: the routing still names it
    report = sync_once(source.uri, dest)
    assert report.ok and report.removed == [(MODEL, 1)]
    assert FileRepository(dest).versions(MODEL) == [2, 3]  # 3 serves all traffic here: kept
    assert leftovers(dest) == []


def test_only_complete_versions_are_copied(source: Source, dest: Path) -> None:
    source.publish()
    half = source.root / MODEL / "2"  # what an object store shows while a version is written in place
    write_saved_model(half)
    assert sync_once(source.uri, dest).copied == [(MODEL, 1)]
    assert not (dest / MODEL / "2").exists()


def test_a_failure_mid_copy_leaves_no_visible_version_and_the_tries_are_bounded(
    canary: Source, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = served(dest)
    copies = []
    real_copy = sync._copy_file

    def failing(src_fs: object, src: str, dst: Path) -> None:
        copies.append(src)
        if len(copies) % 3 == 0:
            raise OSError(5, "Input/output error")
        real_copy(src_fs, src, dst)

    monkeypatch.setattr(sync, "_copy_file", failing)
    report = sync_once(canary.uri, dest, attempts=2, retry_wait_s=0)
    assert MODEL in report.failed and "Input/output error (attempt 2 of 2)" in report.failed[MODEL]
    assert len(copies) == 6  # two tries, each stopped at its third file
    assert served(dest) == before  # no version 2, and the routing that would route to it not written
    assert leftovers(dest) == []
    monkeypatch.undo()
    report = sync_once(canary.uri, dest)
    assert report.ok and report.copied == [(MODEL, 2)]
    assert served(dest) == served(canary.root)


def test_the_routing_waits_for_the_versions_it_names(canary: Source, dest: Path) -> None:
    (canary.root / MODEL / "2" / FEATURE_MAP_PATH).write_text("{}")  # damaged: does not match its manifest
    report = sync_once(canary.uri, dest, attempts=1)
    assert "does not match its manifest's hash" in report.failed[MODEL]
    assert FileRepository(dest).read_routing(MODEL).traffic == {1: 100}
    assert not (dest / MODEL / "2").exists() and leftovers(dest) == []


KILLABLE = """
import sys, time
import weiflow.engines.deploy.sync as sync
copy = sync._copy_file
def slow(*args):
    time.sleep(0.2)
    copy(*args)
sync._copy_file = slow
sync.sync_once(sys.argv[1], sys.argv[2])
"""


@pytest.mark.integration
def test_a_sync_killed_mid_copy_leaves_no_visible_version_and_the_next_pass_completes(
    source: Source, dest: Path
) -> None:
    source.publish()
    child = subprocess.Popen([sys.executable, "-c", KILLABLE, source.uri, str(dest)])
    try:
        deadline = time.monotonic() + 20
        while not any(p.is_file() for p in (dest / MODEL / STATE_DIR).glob("sync-staging-*/**/*")):
            assert time.monotonic() < deadline and child.poll() is None, "the sync never started copying"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(10)
    assert child.returncode == -signal.SIGKILL
    assert served(dest) == {}  # a staging directory, hidden; no version, no routing
    assert [name.startswith("sync-staging-") for name in leftovers(dest)] == [True]
    report = sync_once(source.uri, dest)
    assert report.ok and report.copied == [(MODEL, 1)]
    assert served(dest) == served(source.root) and leftovers(dest) == []


def test_a_link_in_a_source_version_is_refused(source: Source, dest: Path, tmp_path: Path) -> None:
    source.publish()
    (tmp_path / "secret").write_text("not for the pod")
    (source.root / MODEL / "1" / "assets").mkdir()
    (source.root / MODEL / "1" / "assets" / "vocab.txt").symlink_to(tmp_path / "secret")
    report = sync_once(source.uri, dest, attempts=1)
    assert "is a symbolic link" in report.failed[MODEL]
    assert served(dest) == {} and leftovers(dest) == []


def test_nothing_is_written_through_a_link_in_the_destination(source: Source, dest: Path, tmp_path: Path) -> None:
    source.publish()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dest.mkdir()
    (dest / MODEL).symlink_to(elsewhere)
    report = sync_once(source.uri, dest, attempts=1)
    assert "is a symbolic link; refusing to write through it" in report.failed[MODEL]
    assert list(elsewhere.iterdir()) == []


def test_a_second_sync_into_the_same_directory_fails_its_pass(source: Source, dest: Path) -> None:
    import fcntl

    source.publish()
    dest.mkdir()
    with (dest / sync.LOCK_FILE).open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        report = sync_once(source.uri, dest)
    assert "is locked: another sync writes to" in report.failed["*"] and served(dest) == {}
    assert sync_once(source.uri, dest).ok


def test_relative_paths_that_could_escape_are_refused() -> None:
    for name in ("../x", "a/../../x", "/etc/passwd", "a//b", "."):
        with pytest.raises(sync.ModelRepoError, match="outside the version"):
            sync._safe_relative(name)
    assert str(sync._safe_relative("variables/variables.index")) == "variables/variables.index"


def test_a_model_missing_at_the_source_changes_nothing_here(source: Source, dest: Path) -> None:
    source.publish()
    sync_once(source.uri, dest)
    before = tree_digest(dest)
    report = sync_once(source.uri, dest, ["other"], attempts=1)
    assert "not found at" in report.failed["other"] and tree_digest(dest) == before


def test_only_the_models_asked_for_are_mirrored(source: Source, dest: Path) -> None:
    source.publish()
    source.publish(model="other")
    assert sync_once(source.uri, dest, [MODEL]).copied == [(MODEL, 1)]
    assert not (dest / "other").exists()


@pytest.mark.parametrize(
    ("dest_arg", "models", "message"),
    [("relative/dir", None, "must be an absolute local directory"), (None, ["../x"], "--model: invalid model name")],
)
def test_bad_arguments_are_config_errors(
    source: Source, dest: Path, dest_arg: str | None, models: list[str] | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        sync_once(source.uri, dest_arg or dest, models)


def test_forever_passes_until_stopped(source: Source, dest: Path) -> None:
    source.publish()
    stop = threading.Event()
    reports: list[SyncReport] = []

    def on_pass(report: SyncReport) -> None:
        reports.append(report)
        if len(reports) == 1:
            source.publish(traffic=50)
        else:
            stop.set()

    sync_forever(source.uri, dest, every_s=0.01, stop=stop, on_pass=on_pass)
    assert [r.copied for r in reports] == [[(MODEL, 1)], [(MODEL, 2)]]


def test_the_command_line_runs_one_pass(source: Source, dest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source.publish()
    assert cli.main(["sync", source.uri, str(dest), "--model", MODEL, "--once"], load_settings()) == 0
    assert "sync: copied feed_ctr v1" in capsys.readouterr().err
    assert (
        cli.main(["sync", source.uri, str(dest), "--model", "missing", "--once", "--attempts", "1"], load_settings())
        == 1
    )
    assert "sync: FAILED missing: " in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--every 0"):
        cli.main(["sync", source.uri, str(dest), "--every", "0"], load_settings())
