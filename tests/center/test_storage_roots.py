"""Retention deletes only strictly inside the storage roots, on the real path at the moment of deletion."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fsspec
import pytest
from sqlalchemy import select, update

from weiflow.center.db import make_engine, make_sessionmaker, migrate
from weiflow.center.ingest import ingest_events
from weiflow.center.models import Dataset
from weiflow.center.retention import DeletionRefused, RootedDeleter, sweep
from weiflow.errors import ConfigError
from weiflow.storage import is_complete
from weiflow.tracking import DatasetInfo, Event, EventKind


def dataset(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "part-0").write_text("data")
    return path


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """The one storage root of these tests: <tmp>/data/store."""
    root = tmp_path / "data" / "store"
    root.mkdir(parents=True)
    return root


def test_a_dataset_inside_the_root_is_deleted_and_nothing_else(store: Path) -> None:
    target = dataset(store / "feed" / "samples" / "2026-11-02")
    (store / "single.json").write_text("{}")
    delete = RootedDeleter([f"file://{store}"])
    delete(f"file://{target}")
    delete(str(store / "single.json"))  # a plain path, and a dataset that is one file
    assert not target.exists() and not (store / "single.json").exists()
    assert (store / "feed" / "samples").is_dir()
    delete(f"file://{store}/feed/samples/gone")  # already gone: nothing to do, no error


def test_the_root_itself_and_anything_holding_a_root_are_refused(store: Path, tmp_path: Path) -> None:
    inner = dataset(store / "team" / "inner")
    delete = RootedDeleter([f"file://{store}", f"file://{inner}"])
    for uri in (f"file://{store}", f"file://{store}/", str(store), f"file://{inner}", f"file://{store / 'team'}"):
        with pytest.raises(DeletionRefused, match="the storage root"):
            delete(uri)
    alias = tmp_path / "alias"
    alias.symlink_to(store)  # the root under another name is still the root
    with pytest.raises(DeletionRefused, match=f"is the storage root {store}"):
        delete(f"file://{alias}")
    assert (inner / "part-0").is_file()


def test_a_sibling_sharing_a_prefix_is_outside(store: Path) -> None:
    sibling = dataset(store.with_name("store2") / "ds")
    with pytest.raises(DeletionRefused, match="outside every storage root") as refused:
        RootedDeleter([f"file://{store}"])(f"file://{sibling}")
    assert f"refusing to delete file://{sibling}" in str(refused.value) and f"file://{store}" in str(refused.value)
    assert (sibling / "part-0").is_file()


def test_dot_dot_relative_and_chained_uris_are_refused(store: Path, tmp_path: Path) -> None:
    dataset(store / "a")
    outside = dataset(tmp_path / "data" / "outside")
    delete = RootedDeleter([f"file://{store}"])
    for uri, why in (
        (f"file://{store}/../outside", "a '.' or '..' segment"),
        (
            f"file://{store}/a/../a",
            "a '.' or '..' segment",
        ),  # inside after all, but a record holding '..' is never trusted
        ("data/store/a", "is relative"),
        ("file://data/store/a", "names host 'data'"),
        ("ftp://host/data/store/a", "not storage"),
        (f"simplecache::file://{store}/a", "chains filesystems"),
    ):
        with pytest.raises(DeletionRefused, match=why):
            delete(uri)
    assert (outside / "part-0").is_file() and (store / "a" / "part-0").is_file()


def test_links_are_never_followed(store: Path, tmp_path: Path) -> None:
    victim = dataset(tmp_path / "victim")
    other = dataset(store / "other")
    (store / "out").symlink_to(victim)
    (store / "in").symlink_to(other)
    (store / "dir").symlink_to(tmp_path)
    delete = RootedDeleter([f"file://{store}"])
    with pytest.raises(DeletionRefused, match=f"outside every storage root \\(it resolves to {victim}\\)"):
        delete(f"file://{store}/out")  # a link inside the root pointing outside
    with pytest.raises(DeletionRefused, match="a symbolic link"):
        delete(f"file://{store}/in")  # a link to another dataset: deleting through it would take that one
    with pytest.raises(DeletionRefused, match="outside every storage root"):
        delete(f"file://{store}/dir/victim")  # a link on the way
    holder = dataset(store / "holder")
    (holder / "escape").symlink_to(victim)
    (holder / "nested").mkdir()
    (holder / "nested" / "escape").symlink_to(victim)
    delete(f"file://{holder}")  # the links inside go, what they point to stays
    assert not holder.exists()
    assert (victim / "part-0").is_file() and (other / "part-0").is_file() and (store / "out").is_symlink()


def test_a_directory_swapped_for_a_link_after_the_check_fails_the_walk(store: Path, tmp_path: Path) -> None:
    """Time of use: the walk from the root opens each directory without following links."""
    victim = dataset(tmp_path / "victim" / "b")
    (store / "a").symlink_to(victim.parent)  # was a directory when checked; a link when removed
    delete = RootedDeleter([f"file://{store}"])
    with pytest.raises(DeletionRefused, match="'a' on its path is no longer a directory"):
        delete._remove_beneath(f"file://{store}/a/b", str(store), ("a", "b"))
    (store / "c").mkdir()
    (store / "c" / "b").symlink_to(victim)
    with pytest.raises(DeletionRefused, match="became a symbolic link"):
        delete._remove_beneath(f"file://{store}/c/b", str(store), ("c", "b"))
    assert (victim / "part-0").is_file()


@pytest.mark.reliability(
    area="retention",
    component="retention deleter (local storage)",
    fault="a node checks its input while the dataset is being deleted; a deletion that died halfway",
    proves="the dataset leaves in one rename, before any file goes: at every moment of the removal it is "
    "gone as a whole (the node's input check fails naming it), never half there; a later deletion removes "
    "what a dead one left",
)
def test_a_dataset_disappears_whole_before_its_files_are_removed(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = dataset(store / "feed" / "samples")
    (target / "_SUCCESS").write_text("{}")
    (target / "part-1").write_text("more")
    uri = f"file://{target}"
    seen: list[tuple[bool, bool]] = []
    real_rmtree = shutil.rmtree

    def watched_rmtree(path: str, *args: Any, **kwargs: Any) -> None:
        seen.append((target.exists(), is_complete(uri)))  # what a reader sees as the files go
        real_rmtree(path, *args, **kwargs)

    watched_rmtree.avoids_symlink_attacks = real_rmtree.avoids_symlink_attacks  # type: ignore[attr-defined]
    monkeypatch.setattr(shutil, "rmtree", watched_rmtree)
    RootedDeleter([f"file://{store}"])(uri)
    assert seen == [(False, False)]
    assert sorted(p.name for p in target.parent.iterdir()) == []  # nothing hidden left either

    # A sweep that died between the rename and the end of the removal left the hidden directory; the sweep
    # taking its claim over finds the dataset gone and removes the rest.
    left = dataset(target.parent / ".samples.weiflow-deleting")
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    RootedDeleter([f"file://{store}"])(uri)
    assert not left.exists() and list(target.parent.iterdir()) == []


def test_on_an_object_store_the_completion_marker_goes_first(memory_root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fs = fsspec.filesystem("memory")
    for name in ("part-0", "part-1", "_SUCCESS"):
        with fs.open(f"{memory_root}/ds/{name}", "w") as handle:
            handle.write("x")
    removed: list[str] = []
    real_rm = type(fs).rm

    def recording_rm(self: Any, path: str, *args: Any, **kwargs: Any) -> None:
        removed.append(path.rsplit("/", 1)[1])
        real_rm(self, path, *args, **kwargs)

    monkeypatch.setattr(type(fs), "rm", recording_rm)
    RootedDeleter([memory_root])(f"{memory_root}/ds")
    assert removed == ["_SUCCESS", "ds"] and not fs.exists(f"{memory_root}/ds")


@pytest.fixture
def memory_root() -> Iterator[str]:
    root = f"memory://wf-{uuid.uuid4().hex[:8]}/store"
    yield root
    fs = fsspec.filesystem("memory")
    bucket = root.removeprefix("memory://").split("/")[0]
    if fs.exists(f"/{bucket}"):
        fs.rm(f"/{bucket}", recursive=True)


def test_object_store_uris_compare_by_protocol_and_normalised_path(memory_root: str) -> None:
    fs = fsspec.filesystem("memory")
    for name in ("store/ds/part-0", "store2/ds/part-0", "store/keep/part-0"):
        with fs.open(f"{memory_root.rsplit('/', 1)[0]}/{name}", "w") as handle:
            handle.write("x")
    delete = RootedDeleter([memory_root, "s3://bucket/weiflow"])
    delete(f"{memory_root}/ds")
    assert not fs.exists(f"{memory_root}/ds") and fs.exists(f"{memory_root}/keep/part-0")
    for uri, why in (
        (f"{memory_root}2/ds", "outside every memory storage root"),
        (f"{memory_root}/keep/../../store2", "'..' segment"),
        (f"{memory_root}//keep", "not in normal form"),
        (f"{memory_root}/./keep", "'.' or '..' segment"),
        (memory_root + "/", "is the storage root"),
        # Lexical: refused before any S3 client is needed (none is installed here).
        ("s3://bucket/weiflow", "is the storage root"),
        ("s3://bucket", "holds the storage root"),
        ("s3://bucket/weiflow2/x", "outside every s3 storage root"),
        ("s3a://other/weiflow/x", "outside every s3 storage root"),
        ("gs://bucket/weiflow/x", "outside every gs storage root"),
        (f"file:///{memory_root.removeprefix('memory://')}/keep", "outside every storage root"),
    ):
        with pytest.raises(DeletionRefused, match=why):
            delete(uri)
    assert fs.exists(f"{memory_root}/keep/part-0") and fs.exists(f"{memory_root}2/ds/part-0")


@pytest.mark.parametrize("roots", [[], ["file:///"], ["/"], ["file://relative/dir"], ["s3://bucket/../x"]])
def test_roots_that_would_allow_anything_are_a_configuration_error(roots: list[str]) -> None:
    with pytest.raises(ConfigError):
        RootedDeleter(roots)


def test_sweep_deletes_only_with_roots_or_an_explicit_deleter(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(engine)
    sessions = make_sessionmaker(engine)
    with pytest.raises(TypeError, match="needs roots="):
        sweep(sessions)
    with pytest.raises(TypeError, match="not both"):
        sweep(sessions, roots=[f"file://{tmp_path}"], deleter=lambda uri: None)
    engine.dispose()


def test_the_cli_sweep_and_orphans_use_the_configured_roots(tmp_path: Path) -> None:
    """`weiflow retention sweep` deletes under storage_roots only; `weiflow center orphans` scans all of them."""
    storage, extra, outside = tmp_path / "storage", tmp_path / "extra", tmp_path / "outside"
    targets = [dataset(storage / "a"), dataset(extra / "b"), dataset(outside / "c")]
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(engine)
    sessions = make_sessionmaker(engine)
    ts = (datetime.now(UTC) - timedelta(days=30)).isoformat()
    with sessions() as session:
        for path in targets:
            uri, name = f"file://{path}", path.name
            writes = {name: {"uri": uri, "retention": "ttl:1", "consumers": []}}
            ingest_events(
                session,
                [
                    Event(EventKind.NODE_STARTED, "r1", "p", node="n", ts=ts, detail={"writes": writes}),
                    Event(
                        EventKind.DATASET_WRITTEN,
                        "r1",
                        "p",
                        node="n",
                        ts=ts,
                        dataset=DatasetInfo(name, uri, "json", 4, 1),
                    ),
                    Event(EventKind.NODE_SUCCEEDED, "r1", "p", node="n", ts=ts),
                ],
            )
        ingest_events(session, [Event(EventKind.RUN_SUCCEEDED, "r1", "p", ts=ts)])
        # Written a month ago, whichever clock ingestion trusts: all three are due under ttl:1.
        session.execute(update(Dataset).values(created_at=datetime.now(UTC) - timedelta(days=30)))
        session.commit()
    engine.dispose()
    env = {
        **os.environ,
        "WEIFLOW_VAR_DIR": str(tmp_path / "var"),
        "WEIFLOW_DATABASE_URL": f"sqlite:///{tmp_path}/c.db",
        "WEIFLOW_STORAGE": str(storage),
        "WEIFLOW_STORAGE_ROOTS": f"{extra}, file://{tmp_path}/missing",
    }
    weiflow = [sys.executable, "-m", "weiflow"]
    # No grace period: one sweep marks them and deletes what it may.
    done = subprocess.run(
        [*weiflow, "retention", "sweep", "--grace-days", "0", "--json"], env=env, capture_output=True, text=True
    )
    report = json.loads(done.stdout)
    assert done.returncode == 1, done.stderr  # a failure to report
    assert sorted(d["uri"] for d in report["deleted"]) == sorted([f"file://{storage}/a", f"file://{extra}/b"])
    assert [(f["uri"], f["refused"]) for f in report["failed"]] == [(f"file://{outside}/c", True)]
    assert (outside / "c" / "part-0").is_file() and not (storage / "a").exists() and not (extra / "b").exists()
    with make_sessionmaker(make_engine(f"sqlite:///{tmp_path}/c.db"))() as session:
        assert session.scalar(select(Dataset.state).where(Dataset.uri == f"file://{outside}/c")) == "pending-deletion"

    stray = dataset(extra / "stray")
    old = time.time() - 40 * 86400
    os.utime(stray / "part-0", (old, old))
    found = subprocess.run([*weiflow, "center", "orphans"], env=env, capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    assert found.stdout.startswith(f"{stray}\t1 file(s)")
