"""Retention: mark what a policy says may go, delete it once confirmed or past its grace period, keep a tombstone.

Policies (a dataset's ``retention`` attribute): ``ttl:<days>`` (since written), ``idle:<days>``
(since last read, or written), ``consumed`` (every consumer node of the producing run has
succeeded), ``keep-last:<n>`` (the newest n of a pipeline's dataset of that name stay),
``pinned`` (never).

Never deleted, whatever the policy: pinned data, data a queued or running run reads or
writes (or that such a run produced), and the files behind a deployed model version. These
checks sit inside the ``UPDATE`` that claims a dataset for deletion, so a pin or a run that
committed first always wins, and two sweeps at once cannot both claim one dataset: the state
moves ``pending-deletion -> deleting`` for exactly one of them (each sweep first locks the rows
it will change, in id order, skipping those another one holds: sweeps never deadlock). A sweep
that dies after claiming leaves ``deleting`` with ``claimed_at``; after ``lease`` a later sweep
takes it over (deleting files already gone is a no-op). Each dataset's lease is renewed as its
own deletion starts, so a slow sweep never deletes what a later one took over while it was still
queued, and every third of the lease while that deletion runs (a heartbeat), so a deletion longer
than the lease is not taken over and done twice. A dataset read during its grace period goes back
to ``live``.

Whatever the database says, files are deleted only strictly inside the configured storage
roots (:class:`RootedDeleter`, checked on the real path at the moment of deletion): a forged or
mistaken dataset record cannot point a sweep at anything else. A refused deletion leaves the
dataset ``pending-deletion`` with the refusal as its reason, and no sweep retries it on its own.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

import fsspec
from sqlalchemy import ColumnElement, Table, and_, bindparam, exists, func, insert, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from weiflow.center.db import changed
from weiflow.center.models import (
    AuditEntry,
    Dataset,
    DatasetRead,
    DatasetState,
    ModelVersion,
    NodeRun,
    Run,
    RunUse,
    State,
)
from weiflow.center.routing import mirror_repositories
from weiflow.errors import ConfigError
from weiflow.storage import DeletionRefused, RootedDeleter

__all__ = [
    "DeletionRefused",
    "Orphan",
    "PeriodicSweeper",
    "Policy",
    "RootedDeleter",
    "SweepReport",
    "find_orphans",
    "parse_policy",
    "protected_clause",
    "sweep",
]

log = logging.getLogger("weiflow.center.retention")

_POLICY = re.compile(r"(ttl|idle|keep-last):([1-9][0-9]{0,5})\Z|(consumed|pinned)\Z")
ACTIVE_RUN_STATES = (State.QUEUED, State.RUNNING)
_CHUNK = 500  # rows per statement: well under SQLite's bound-parameter limit
T = TypeVar("T")


@dataclass(frozen=True)
class Policy:
    kind: str  # ttl | idle | consumed | keep-last | pinned
    n: int = 0


def parse_policy(text: str) -> Policy:
    match = _POLICY.match(text.strip())
    if not match:
        raise ConfigError(f"retention '{text}': use ttl:<days>, idle:<days>, consumed, keep-last:<n> or pinned")
    if match.group(3):
        return Policy(match.group(3))
    return Policy(match.group(1), int(match.group(2)))


def protected_clause() -> ColumnElement[bool]:
    """True for a dataset row that must never be deleted now (evaluated by the database, atomically)."""
    active = Run.state.in_(ACTIVE_RUN_STATES)
    return or_(
        Dataset.pinned.is_(True),
        Dataset.external.is_(True),
        exists().where(RunUse.uri == Dataset.uri, RunUse.run_pk == Run.id, active),
        exists().where(DatasetRead.dataset_id == Dataset.id, DatasetRead.run_pk == Run.id, active),
        exists().where(Run.id == Dataset.producer_run_pk, active),
        exists().where(
            ModelVersion.deployed.is_(True),
            or_(
                ModelVersion.dataset_id == Dataset.id,
                ModelVersion.uri == Dataset.uri,
                # The model's files inside the dataset directory (substr, not LIKE: URIs may hold % and _).
                func.substr(ModelVersion.uri, 1, func.length(Dataset.uri) + 1) == Dataset.uri + "/",
            ),
        ),
    )


@dataclass
class SweepReport:
    dry_run: bool
    marked: list[dict[str, Any]] = field(default_factory=list)  # id, uri, reason
    kept: list[dict[str, Any]] = field(default_factory=list)  # candidates a never-delete rule protects
    unmarked: list[dict[str, Any]] = field(default_factory=list)  # read during the grace period
    deleted: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    would_delete: list[dict[str, Any]] = field(default_factory=list)  # dry run: past grace or confirmed

    def summary(self) -> str:
        refused = sum(1 for entry in self.failed if entry.get("refused"))
        return (
            f"{'dry run: ' if self.dry_run else ''}{len(self.marked)} marked, {len(self.unmarked)} kept (read during "
            f"grace), {len(self.kept)} protected, {len(self.deleted)} deleted, {len(self.failed)} failed"
            + (f" ({refused} refused: not inside the storage roots)" if refused else "")
            + (f", {len(self.would_delete)} would be deleted" if self.dry_run else "")
        )


Deleter = Callable[[str], None]


def _days(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 86400:.1f} days"


def _candidates(session: Session, now: datetime) -> dict[int, str]:
    """Live datasets a policy says may go, with the reason a person reads in the console."""
    rows = session.execute(
        select(
            Dataset.id,
            Dataset.retention,
            Dataset.created_at,
            Dataset.last_access,
            Dataset.pipeline_id,
            Dataset.name,
            Dataset.producer_run_pk,
            Dataset.consumers_expected,
        ).where(
            Dataset.state == DatasetState.LIVE,
            Dataset.retention.is_not(None),
            Dataset.pinned.is_(False),
            Dataset.external.is_(False),
            or_(Dataset.held_until.is_(None), Dataset.held_until < now),
        )
    ).all()
    reasons: dict[int, str] = {}
    groups: dict[tuple[int | None, str, int], list[tuple[datetime, int]]] = defaultdict(list)
    consumed: list[tuple[int, int, list[str]]] = []
    for row in rows:
        try:
            policy = parse_policy(row.retention or "")
        except ConfigError:
            log.warning("dataset %s: unknown retention %r, kept", row.id, row.retention)
            continue
        if policy.kind == "ttl" and row.created_at < now - timedelta(days=policy.n):
            reasons[row.id] = f"ttl:{policy.n}: written {_days(now - row.created_at)} ago"
        elif policy.kind == "idle":
            last = row.last_access or row.created_at
            if last < now - timedelta(days=policy.n):
                reasons[row.id] = f"idle:{policy.n}: last read {_days(now - last)} ago"
        elif policy.kind == "keep-last":
            groups[(row.pipeline_id, row.name, policy.n)].append((row.created_at, row.id))
        elif policy.kind == "consumed" and row.producer_run_pk is not None and row.consumers_expected:
            consumed.append((row.id, row.producer_run_pk, list(row.consumers_expected)))
    for (_, name, n), members in groups.items():
        # Only live copies are members, so the n newest live ones always stay.
        for rank, (_, dataset_id) in enumerate(sorted(members, reverse=True)):
            if rank >= n:
                reasons[dataset_id] = f"keep-last:{n}: {rank + 1}th newest '{name}'"
    if consumed:
        run_pks = {run_pk for _, run_pk, _ in consumed}
        succeeded: dict[int, set[str]] = defaultdict(set)
        for run_pk, node in session.execute(
            select(NodeRun.run_pk, NodeRun.node).where(NodeRun.run_pk.in_(run_pks), NodeRun.state == State.SUCCEEDED)
        ):
            succeeded[run_pk].add(node)
        for dataset_id, run_pk, consumers in consumed:
            if set(consumers) <= succeeded[run_pk]:
                reasons[dataset_id] = f"consumed: every consumer ({', '.join(sorted(consumers))}) succeeded"
    return reasons


def _audit_many(session: Session, actor: str, action: str, entries: list[dict[str, Any]]) -> None:
    """One audit row per entry (id, uri, reason or error), inserted in one batch."""
    if not entries:
        return
    session.execute(
        insert(AuditEntry),
        [
            {
                "actor": actor,
                "action": action,
                "target_type": "dataset",
                "target_id": str(e["id"]),
                "detail": {k: v for k, v in e.items() if k != "id"},
            }
            for e in entries
        ],
    )


def _audit(session: Session, actor: str, action: str, dataset_id: int, uri: str, **detail: Any) -> None:
    session.add(
        AuditEntry(
            actor=actor, action=action, target_type="dataset", target_id=str(dataset_id), detail={"uri": uri, **detail}
        )
    )


# How a failed deletion is noted after the retention reason; stripped before noting the next one.
_FAILURE_NOTE = re.compile(r"; (?:delete failed|deletion refused): .*\Z", re.DOTALL)


class _Heartbeat:
    """Renews the lease of the dataset being deleted, every third of the lease, for as long as its deletion runs.

    The sweep's clock is ``now`` plus the real time since it started, as for the renewal at the start of each
    deletion. A renewal is conditional on the claim being the one this sweep last wrote: once another sweep has
    taken a dataset over (this process stopped for longer than the lease), nothing is renewed for it.
    """

    def __init__(self, sessions: sessionmaker[Session], now: datetime, started: float, lease: timedelta) -> None:
        self._sessions = sessions
        self._now, self._started = now, started
        self._every = max(lease.total_seconds() / 3, 0.01)
        self._lock = threading.Lock()
        self._current: tuple[int, datetime] | None = None  # the dataset being deleted, and its claimed_at
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def clock(self) -> datetime:
        return self._now + timedelta(seconds=time.monotonic() - self._started)

    @contextmanager
    def beating(self, dataset_id: int, claimed_at: datetime) -> Iterator[None]:
        with self._lock:
            self._current = (dataset_id, claimed_at)
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="weiflow-retention-heartbeat", daemon=True)
            self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._current = None

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self._every):
            with self._lock:
                current = self._current
            if current is None:
                continue
            dataset_id, claimed_at = current
            renewed_to = self.clock()
            try:
                with self._sessions() as session:
                    renewed = session.execute(
                        update(Dataset)
                        .where(
                            Dataset.id == dataset_id,
                            Dataset.state == DatasetState.DELETING,
                            Dataset.claimed_at == claimed_at,
                        )
                        .values(claimed_at=renewed_to)
                        .execution_options(synchronize_session=False)
                    )
                    session.commit()
            except Exception:  # the database away for a moment: the next beat tries again, well within the lease
                log.warning("retention: cannot renew the lease of dataset %d", dataset_id, exc_info=True)
                continue
            with self._lock:
                if changed(renewed) and self._current == current:
                    self._current = (dataset_id, renewed_to)


def sweep(
    sessions: sessionmaker[Session],
    *,
    roots: Iterable[str] | None = None,
    now: datetime | None = None,
    grace: timedelta = timedelta(days=3),
    lease: timedelta = timedelta(minutes=30),
    dry_run: bool = False,
    deleter: Deleter | None = None,
    actor: str = "system:sweep",
) -> SweepReport:
    """One retention sweep: unmark what was read during its grace period, mark new candidates,
    delete what is confirmed or past its grace period. ``dry_run`` changes nothing and says why.

    Files are deleted by a :class:`RootedDeleter` over ``roots`` (``settings.storage_roots``), or
    by ``deleter`` (tests, wrappers); exactly one of the two is given.
    """
    if deleter is None:
        if roots is None:
            raise TypeError("sweep() needs roots= (settings.storage_roots: it deletes only inside them) or a deleter=")
        deleter = RootedDeleter(roots)
    elif roots is not None:
        raise TypeError("sweep() takes roots= or a deleter=, not both: a deleter does its own checks")
    now = now or datetime.now(UTC)
    started = time.monotonic()  # how long this sweep has run: a claim's lease is renewed from ``now`` by it
    report = SweepReport(dry_run)
    read_in_grace = and_(
        Dataset.state == DatasetState.PENDING_DELETION,
        Dataset.last_access.is_not(None),
        Dataset.last_access > Dataset.marked_at,
    )
    with sessions() as session:
        # 1. A dataset someone read after it was marked is evidently still wanted.
        # In id order: concurrent sweeps then lock these rows in one order and never deadlock.
        unmark = select(Dataset.id, Dataset.uri).where(read_in_grace).order_by(Dataset.id)
        for dataset_id, uri in session.execute(unmark).all():
            report.unmarked.append({"id": dataset_id, "uri": uri, "reason": "read during the grace period"})
            if not dry_run:
                done = session.execute(
                    update(Dataset)
                    .where(Dataset.id == dataset_id, read_in_grace)
                    .values(
                        state=DatasetState.LIVE,
                        reason="kept: read during the grace period",
                        marked_at=None,
                        delete_after=None,
                        confirmed_by=None,
                        held_until=now + grace,
                    )
                )
                if changed(done):
                    _audit(session, actor, "retention.unmark", dataset_id, uri, reason="read during grace")
        if not dry_run:
            session.commit()

        # 2. Mark new candidates, unless a never-delete rule protects them now. In chunks: one
        # conditional UPDATE per chunk says which rows this sweep moved (a concurrent sweep's
        # rows are no longer live), then their reasons and audit entries go in one batch each.
        reasons = _candidates(session, now)
        ids = sorted(reasons)
        for chunk in _chunks(ids, _CHUNK):
            protected = set(session.scalars(select(Dataset.id).where(Dataset.id.in_(chunk), protected_clause())))
            uris = dict(session.execute(select(Dataset.id, Dataset.uri).where(Dataset.id.in_(chunk))).all())
            for dataset_id in protected:
                reason = reasons[dataset_id] + " — but protected (pinned, in use or deployed)"
                report.kept.append({"id": dataset_id, "uri": uris.get(dataset_id), "reason": reason})
            wanted = [i for i in chunk if i not in protected]
            if dry_run:
                report.marked.extend({"id": i, "uri": uris.get(i), "reason": reasons[i]} for i in wanted)
                continue
            wanted = _lock(session, wanted, and_(Dataset.state == DatasetState.LIVE, Dataset.pinned.is_(False)))
            if not wanted:
                continue
            moved = session.scalars(
                update(Dataset)
                .where(Dataset.id.in_(wanted), Dataset.state == DatasetState.LIVE, Dataset.pinned.is_(False))
                .values(state=DatasetState.PENDING_DELETION, marked_at=now, delete_after=now + grace, confirmed_by=None)
                .returning(Dataset.id)
                .execution_options(synchronize_session=False)
            ).all()
            if not moved:
                continue
            table = cast(Table, Dataset.__table__)
            session.execute(
                update(table).where(table.c.id == bindparam("row_id")).values(reason=bindparam("row_reason")),
                [{"row_id": i, "row_reason": reasons[i]} for i in moved],
            )
            entries = [{"id": i, "uri": uris.get(i), "reason": reasons[i]} for i in sorted(moved)]
            report.marked.extend(entries)
            _audit_many(session, actor, "retention.mark", entries)
            session.commit()

        # 3. Delete: confirmed by an owner, or past the grace period; or abandoned by a crashed sweep.
        due = or_(
            and_(
                Dataset.state == DatasetState.PENDING_DELETION,
                or_(Dataset.confirmed_by.is_not(None), Dataset.delete_after <= now),
                or_(Dataset.last_access.is_(None), Dataset.last_access <= Dataset.marked_at),
            ),
            and_(Dataset.state == DatasetState.DELETING, Dataset.claimed_at < now - lease),
        )
        rows = session.execute(select(Dataset.id, Dataset.uri, Dataset.reason).where(due).order_by(Dataset.id)).all()
        if dry_run:
            blocked = set(session.scalars(select(Dataset.id).where(due, protected_clause())))
            for row in rows:
                entry = {"id": row.id, "uri": row.uri, "reason": row.reason}
                (report.kept if row.id in blocked else report.would_delete).append(entry)
            return report
        heartbeat = _Heartbeat(sessions, now, started, lease)
        try:
            _delete_claimed(
                session, rows, due, now=now, deleter=deleter, heartbeat=heartbeat, actor=actor, report=report
            )
        finally:
            heartbeat.stop()
    return report


def _delete_claimed(
    session: Session,
    rows: Sequence[Any],
    due: ColumnElement[bool],
    *,
    now: datetime,
    deleter: Deleter,
    heartbeat: _Heartbeat,
    actor: str,
    report: SweepReport,
) -> None:
    """Step 3 of :func:`sweep`: claim the due rows chunk by chunk, delete each claimed dataset, record the outcome."""
    for chunk_rows in _chunks(rows, _CHUNK):
        by_id: dict[int, tuple[str, str | None]] = {i: (uri, reason) for i, uri, reason in chunk_rows}
        claimed = session.scalars(
            update(Dataset)
            .where(Dataset.id.in_(_lock(session, list(by_id), due)), due, ~protected_clause())
            .values(state=DatasetState.DELETING, claimed_at=now)
            .returning(Dataset.id)
            .execution_options(synchronize_session=False)
        ).all()
        session.commit()  # the claims are visible to every other sweep before any file goes
        # Rows not claimed: another sweep has them, or a run / pin / deployment protects them now.
        deleted: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for dataset_id in sorted(claimed):
            target, why = by_id[dataset_id]
            # Renew the lease as this dataset's deletion starts, if the claim is still this sweep's: a chunk
            # can take longer to delete than the lease, and a later sweep that took over a row still queued
            # here deletes it itself; deleting it here too would delete it twice.
            claimed_at = heartbeat.clock()
            renewed = session.execute(
                update(Dataset)
                .where(Dataset.id == dataset_id, Dataset.state == DatasetState.DELETING, Dataset.claimed_at == now)
                .values(claimed_at=claimed_at)
                .execution_options(synchronize_session=False)
            )
            session.commit()
            if not changed(renewed):
                log.info("retention: %s was taken over by another sweep after this one's lease ran out", target)
                continue
            try:
                with heartbeat.beating(dataset_id, claimed_at):
                    deleter(target)
            except Exception as exc:
                log.warning("retention: cannot delete %s: %s", target, exc)
                refused = isinstance(exc, DeletionRefused)
                failed.append({"id": dataset_id, "uri": target, "reason": why, "error": str(exc), "refused": refused})
            else:
                deleted.append({"id": dataset_id, "uri": target, "reason": why})
        if deleted:
            session.execute(
                update(Dataset)
                .where(Dataset.id.in_([e["id"] for e in deleted]), Dataset.state == DatasetState.DELETING)
                .values(state=DatasetState.DELETED, deleted_at=now)
                .execution_options(synchronize_session=False)
            )
            _audit_many(session, actor, "retention.delete", deleted)
        for entry in failed:
            reason = _FAILURE_NOTE.sub("", entry["reason"] or "")  # the last failure only, not one per sweep
            values: dict[str, Any]
            if entry["refused"]:
                # Retrying cannot help until the roots or the record change: no grace end and no
                # confirmation, so no sweep takes it again by itself; an owner who confirms again
                # (after fixing that) gets one more try.
                note = f"{reason}; deletion refused: {entry['error']}"
                values = {"reason": note, "delete_after": None, "confirmed_by": None}
            else:
                values = {"reason": f"{reason}; delete failed: {entry['error']}"}  # the next sweep tries again
            session.execute(
                update(Dataset)
                .where(Dataset.id == entry["id"], Dataset.state == DatasetState.DELETING)
                .values(state=DatasetState.PENDING_DELETION, **values)
            )
        _audit_many(session, actor, "retention.delete-refused", [e for e in failed if e["refused"]])
        _audit_many(session, actor, "retention.delete-failed", [e for e in failed if not e["refused"]])
        session.commit()
        report.deleted.extend(deleted)
        report.failed.extend(failed)


class PeriodicSweeper:
    """Runs :func:`sweep`, then mirrors the model repositories, every ``every`` in a background thread until
    stopped: the center's scheduled housekeeping.

    Several centers may each run one: concurrent sweeps never delete twice (see the module
    docstring). A sweep that raises is logged and the next one runs on time.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        every: timedelta,
        *,
        roots: Iterable[str],
        grace: timedelta = timedelta(days=3),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.sessions, self.every, self.grace, self.clock = sessions, every, grace, clock
        self.deleter = RootedDeleter(roots)  # built now: bad roots fail at start, not at the first sweep
        self.sweeps = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="weiflow-retention-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.wait(self.every.total_seconds()):
            try:
                report = sweep(self.sessions, now=self.clock(), grace=self.grace, deleter=self.deleter)
                log.info("scheduled retention sweep: %s", report.summary())
            except Exception:
                log.exception("scheduled retention sweep failed; the next one runs in %s", self.every)
            # Routing changes made with `weiflow deploy` by hand reach the center here.
            try:
                mirrored = mirror_repositories(self.sessions, self.deleter.roots, now=self.clock())
                log.info("scheduled model mirror: %s", mirrored.summary())
            except Exception:
                log.exception("scheduled model mirror failed; the next one runs in %s", self.every)
            self.sweeps += 1


