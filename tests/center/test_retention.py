"""Retention: every policy, the never-delete rules, grace periods, crashes and concurrent sweeps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from weiflow.center.ingest import ingest_events
from weiflow.center.models import AuditEntry, Dataset, Role
from weiflow.center.repository import Principal, set_deletion, set_pin
from weiflow.center.retention import PeriodicSweeper, RootedDeleter, find_orphans, parse_policy, sweep
from weiflow.errors import ConfigError
from weiflow.tracking import DatasetInfo, Event, EventKind

T0 = datetime(2026, 11, 1, tzinfo=UTC)
ADMIN = Principal("root", Role.ADMIN)


def at(days: float) -> str:
    return (T0 + timedelta(days=days)).isoformat()


class World:
    """Writes datasets on disk and tells the center about them through events, as the runtime does."""

    def __init__(self, sessions: sessionmaker[Session], root: Path) -> None:
        self.sessions = sessions
        self.root = root
        self.roots = (f"file://{root}",)  # the storage roots a sweep may delete under

    def send(self, *events: Event) -> None:
        # Received when sent: retention clocks run on the center's receipt time.
        with self.sessions() as session:
            ingest_events(session, list(events), now=datetime.fromisoformat(events[0].ts))

    def write(
        self,
        name: str,
        retention: str,
        *,
        run: str = "r1",
        day: float = 0,
        consumers: list[str] | None = None,
        end: bool = True,
        path: Path | None = None,
    ) -> str:
        path = path or self.root / name / run
        path.mkdir(parents=True)
        (path / "part-0.json").write_text("[1, 2, 3]")
        (path / "_SUCCESS").write_text("{}")
        uri = f"file://{path}"
        writes = {name: {"uri": uri, "retention": retention, "consumers": consumers or []}}
        info = DatasetInfo(name, uri, "json", 9, 1, 3)
        self.send(
            Event(
                EventKind.NODE_STARTED, run, "p", node="make", ts=at(day), detail={"writes": writes, "owner": "ranking"}
            ),
            Event(EventKind.DATASET_WRITTEN, run, "p", node="make", module="w", dataset=info, ts=at(day)),
            Event(EventKind.NODE_SUCCEEDED, run, "p", node="make", ts=at(day)),
        )
        if end:
            self.finish(run, day)
        return uri

    def read(
        self, uri: str, *, run: str, node: str, day: float, state: EventKind | None = EventKind.NODE_SUCCEEDED
    ) -> None:
        self.send(Event(EventKind.NODE_STARTED, run, "p", node=node, ts=at(day), detail={"reads": {"x": uri}}))
        if state is not None:
            self.send(Event(state, run, "p", node=node, ts=at(day)))

    def finish(self, run: str, day: float) -> None:
        self.send(Event(EventKind.RUN_SUCCEEDED, run, "p", ts=at(day)))

    def state(self, uri: str) -> tuple[str, str | None]:
        with self.sessions() as session:
            row = session.execute(select(Dataset.state, Dataset.reason).where(Dataset.uri == uri)).one()
            return row.state, row.reason


@pytest.fixture
def world(sessions: sessionmaker[Session], tmp_path: Path) -> World:
    return World(sessions, tmp_path / "storage")


def exists(uri: str) -> bool:
    return Path(uri.removeprefix("file://")).exists()


def test_policies_parse_and_bad_ones_are_refused() -> None:
    assert parse_policy("ttl:7").n == 7 and parse_policy("keep-last:3").kind == "keep-last"
    assert parse_policy("consumed").kind == "consumed"
    for bad in ("ttl:0", "ttl", "forever", "idle:-1"):
        with pytest.raises(ConfigError, match="use ttl"):
            parse_policy(bad)


def test_ttl_marks_after_the_days_then_deletes_after_grace_keeping_a_tombstone(world: World) -> None:
    uri = world.write("a", "ttl:7")
    assert sweep(world.sessions, roots=world.roots, now=T0 + timedelta(days=6)).marked == []
    report = sweep(world.sessions, roots=world.roots, now=T0 + timedelta(days=8), grace=timedelta(days=2))
    assert [m["uri"] for m in report.marked] == [uri] and report.deleted == []
    state, reason = world.state(uri)
    assert state == "pending-deletion" and reason is not None and reason.startswith("ttl:7: written 8.0 days ago")
    assert exists(uri)
    assert sweep(world.sessions, roots=world.roots, now=T0 + timedelta(days=9), grace=timedelta(days=2)).deleted == []
    report = sweep(world.sessions, roots=world.roots, now=T0 + timedelta(days=10, seconds=1))
    assert [d["uri"] for d in report.deleted] == [uri]
    assert world.state(uri)[0] == "deleted" and not exists(uri)
    assert Path(uri.removeprefix("file://")).parent.exists()  # only the dataset's own path went


def test_idle_counts_from_the_last_read(world: World) -> None:
    uri = world.write("a", "idle:5")
    world.read(uri, run="r2", node="use", day=4)
    world.finish("r2", 4)
    assert sweep(world.sessions, roots=world.roots, now=T0 + timedelta(days=8)).marked == []
    assert [m["uri"] for m in sweep(world.sessions, roots=world.roots, now=T0 + timedelta(days=10)).marked] == [uri]


def test_consumed_waits_for_every_consumer_node_of_the_run(world: World) -> None:
    uri = world.write("a", "consumed", consumers=["use", "report"], end=False)
    world.read(uri, run="r1", node="use", day=0)
    world.finish("r1", 0)
    assert sweep(world.sessions, roots=world.roots, now=T0 + timedelta(days=1)).marked == []
    world.read(uri, run="r1", node="report", day=1)
    report = sweep(world.sessions, roots=world.roots, now=T0 + timedelta(days=1, hours=1))
    assert [m["reason"] for m in report.marked] == ["consumed: every consumer (report, use) succeeded"]


def test_keep_last_keeps_the_newest_n(world: World) -> None:
    uris = [world.write("m", "keep-last:2", run=f"r{i}", day=i) for i in range(4)]
    report = sweep(world.sessions, roots=world.roots, now=T0 + timedelta(days=5))
    assert sorted(m["uri"] for m in report.marked) == sorted(uris[:2])


def test_pinned_data_is_never_marked_and_a_pin_saves_a_pending_dataset(world: World) -> None:
    spec_pinned = world.write("a", "pinned")
    uri = world.write("b", "ttl:1")
    sweep(world.sessions, roots=world.roots, now=T0 + timedelta(days=2))
    with world.sessions() as session:
        dataset_id = session.scalar(select(Dataset.id).where(Dataset.uri == uri))
        assert dataset_id is not None
        set_pin(session, ADMIN, dataset_id, pinned=True)
    report = sweep(world.sessions, roots=world.roots, now=T0 + timedelta(days=30))
    assert report.deleted == [] and exists(uri) and exists(spec_pinned)
    assert world.state(uri) == ("live", "pinned by root")


def test_data_a_queued_or_running_run_uses_is_never_deleted(world: World) -> None:
    uri = world.write("a", "ttl:1")
    world.send(Event(EventKind.RUN_STARTED, "r9", "p", ts=at(1), detail={"queued": True, "uses": [uri]}))
    report = sweep(world.sessions, roots=world.roots, now=T0 + timedelta(days=2))
    assert [k["uri"] for k in report.kept] == [uri] and report.marked == []
    world.finish("r9", 3)
    sweep(world.sessions, roots=world.roots, now=T0 + timedelta(days=4), grace=timedelta(days=1))
    # Marked and past its grace period, but a run that will write it starts: the claim must fail.
    world.send(Event(EventKind.RUN_STARTED, "r10", "p", ts=at(4.5), detail={"uses": [uri]}))
    report = sweep(world.sessions, roots=world.roots, now=T0 + timedelta(days=30), dry_run=True)
    assert report.would_delete == [] and [k["uri"] for k in report.kept] == [uri]
    assert sweep(world.sessions, roots=world.roots, now=T0 + timedelta(days=30)).deleted == [] and exists(uri)
    world.finish("r10", 30)
    assert [d["uri"] for d in sweep(world.sessions, roots=world.roots, now=T0 + timedelta(days=31)).deleted] == [uri]


def test_a_dataset_read_during_its_grace_period_is_kept(world: World) -> None:
    uri = world.write("a", "ttl:1")
    sweep(world.sessions, roots=world.roots, now=T0 + timedelta(days=2), grace=timedelta(days=3))
    world.read(uri, run="r2", node="use", day=3)
    world.finish("r2", 3)
    report = sweep(world.sessions, roots=world.roots, now=T0 + timedelta(days=6), grace=timedelta(days=3))
    assert [u["uri"] for u in report.unmarked] == [uri] and report.deleted == [] and report.marked == []
    assert world.state(uri) == ("live", "kept: read during the grace period") and exists(uri)


def test_files_behind_a_deployed_model_version_are_never_deleted(world: World) -> None:
    uri = world.write("model", "keep-last:1", run="r1", day=0)
    world.write("model", "keep-last:1", run="r2", day=1)
    world.send(
        Event(
            EventKind.METRICS,
            "r1",
            "p",
            ts=at(1),
            detail={"model": {"name": "ctr", "version": "1", "uri": uri + "/1", "deployed": True}},
        )
    )
    report = sweep(world.sessions, roots=world.roots, now=T0 + timedelta(days=10))
    assert [k["uri"] for k in report.kept] == [uri] and report.marked == []


def test_confirm_deletes_at_the_next_sweep_and_reject_holds_it(world: World) -> None:
    a, b = world.write("a", "ttl:1"), world.write("b", "ttl:1")
    sweep(world.sessions, roots=world.roots, now=T0 + timedelta(days=2), grace=timedelta(days=7))
    with world.sessions() as session:
        ids = dict(session.execute(select(Dataset.uri, Dataset.id)).all())
        set_deletion(session, ADMIN, ids[a], confirm=True)
        set_deletion(session, ADMIN, ids[b], confirm=False)
    report = sweep(world.sessions, roots=world.roots, now=T0 + timedelta(days=2, hours=1), grace=timedelta(days=7))
    assert [d["uri"] for d in report.deleted] == [a] and report.marked == []
    assert world.state(b) == ("live", "deletion rejected by root") and exists(b)


def test_dry_run_lists_what_would_go_and_why_without_changing_anything(world: World) -> None:
    uri = world.write("a", "ttl:1")
    report = sweep(world.sessions, roots=world.roots, now=T0 + timedelta(days=2), dry_run=True)
    assert [(m["uri"], m["reason"][:5]) for m in report.marked] == [(uri, "ttl:1")]
    assert world.state(uri) == ("live", None)
    sweep(world.sessions, roots=world.roots, now=T0 + timedelta(days=2), grace=timedelta(days=1))
    report = sweep(world.sessions, roots=world.roots, now=T0 + timedelta(days=4), dry_run=True)
    assert [w["uri"] for w in report.would_delete] == [uri] and exists(uri)
    assert world.state(uri)[0] == "pending-deletion"


def test_two_sweeps_at_once_delete_each_dataset_exactly_once(world: World) -> None:
    uris = [world.write(f"d{i}", "ttl:1") for i in range(12)]
    sweep(world.sessions, roots=world.roots, now=T0 + timedelta(days=2), grace=timedelta(days=1))
    deleted: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(2)

    delete = RootedDeleter(world.roots)

    def slow_delete(uri: str) -> None:
        with lock:
            deleted.append(uri)
        delete(uri)

    reports: list[Any] = []

    def run() -> None:
        barrier.wait()
        reports.append(sweep(world.sessions, now=T0 + timedelta(days=4), deleter=slow_delete))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(deleted) == sorted(uris)  # every one, none twice
    assert sum(len(r.deleted) for r in reports) == 12
    assert all(world.state(u)[0] == "deleted" for u in uris)


def test_a_sweep_that_crashes_after_claiming_is_finished_by_the_next(world: World) -> None:
    uri = world.write("a", "ttl:1")
    sweep(world.sessions, roots=world.roots, now=T0 + timedelta(days=2), grace=timedelta(days=1))

    def crash(uri: str) -> None:
        raise SystemExit("killed mid-delete")  # not an Exception: the sweep process dies here

    with pytest.raises(SystemExit):
        sweep(world.sessions, now=T0 + timedelta(days=4), deleter=crash)
    assert world.state(uri)[0] == "deleting" and exists(uri)
    assert (
        sweep(world.sessions, roots=world.roots, now=T0 + timedelta(days=4, minutes=5)).deleted == []
    )  # lease still held
    report = sweep(world.sessions, roots=world.roots, now=T0 + timedelta(days=4, hours=1))
    assert [d["uri"] for d in report.deleted] == [uri] and not exists(uri)


def test_a_crash_between_marking_and_deleting_loses_nothing(world: World) -> None:
    uri = world.write("a", "ttl:1")
    sweep(
        world.sessions, roots=world.roots, now=T0 + timedelta(days=2), grace=timedelta(days=1)
    )  # marked; then the process exits
    assert world.state(uri)[0] == "pending-deletion" and exists(uri)
    report = sweep(world.sessions, roots=world.roots, now=T0 + timedelta(days=5))
    assert [d["uri"] for d in report.deleted] == [uri]


def test_a_failed_delete_goes_back_to_pending_with_the_error(world: World) -> None:
    uri = world.write("a", "ttl:1")
    sweep(world.sessions, roots=world.roots, now=T0 + timedelta(days=2), grace=timedelta(days=1))

    def refuse(uri: str) -> None:
        raise PermissionError("read-only file system")

    report = sweep(world.sessions, now=T0 + timedelta(days=4), deleter=refuse)
    assert [f["error"] for f in report.failed] == ["read-only file system"]
    state, reason = world.state(uri)
    assert state == "pending-deletion" and reason is not None and "read-only" in reason
    # A passing failure: the next sweep tries again, and the reason holds the last failure, not one per sweep.
    assert len(sweep(world.sessions, now=T0 + timedelta(days=5), deleter=refuse).failed) == 1
    reason = world.state(uri)[1]
    assert reason is not None and reason.startswith("ttl:1: ") and reason.count("delete failed") == 1


def dataset_row(world: World, uri: str) -> Dataset:
    with world.sessions() as session:
        row = session.scalars(select(Dataset).where(Dataset.uri == uri)).one()
        session.expunge(row)
        return row


def test_a_directory_outside_the_storage_roots_survives_even_a_confirmed_deletion(world: World, tmp_path: Path) -> None:
    inside = world.write("a", "ttl:1")
    outside = world.write("b", "ttl:1", path=tmp_path / "elsewhere" / "precious")
    sweep(world.sessions, roots=world.roots, now=T0 + timedelta(days=2), grace=timedelta(days=7))
    with world.sessions() as session:
        for dataset_id in session.scalars(select(Dataset.id)):
            set_deletion(session, ADMIN, dataset_id, confirm=True)
    report = sweep(world.sessions, roots=world.roots, now=T0 + timedelta(days=2, hours=1))
    assert [d["uri"] for d in report.deleted] == [inside] and not exists(inside)
    assert [(f["uri"], f["refused"]) for f in report.failed] == [(outside, True)]
    assert "outside every storage root" in report.failed[0]["error"] and world.roots[0] in report.failed[0]["error"]
    assert exists(outside) and (tmp_path / "elsewhere" / "precious" / "part-0.json").is_file()
    assert "1 refused" in report.summary()
    # Visible to operators: still pending, the refusal as its reason, audited.
    row = dataset_row(world, outside)
    assert row.state == "pending-deletion" and row.reason is not None
    assert row.reason.startswith("ttl:1: ") and "deletion refused: refusing to delete " + outside in row.reason
    assert row.confirmed_by is None and row.delete_after is None
    with world.sessions() as session:
        actions = session.scalars(select(AuditEntry.action).where(AuditEntry.target_id == str(row.id))).all()
    assert actions.count("retention.delete-refused") == 1
    # Not retried by itself, however many sweeps run ...
    for days in (3, 30, 300):
        later = sweep(world.sessions, roots=world.roots, now=T0 + timedelta(days=days))
        assert later.failed == [] and later.deleted == [] and exists(outside)
    # ... while a new confirmation (say, after adding the root) gets one more try, and one note.
    with world.sessions() as session:
        set_deletion(session, ADMIN, row.id, confirm=True)
    assert len(sweep(world.sessions, roots=world.roots, now=T0 + timedelta(days=301)).failed) == 1
    reason = world.state(outside)[1]
    assert reason is not None and reason.count("deletion refused") == 1 and exists(outside)
    wider = (*world.roots, f"file://{tmp_path / 'elsewhere'}")
    with world.sessions() as session:
        set_deletion(session, ADMIN, row.id, confirm=True)
    report = sweep(world.sessions, roots=wider, now=T0 + timedelta(days=302))
    assert [d["uri"] for d in report.deleted] == [outside] and not exists(outside)
    assert (tmp_path / "elsewhere").is_dir()  # a root itself stays


def test_a_dataset_that_is_a_link_out_of_the_roots_is_refused_and_links_inside_are_not_followed(
    world: World, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    # A dataset whose URI is a link inside the root pointing outside it.
    world.root.mkdir(parents=True)
    (world.root / "link").symlink_to(victim)
    linked = world.write("l", "ttl:1", path=world.root / "fresh")  # registers a real directory ...
    with world.sessions() as session:  # ... then the record is pointed at the link, as a forged event could
        session.execute(update(Dataset).where(Dataset.uri == linked).values(uri=f"file://{world.root / 'link'}"))
        session.commit()
    # A dataset holding a link to the outside: the dataset goes, the link's target stays.
    holder = world.write("h", "ttl:1")
    (Path(holder.removeprefix("file://")) / "escape").symlink_to(victim)
    # '..' that climbs out of the root.
    climber = world.write("c", "ttl:1", path=tmp_path / "climbed")
    climbing = f"file://{world.root}/../climbed"
    with world.sessions() as session:
        session.execute(update(Dataset).where(Dataset.uri == climber).values(uri=climbing))
        session.commit()
    sweep(world.sessions, roots=world.roots, now=T0 + timedelta(days=2), grace=timedelta(days=1))
    report = sweep(world.sessions, roots=world.roots, now=T0 + timedelta(days=4))
    assert [d["uri"] for d in report.deleted] == [holder] and not exists(holder)
    refusals = {f["uri"]: f["error"] for f in report.failed}
    assert set(refusals) == {f"file://{world.root / 'link'}", climbing}
    assert f"resolves to {victim}" in refusals[f"file://{world.root / 'link'}"]
    assert "'..'" in refusals[climbing]
    assert (victim / "keep.txt").read_text() == "mine" and (world.root / "link").is_symlink()
    assert (tmp_path / "climbed" / "part-0.json").is_file()


def test_orphans_are_unclaimed_old_directories(world: World, tmp_path: Path) -> None:
    world.write("a", "ttl:9")
    stray = world.root / "stray" / "x"
    stray.mkdir(parents=True)
    (stray / "part-0").write_text("lost")
    now = datetime.now(UTC)
    with world.sessions() as session:
        assert find_orphans(session, [f"file://{world.root}"], older_than_days=1, now=now) == []
        orphans = find_orphans(session, [f"file://{world.root}"], older_than_days=1, now=now + timedelta(days=2))
    assert [(o.path, o.files, o.size_bytes) for o in orphans] == [(str(stray), 1, 4)]


def test_the_scheduled_sweeper_sweeps_until_stopped(world: World) -> None:
    uri = world.write("a", "ttl:1")
    sweeper = PeriodicSweeper(
        world.sessions,
        timedelta(seconds=0.05),
        roots=world.roots,
        grace=timedelta(0),
        clock=lambda: T0 + timedelta(days=3),
    )
    sweeper.start()
    try:
        deadline = time.monotonic() + 10
        while world.state(uri)[0] != "deleted":
            assert time.monotonic() < deadline, "the scheduled sweep never deleted the expired dataset"
            time.sleep(0.02)
    finally:
        sweeper.stop()
    assert not exists(uri) and sweeper.sweeps >= 1
    done = sweeper.sweeps
    time.sleep(0.2)
    assert sweeper.sweeps == done  # stopped means stopped


def test_weiflow_retention_sweep_is_the_centers_sweep(tmp_path: Path) -> None:
    env = {**os.environ, "WEIFLOW_VAR_DIR": str(tmp_path / "var"), "WEIFLOW_DATABASE_URL": f"sqlite:///{tmp_path}/c.db"}
    weiflow = [sys.executable, "-m", "weiflow"]
    dry = subprocess.run(
        [*weiflow, "retention", "sweep", "--dry-run", "--json"], env=env, capture_output=True, text=True
    )
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["dry_run"] is True and (tmp_path / "c.db").is_file()
    wrong = subprocess.run([*weiflow, "retention", "purge"], env=env, capture_output=True, text=True)
    assert wrong.returncode == 2 and "the one subcommand is 'sweep'" in wrong.stderr
