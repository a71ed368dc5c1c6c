"""Retention under concurrency: sweeps racing each other, and a sweep racing what protects a dataset.

Each round writes fresh datasets that are due (``ttl:1``, two days old, grace 0: one sweep marks
and claims them), then runs the race in threads. A hook on the engine lets a sweep thread stop
before its k-th SQL statement, or at the claim -> delete boundary (inside the deleter), and let
the racing operation (ingesting run.started, ingesting a deploy, a pin through the repository)
run there; some rounds race freely with small random delays instead. The point, the delays and
the number of sweeps come from a seeded random generator, one choice per round: a failure names
its seed and round, and the same seed replays the same choices.

What is checked, at the moment the recording deleter is called for a URI (with a fresh session)
and at the end of each round: nothing a run, a deployed model version or a pin protects is
deleted when that protection committed before the claiming ``UPDATE`` began; no URI is deleted
twice; every due, unprotected dataset is deleted exactly once in the end, with one
``retention.delete`` audit entry. Both outcomes of each race (the sweep first, the protection
first) must occur, so the rounds really interleave. Last, a sweep slower than its lease: what a
later sweep took over from its queue is deleted once.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from tests.center.test_retention import ADMIN, T0, World, at
from tests.reliability_plugin import long_run
from weiflow.center.models import AuditEntry, Dataset, DatasetState, ModelVersion, Run, RunUse
from weiflow.center.repository import ActionError, set_pin
from weiflow.center.retention import ACTIVE_RUN_STATES, sweep
from weiflow.tracking import DatasetInfo, Event, EventKind

# Rounds per test and database: each round is one interleaving of the race.
ROUNDS = 1000 if long_run() else 60
STATEMENTS = 32  # at most this many statements one sweep sends here: a pause point before each
DELETER = -1  # the pause point at the claim -> delete boundary, inside the deleter
SEED = 20261202
WAIT_S = 0.05  # how long a paused sweep waits for the racing operation (which may wait for the sweep's lock)

_stamps = itertools.count()
_stamp_lock = threading.Lock()


def stamp() -> int:
    """A global order of events across threads: what committed before what."""
    with _stamp_lock:
        return next(_stamps)


@dataclass
class Pause:
    """Where one sweep thread stops (before statement ``at``, or at the deleter when ``at == DELETER``)
    and what it does there: release the racing operation and wait for it, or only sleep."""

    at: int
    go: threading.Event | None = None  # set: the racing operation may run
    done: threading.Event | None = None  # set by the racing operation once it committed (or gave up)
    sleep_s: float = 0.0
    seen: int = 0
    claims: list[int] = field(default_factory=list)  # stamps taken as each claiming UPDATE starts
    deleted: int = 0  # deleter calls from this sweep (its one claim takes the whole chunk or nothing)

    def reached(self) -> None:
        if self.sleep_s:
            time.sleep(self.sleep_s)
        if self.go is not None and not self.go.is_set():
            self.go.set()
            assert self.done is not None
            self.done.wait(WAIT_S)

    def statement(self, sql: str) -> None:
        upper = sql.lstrip().upper()
        if upper.startswith("UPDATE DATASETS SET STATE") and "CLAIMED_AT" in upper:  # not a lease renewal
            self.claims.append(stamp())
        if self.seen == self.at:
            self.reached()
        self.seen += 1


_local = threading.local()


def _on_statement(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
    pause: Pause | None = getattr(_local, "pause", None)
    if pause is not None:
        pause.statement(statement)


def _on_commit(session: Session) -> None:
    committed: Callable[[int], Any] | None = getattr(_local, "committed", None)
    # Taken as the protecting transaction's COMMIT returns: it committed before this stamp. Not at the
    # release of a savepoint (ingestion applies each event in one), which fires this hook too.
    if committed is not None and not session.in_nested_transaction():
        committed(stamp())


@pytest.fixture
def hooked(engine: Engine, sessions: sessionmaker[Session]) -> Iterator[Engine]:
    event.listen(engine, "before_cursor_execute", _on_statement)
    event.listen(sessions, "after_commit", _on_commit)
    yield engine
    event.remove(sessions, "after_commit", _on_commit)
    event.remove(engine, "before_cursor_execute", _on_statement)


class Recorder:
    """The sweeps' deleter: counts calls per URI and checks, with a fresh session, that nothing the
    racing operation protected before the claim is being deleted. Deletes nothing on disk."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self.calls: Counter[str] = Counter()
        self.violations: list[str] = []
        self.protected_at: dict[str, int] = {}  # uri -> stamp once its protection committed
        self.lock = threading.Lock()

    def __call__(self, uri: str) -> None:
        pause: Pause | None = getattr(_local, "pause", None)
        if pause is not None and pause.at == DELETER:
            pause.reached()  # the claim -> delete boundary: claimed and committed, no file gone yet
        with self.lock:
            if pause is not None:
                pause.deleted += 1
            self.calls[uri] += 1
            if self.calls[uri] > 1:
                self.violations.append(f"{uri} deleted {self.calls[uri]} times")
        claimed = pause.claims[0] if pause is not None and pause.claims else None
        with self.sessions() as session:
            row = session.execute(select(Dataset.state, Dataset.pinned).where(Dataset.uri == uri)).one()
            active_runs = session.scalars(
                select(Run.run_id)
                .join(RunUse, RunUse.run_pk == Run.id)
                .where(RunUse.uri == uri, Run.state.in_(ACTIVE_RUN_STATES))
            ).all()
            deployed = session.scalars(
                select(ModelVersion.version).where(
                    ModelVersion.deployed.is_(True),
                    or_(ModelVersion.uri == uri, func.substr(ModelVersion.uri, 1, len(uri) + 1) == uri + "/"),
                )
            ).all()
        if row.state != DatasetState.DELETING:
            self.violations.append(f"{uri} handed to the deleter in state {row.state}")
        if row.pinned:
            self.violations.append(f"{uri} deleted while pinned")
        protected = self.protected_at.get(uri)
        if (active_runs or deployed) and protected is not None and claimed is not None and protected < claimed:
            self.violations.append(
                f"{uri} deleted while in use (runs {list(active_runs)}, deployed versions {list(deployed)}), "
                "protected before the claim"
            )