def _lock(session: Session, ids: Sequence[int], condition: ColumnElement[bool]) -> list[int]:
    """Lock the rows of ``ids`` still matching ``condition``, in id order, skipping rows another transaction holds.

    Two sweeps' multi-row UPDATEs lock rows in whatever order each plan visits them, so on
    PostgreSQL they deadlocked (one sweep failed). Taken first, in one order and without waiting,
    the locks leave the UPDATE only rows this transaction holds; a row skipped here belongs to
    another sweep (or a pin in flight) and is its business. The UPDATE still checks everything
    itself. SQLite has no row locks (its writers take turns): there this is a plain SELECT.
    """
    query = select(Dataset.id).where(Dataset.id.in_(ids), condition).order_by(Dataset.id)
    return list(session.scalars(query.with_for_update(skip_locked=True)))


def _chunks(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(frozen=True)
class Orphan:
    """A directory under a storage root that no dataset claims, and how old its newest file is."""

    path: str
    files: int
    size_bytes: int
    newest: datetime


def find_orphans(
    session: Session, roots: Iterable[str], *, older_than_days: float, now: datetime | None = None
) -> list[Orphan]:
    """Directories under ``roots`` holding files no dataset (live or pending) claims, untouched for the given days.

    Deleted datasets' URIs do not claim their paths (their files should be gone). Staging
    directories of writers in progress are young, so the age limit leaves them alone.
    """
    now = now or datetime.now(UTC)
    claimed: list[str] = []
    for (uri,) in session.execute(select(Dataset.uri).where(Dataset.state != DatasetState.DELETED)):
        try:
            claimed.append(str(fsspec.core.url_to_fs(uri)[1]).rstrip("/"))
        except (ValueError, ImportError):
            continue
    claimed_set = set(claimed)

    def is_claimed(path: str) -> bool:
        # A file is claimed when it, or one of its ancestor directories, is a dataset's path.
        while path:
            if path in claimed_set:
                return True
            path = path.rpartition("/")[0]
        return False

    groups: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for root in roots:
        fs, base = fsspec.core.url_to_fs(root)
        if not fs.exists(base):
            continue
        for path, info in fs.find(base, detail=True).items():
            if is_claimed(path):
                continue
            modified = info.get("mtime") or info.get("LastModified") or info.get("created") or 0
            stamp = modified.timestamp() if isinstance(modified, datetime) else float(modified)
            groups[path.rpartition("/")[0]].append((int(info.get("size") or 0), stamp))
    limit = (now - timedelta(days=older_than_days)).timestamp()
    orphans = [
        Orphan(directory, len(files), sum(s for s, _ in files), datetime.fromtimestamp(max(t for _, t in files), UTC))
        for directory, files in groups.items()
        if max(t for _, t in files) < limit
    ]
    return sorted(orphans, key=lambda o: o.path)