@dataclass
class Outcomes:
    """How the rounds of one test went: both sides of each race must have won some."""

    rounds: int = 0
    protection_first: int = 0
    sweep_first: int = 0

    def report(self, name: str, engine: Engine, started: float, how: str = "") -> None:
        took = time.monotonic() - started
        how = how or (
            f"{self.protection_first} protection first, {self.sweep_first} sweep first, "
            f"{self.rounds - self.protection_first - self.sweep_first} too close to call"
        )
        print(f"\n{name} [{engine.dialect.name}]: {self.rounds} interleavings in {took:.1f} s ({how})")


class Rounds:
    """Fresh due datasets per round, on one timeline: round i writes at day 3i and sweeps at day 3i + 2."""

    def __init__(self, sessions: sessionmaker[Session], root: Path) -> None:
        self.world = World(sessions, root)
        self.sessions = sessions
        self.recorder = Recorder(sessions)

    @staticmethod
    def day(i: int) -> float:
        return 3.0 * i

    def write(self, i: int, count: int) -> list[str]:
        """``count`` datasets of run w<i> (ended), ``ttl:1``: due at the round's sweep."""
        uris = [f"file://{self.world.root}/d{i}_{k}" for k in range(count)]
        writes = {f"d{i}_{k}": {"uri": uri, "retention": "ttl:1", "consumers": []} for k, uri in enumerate(uris)}
        run, ts = f"w{i}", at(self.day(i))
        self.world.send(
            Event(EventKind.NODE_STARTED, run, "p", node="make", ts=ts, detail={"writes": writes, "owner": "ranking"}),
            *(
                Event(
                    EventKind.DATASET_WRITTEN,
                    run,
                    "p",
                    node="make",
                    module="w",
                    dataset=DatasetInfo(n, u, "json", 9, 1, 3),
                    ts=ts,
                )
                for n, u in zip(writes, uris, strict=True)
            ),
            Event(EventKind.NODE_SUCCEEDED, run, "p", node="make", ts=ts),
            Event(EventKind.RUN_SUCCEEDED, run, "p", ts=ts),
        )
        return uris

    def sweeper(
        self, i: int, pause: Pause, barrier: threading.Barrier, errors: list[BaseException]
    ) -> threading.Thread:
        def go() -> None:
            _local.pause = pause
            try:
                barrier.wait()
                sweep(
                    self.sessions,
                    now=T0 + timedelta(days=self.day(i) + 2),
                    grace=timedelta(0),
                    deleter=self.recorder,
                )
            except BaseException as exc:  # reported by the test, not lost in a thread
                errors.append(exc)
            finally:
                _local.pause = None
                if pause.go is not None:
                    pause.go.set()  # a pause point the sweep never reached: the operation runs now

        return threading.Thread(target=go, name=f"sweep-{i}")

    def race(self, i: int, uri: str, rng: random.Random, operation: Callable[[], bool]) -> tuple[int | None, list[int]]:
        """One sweep against ``operation`` (True once its protection committed); returns the protection's
        stamp (None when it did not take) and the stamps at which the sweep's claims began."""
        go, done = threading.Event(), threading.Event()
        coordinated = rng.random() < 0.75  # otherwise a free race, only small delays
        pause = Pause(
            at=rng.randrange(DELETER, STATEMENTS),
            go=go if coordinated else None,
            done=done,
            sleep_s=0.0 if coordinated else rng.choice((0.0, 0.0005, 0.002)),
        )
        delay = rng.choice((0.0, 0.0, 0.0005, 0.001, 0.003))
        result: list[int | None] = [None]
        errors: list[BaseException] = []

        def protect() -> None:
            try:
                barrier.wait()
                if coordinated:
                    go.wait()
                time.sleep(delay)
                # The session hook stamps the commit as it returns, before anything else runs here.
                _local.committed = lambda at: self.recorder.protected_at.setdefault(uri, at)
                if operation():
                    result[0] = self.recorder.protected_at[uri]
            except BaseException as exc:
                errors.append(exc)
            finally:
                _local.committed = None
                done.set()

        barrier = threading.Barrier(2)
        threads = [self.sweeper(i, pause, barrier, errors), threading.Thread(target=protect, name=f"protect-{i}")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not any(t.is_alive() for t in threads), f"round {i}: a thread hung"
        if errors:
            raise errors[0]
        return result[0], pause.claims

    def state(self, uri: str) -> str:
        return self.world.state(uri)[0]

    def deletions_audited(self) -> Counter[str]:
        with self.sessions() as session:
            ids = session.scalars(select(AuditEntry.target_id).where(AuditEntry.action == "retention.delete")).all()
            uris = dict(session.execute(select(Dataset.id, Dataset.uri)).all())
        return Counter(uris[int(i)] for i in ids)

    def finish(self, last: int) -> None:
        """A last sweep once nothing protects anything: every dataset deleted exactly once, each audited once."""
        sweep(self.sessions, now=T0 + timedelta(days=self.day(last + 1) + 2), grace=timedelta(0), deleter=self.recorder)
        with self.sessions() as session:
            rows = session.execute(select(Dataset.uri, Dataset.state)).all()
        assert rows and all(state == DatasetState.DELETED for _, state in rows), [r for r in rows if r[1] != "deleted"]
        assert self.recorder.calls == Counter({uri: 1 for uri, _ in rows})
        assert self.deletions_audited() == Counter({uri: 1 for uri, _ in rows})
        assert self.recorder.violations == []


def protection_race(
    name: str,
    *,
    engine: Engine,
    sessions: sessionmaker[Session],
    tmp_path: Path,
    protect: Callable[[Rounds, int, str], bool],
    release: Callable[[Rounds, int, str], None],
) -> None:
    """The rounds of one sweep racing ``protect`` on one due dataset, then ``release`` of the protection."""
    started, rng = time.monotonic(), random.Random(SEED)
    rounds, outcomes = Rounds(sessions, tmp_path / "storage"), Outcomes()
    for i in range(ROUNDS):
        (uri,) = rounds.write(i, 1)
        protected, claims = rounds.race(i, uri, rng, partial(protect, rounds, i, uri))
        assert rounds.recorder.violations == [], f"seed {SEED}, round {i}"
        state = rounds.state(uri)
        if protected is not None and (not claims or protected < claims[0]):
            # The protection committed before the claim began: it wins.
            assert state in (DatasetState.LIVE, DatasetState.PENDING_DELETION), f"seed {SEED}, round {i}: {state}"
            assert rounds.recorder.calls[uri] == 0
            outcomes.protection_first += 1
        elif state == DatasetState.DELETED:
            outcomes.sweep_first += 1
        release(rounds, i, uri)
        outcomes.rounds += 1
    rounds.finish(ROUNDS)
    outcomes.report(name, engine, started)
    assert outcomes.rounds == ROUNDS >= 60
    assert outcomes.protection_first > 0 and outcomes.sweep_first > 0, outcomes  # both orders were tried


@pytest.mark.reliability(
    area="retention",
    component="retention sweep",
    fault="2-3 sweeps at once over the same due datasets, paused at random statements",
    proves="each dataset is claimed and deleted exactly once, with one retention.delete audit entry",
)
def test_sweeps_racing_each_other_delete_each_dataset_once(
    hooked: Engine, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    started, rng = time.monotonic(), random.Random(SEED)
    rounds, outcomes = Rounds(sessions, tmp_path / "storage"), Outcomes()
    threes = contended = statements = 0
    for i in range(ROUNDS):
        uris = rounds.write(i, 3)
        n = rng.choice((2, 3))
        threes += n == 3
        barrier = threading.Barrier(n)
        errors: list[BaseException] = []
        pauses = [
            Pause(at=rng.randrange(DELETER, STATEMENTS), sleep_s=rng.choice((0.0, 0.0005, 0.002))) for _ in range(n)
        ]
        threads = [rounds.sweeper(i, pause, barrier, errors) for pause in pauses]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not any(t.is_alive() for t in threads), f"round {i}: a sweep hung"
        assert errors == [], f"seed {SEED}, round {i}: {errors}"
        assert rounds.recorder.violations == [], f"seed {SEED}, round {i}"
        assert all(rounds.recorder.calls[u] == 1 for u in uris), f"seed {SEED}, round {i}: {rounds.recorder.calls}"
        assert all(rounds.state(u) == DatasetState.DELETED for u in uris)
        contended += sum(1 for p in pauses if p.claims) >= 2  # claiming UPDATEs of two sweeps over the same rows
        assert sum(p.deleted for p in pauses) == len(uris)
        statements = max(statements, *(p.seen for p in pauses))
        outcomes.rounds += 1
    audited = rounds.deletions_audited()
    assert audited == rounds.recorder.calls and set(audited.values()) == {1}
    rounds.finish(ROUNDS)
    how = f"{threes} with 3 sweeps, {contended} with two claiming at once, {statements} statements a sweep"
    outcomes.report("sweeps racing sweeps", hooked, started, how)
    assert contended > 0  # the sweeps really overlapped
    assert statements <= STATEMENTS, statements  # the pause points still cover a whole sweep
    assert outcomes.rounds == ROUNDS >= 60


@pytest.mark.reliability(
    area="retention",
    component="retention sweep vs run.started ingestion",
    fault="a run using a due dataset registers while a sweep marks, claims or deletes it",
    proves="no dataset is deleted while a run whose use committed before the claim is active; that run keeps it",
)
def test_a_run_starting_on_a_candidate_dataset(hooked: Engine, sessions: sessionmaker[Session], tmp_path: Path) -> None:
    def start(rounds: Rounds, i: int, uri: str) -> bool:
        ts = at(Rounds.day(i) + 2)
        rounds.world.send(Event(EventKind.RUN_STARTED, f"u{i}", "p", ts=ts, detail={"uses": [uri]}))
        return True

    def end(rounds: Rounds, i: int, uri: str) -> None:
        rounds.world.send(Event(EventKind.RUN_SUCCEEDED, f"u{i}", "p", ts=at(Rounds.day(i) + 2.5)))

    protection_race("run starting", engine=hooked, sessions=sessions, tmp_path=tmp_path, protect=start, release=end)


@pytest.mark.reliability(
    area="retention",
    component="retention sweep vs node.started ingestion",
    fault="a node of a running run starts reading a due dataset its run did not list, while a sweep claims it",
    proves="no dataset is deleted while a node whose read committed before the claim is in an active run",
)
def test_a_node_starting_to_read_a_candidate_dataset(
    hooked: Engine, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    def read(rounds: Rounds, i: int, uri: str) -> bool:
        stamp_commit, _local.committed = _local.committed, None  # the run's own start protects nothing here
        rounds.world.send(Event(EventKind.RUN_STARTED, f"n{i}", "p", ts=at(Rounds.day(i) + 2)))
        _local.committed = stamp_commit
        reads = {"reads": {"events": uri}}
        rounds.world.send(
            Event(EventKind.NODE_STARTED, f"n{i}", "p", node="read", ts=at(Rounds.day(i) + 2), detail=reads)
        )
        return True

    def end(rounds: Rounds, i: int, uri: str) -> None:
        rounds.world.send(Event(EventKind.RUN_SUCCEEDED, f"n{i}", "p", ts=at(Rounds.day(i) + 2.5)))

    protection_race("node read", engine=hooked, sessions=sessions, tmp_path=tmp_path, protect=read, release=end)


@pytest.mark.reliability(
    area="retention",
    component="retention sweep vs model deploy ingestion",
    fault="a deploy registers a model version whose files are a due dataset while a sweep claims it",
    proves="a deployed version's files are never deleted once the version is registered before the claim",
)
def test_a_deploy_of_a_model_whose_files_are_candidates(
    hooked: Engine, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    def deploy(rounds: Rounds, i: int, uri: str, deployed: bool = True) -> bool:
        # The model's files are the dataset itself, or (odd rounds) a directory inside it: the version under its path.
        files = uri + "/1" if i % 2 else uri
        model = {"name": "ctr", "version": str(i), "uri": files, "deployed": deployed}
        ts = at(Rounds.day(i) + (2 if deployed else 2.5))
        rounds.world.send(Event(EventKind.METRICS, f"w{i}", "p", ts=ts, detail={"model": model}))
        return True

    def undeploy(rounds: Rounds, i: int, uri: str) -> None:
        deploy(rounds, i, uri, deployed=False)

    protection_race("deploy", engine=hooked, sessions=sessions, tmp_path=tmp_path, protect=deploy, release=undeploy)


@pytest.mark.reliability(
    area="retention",
    component="retention sweep vs pin (repository)",
    fault="an owner pins a due dataset while a sweep marks, claims or deletes it",
    proves="a pin committed before the claim wins; a later pin is refused (409), never a pinned dataset deleted",
)
def test_a_pin_racing_a_sweep(hooked: Engine, sessions: sessionmaker[Session], tmp_path: Path) -> None:
    def pin(rounds: Rounds, i: int, uri: str, pinned: bool = True) -> bool:
        with rounds.sessions() as session:
            dataset_id = session.scalars(select(Dataset.id).where(Dataset.uri == uri)).one()
            try:
                set_pin(session, ADMIN, dataset_id, pinned=pinned)
            except ActionError as exc:
                assert exc.args and "too late to pin" in str(exc), exc  # the sweep claimed it first
                return False
        return True

    def unpin(rounds: Rounds, i: int, uri: str) -> None:
        if rounds.state(uri) != DatasetState.DELETED:
            pin(rounds, i, uri, pinned=False)

    protection_race("pin", engine=hooked, sessions=sessions, tmp_path=tmp_path, protect=pin, release=unpin)


@pytest.mark.reliability(
    area="retention",
    component="retention sweep",
    fault="a sweep still deleting a chunk when its lease runs out, and a later sweep taking the chunk over",
    proves="a dataset still queued in the slow sweep is deleted once, by the sweep that took it over",
)
def test_a_slow_sweep_does_not_delete_what_a_later_sweep_took_over(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    rounds = Rounds(sessions, tmp_path / "storage")
    first, queued = rounds.write(0, 2)
    slow, taken_over = threading.Event(), threading.Event()

    def slow_delete(uri: str) -> None:
        rounds.recorder(uri)
        if uri == first:
            slow.set()  # the lease runs out while this one is deleted ...
            assert taken_over.wait(60)

    reports: list[Any] = []

    def sweep_slowly() -> None:
        reports.append(sweep(sessions, now=T0 + timedelta(days=2), grace=timedelta(0), deleter=slow_delete))

    thread = threading.Thread(target=sweep_slowly)
    thread.start()
    assert slow.wait(60)
    # ... and a sweep on a clock past the lease takes over both rows the slow one claimed.
    later = sweep(sessions, now=T0 + timedelta(days=2, minutes=31), deleter=rounds.recorder)
    taken_over.set()
    thread.join(60)
    assert [d["uri"] for d in later.deleted] == [first, queued]
    # The one being deleted as the lease ran out goes twice: its heartbeat cannot keep up with a clock that
    # jumps 31 minutes at once (what a sweep's process stopped for longer than the lease would meet); the one
    # still queued in the slow sweep goes once.
    assert rounds.recorder.calls == Counter({first: 2, queued: 1})
    assert [d["uri"] for d in reports[0].deleted] == [first]  # the slow sweep left the queued one alone
    assert rounds.state(queued) == DatasetState.DELETED and rounds.deletions_audited()[queued] == 1


@pytest.mark.reliability(
    area="retention",
    component="retention sweep",
    fault="one deletion that takes longer than the lease, and a later sweep looking for abandoned claims",
    proves="the deleting sweep's heartbeat renews the claim while it deletes: the later sweep leaves it alone; "
    "deleted once, audited once",
)
def test_a_deletion_longer_than_the_lease_is_not_taken_over(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    rounds = Rounds(sessions, tmp_path / "storage")
    [uri] = rounds.write(0, 1)
    lease = timedelta(seconds=0.6)  # renewed every 0.2 s
    deleting, later_done = threading.Event(), threading.Event()

    def long_delete(deleted: str) -> None:
        rounds.recorder(deleted)
        deleting.set()
        assert later_done.wait(60)

    reports: list[Any] = []
    now = T0 + timedelta(days=2)
    started = time.monotonic()

    def sweep_long() -> None:
        reports.append(sweep(sessions, now=now, grace=timedelta(0), lease=lease, deleter=long_delete))

    thread = threading.Thread(target=sweep_long)
    thread.start()
    try:
        assert deleting.wait(60)
        time.sleep(4 * lease.total_seconds())  # the claim is four leases old: abandoned, but for the heartbeat
        clock = now + timedelta(seconds=time.monotonic() - started)  # the same clock the first sweep keeps
        later = sweep(sessions, now=clock, lease=lease, deleter=rounds.recorder)
    finally:
        later_done.set()
        thread.join(60)
    assert later.deleted == [] and rounds.recorder.calls == Counter({uri: 1})
    assert [d["uri"] for d in reports[0].deleted] == [uri]
    assert rounds.state(uri) == DatasetState.DELETED and rounds.deletions_audited()[uri] == 1
