"""One tracking interface for every run, node, module and dataset event.

Engines and the runtime emit :class:`Event`s through a :class:`Tracker`; they never talk to
a database. The default tracker appends JSON lines to ``<var>/runs/<pipeline>/<run_id>.jsonl``;
the control center consumes the same events.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "PROGRESS_FIELDS",
    "CenterTracker",
    "DatasetInfo",
    "Event",
    "EventKind",
    "FanoutTracker",
    "JsonlTracker",
    "MemoryTracker",
    "Tracker",
    "read_events",
    "run_log_path",
]

log = logging.getLogger("weiflow.tracking")


class EventKind(StrEnum):
    RUN_STARTED = "run.started"
    RUN_SUCCEEDED = "run.succeeded"
    RUN_FAILED = "run.failed"
    NODE_STARTED = "node.started"
    NODE_SUCCEEDED = "node.succeeded"
    NODE_FAILED = "node.failed"
    NODE_SKIPPED = "node.skipped"
    MODULE_STARTED = "module.started"
    MODULE_SUCCEEDED = "module.succeeded"
    MODULE_FAILED = "module.failed"
    DATASET_WRITTEN = "dataset.written"
    METRICS = "module.metrics"  # figures a module measured (training loss and speed, evaluation metrics)
    CLUSTER_STARTED = "cluster.started"  # the processes (or pods) a node started, for operators and audits
    # A point of a module's progress while it runs: for training, detail = PROGRESS_FIELDS (one per
    # scheduled call of about a hundred steps, per worker).
    PROGRESS = "module.progress"


# module.progress from a training module: ``step`` (steps done, all workers together), ``steps`` (the
# target), ``worker`` (the worker index that ran the call, 0 without a cluster), ``loss`` (mean
# training loss over the call's steps), ``auc`` (on the call's training batches; absent when they
# held one class only), ``examples_per_s`` (since training started), ``seconds`` (since then).
PROGRESS_FIELDS = ("step", "steps", "worker", "loss", "auc", "examples_per_s", "seconds")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    uri: str
    format: str
    size_bytes: int
    files: int
    rows: int | None = None
    schema: dict[str, str] | None = None


@dataclass(frozen=True)
class Event:
    kind: EventKind
    run_id: str
    pipeline: str
    node: str | None = None
    module: str | None = None
    attempt: int | None = None
    error: str | None = None
    dataset: DatasetInfo | None = None
    duration_s: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    ts: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="microseconds"))
    # The control center ingests each id once, so a spool re-delivering an event never counts it twice.
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def to_json(self) -> str:
        data = {k: v for k, v in asdict(self).items() if v not in (None, {})}
        data["kind"] = str(self.kind)
        return json.dumps(data, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, line: str) -> Event:
        data = json.loads(line)
        data["kind"] = EventKind(data["kind"])
        if "id" not in data:
            # Run logs written before events had ids: the line itself names the event, so reading the
            # same log twice gives the same ids (and the center still ingests it once).
            data["id"] = hashlib.sha256(line.strip().encode()).hexdigest()[:32]
        if "dataset" in data:
            data["dataset"] = DatasetInfo(**data["dataset"])
        return cls(**data)


class Tracker(Protocol):
    """Receives every event; must not raise for a delivery problem it can retry later."""

    def emit(self, event: Event) -> None: ...


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def run_log_path(runs_dir: Path, pipeline: str, run_id: str) -> Path:
    return runs_dir / _UNSAFE.sub("_", pipeline) / f"{_UNSAFE.sub('_', run_id)}.jsonl"


class JsonlTracker:
    """Appends one JSON line per event.

    Each event is one ``write`` on an ``O_APPEND`` descriptor, so lines from several
    processes (parallel Airflow tasks of one run) never interleave.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        line = (event.to_json() + "\n").encode()
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)


class MemoryTracker:
    """Keeps events in a list: for tests and for embedding WeiFlow in another program."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def kinds(self) -> list[str]:
        return [str(e.kind) for e in self.events]


class FanoutTracker:
    """Sends every event to several trackers, in order (the run log first, then the center)."""

    def __init__(self, *trackers: Tracker) -> None:
        self.trackers = trackers

    def emit(self, event: Event) -> None:
        for tracker in self.trackers:
            tracker.emit(event)


class CenterTracker:
    """Reports events to the control center over HTTP, through a durable spool on local disk.

    Every event is first written to ``spool_dir`` as its own file (written, then renamed, so
    a crash never leaves half an event); delivery then posts the spooled events in batches
    and removes only those the center acknowledged. When the center is down the run goes on:
    the events wait in the spool and go with the next delivery (the next event after
    ``retry_s``, :meth:`flush`, or ``weiflow center push``). Several processes may share a
    spool; an event sent twice is ingested once, by its id.

    ``background=True`` is for a long-lived host process that must never wait for the network
    (Airflow's scheduler, which emits run events from inside its scheduling loop): ``emit`` only
    spools, and a daemon thread delivers. Whatever that thread has not delivered when the process
    exits stays in the spool for the next delivery.
    """

    BATCH = 500

    def __init__(
        self,
        url: str,
        spool_dir: Path,
        *,
        token: str | None = None,
        timeout_s: float = 2.0,
        retry_s: float = 30.0,
        background: bool = False,
    ) -> None:
        self.url = url.rstrip("/") + "/api/v1/events"
        self.spool_dir = spool_dir
        self.token = token
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.background = background
        self._lock = threading.Lock()
        self._courier_lock = threading.Lock()
        self._down_until = 0.0  # after a failed delivery, do not make every event wait for a timeout
        self.last_error: str | None = None
        self._courier: threading.Thread | None = None
        self._again = False  # an event was spooled while the courier was delivering

    def emit(self, event: Event) -> None:
        self._spool(event)
        if time.monotonic() < self._down_until:
            return
        if self.background:
            self._deliver_in_background()
        else:
            self.flush()

    def _deliver_in_background(self) -> None:
        with self._courier_lock:
            if self._courier is not None:
                self._again = True
                return
            self._courier = threading.Thread(target=self._courier_loop, name="weiflow-center-delivery", daemon=True)
            self._courier.start()

    def _courier_loop(self) -> None:
        while True:
            try:
                self.flush()
            except Exception:  # whatever happens, free the courier's slot below, or delivery would stop for good
                log.exception("delivering events to the control center at %s failed", self.url)
            with self._courier_lock:
                # Stop when nothing new came, or when the center just proved down: the spool keeps it.
                if not self._again or time.monotonic() < self._down_until:
                    self._again = False
                    self._courier = None
                    return
                self._again = False

    def wait_delivered(self, timeout_s: float = 10.0) -> bool:
        """Wait for the background delivery in progress, if any; True when none is left running."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._courier_lock:
                courier = self._courier
            if courier is None:
                return True
            courier.join(max(0.0, min(0.1, deadline - time.monotonic())))
        return False

    def _spool(self, event: Event) -> None:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        # Names sort in emit order (time, then a per-process counter), which keeps a batch in order.
        name = f"{time.time_ns():020d}-{os.getpid()}-{event.id}.json"
        staging = self.spool_dir / f".{name}.tmp"
        with staging.open("w", encoding="utf-8") as handle:
            handle.write(event.to_json())
            handle.flush()
            os.fsync(handle.fileno())
        staging.replace(self.spool_dir / name)

    def pending(self) -> list[Path]:
        """Spooled events not yet acknowledged by the center, oldest first."""
        if not self.spool_dir.is_dir():
            return []
        return sorted(p for p in self.spool_dir.iterdir() if p.suffix == ".json" and not p.name.startswith("."))

    def flush(self) -> bool:
        """Deliver everything spooled; True when the spool is empty afterwards."""
        with self._lock:
            size = self.BATCH
            while True:
                batch = self.pending()[:size]
                if not batch:
                    return True
                lines = []
                for path in batch:
                    try:
                        lines.append(path.read_text(encoding="utf-8"))
                    except FileNotFoundError:
                        continue  # another process delivered it meanwhile
                status = self._post(lines)
                if status == 413 and len(batch) > 1:
                    size = max(1, len(batch) // 2)  # over the center's request limits: smaller batches
                    continue
                if status == 413:
                    # One event larger than the center takes will never go: set it aside, keep the rest moving.
                    rejected = self.spool_dir / "rejected"
                    rejected.mkdir(exist_ok=True)
                    batch[0].replace(rejected / batch[0].name)
                    log.error("the control center refuses %s as too large; moved to %s", batch[0].name, rejected)
                    continue
                if status is None or not 200 <= status < 300:
                    self._down_until = time.monotonic() + self.retry_s
                    return False
                for path in batch:
                    path.unlink(missing_ok=True)

    def _post(self, lines: list[str]) -> int | None:
        """The HTTP status of posting ``lines`` as one batch; None when the center did not answer."""
        body = ("[" + ",".join(lines) + "]").encode()
        request = urllib.request.Request(self.url, data=body, method="POST")
        request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                status = int(response.status)
                answer = response.read(1 << 20)
        except urllib.error.HTTPError as exc:
            self.last_error = f"HTTP {exc.code}: {exc.read(2000).decode(errors='replace')}"
            log.warning(
                "control center at %s refused a batch (%s); events stay in %s",
                self.url,
                self.last_error,
                self.spool_dir,
            )
            return exc.code
        except (urllib.error.URLError, OSError, ValueError) as exc:
            self.last_error = str(exc)
            log.warning("control center at %s not reachable (%s); events stay in %s", self.url, exc, self.spool_dir)
            return None
        self.last_error = None
        try:
            problems = json.loads(answer).get("problems") or []
        except (ValueError, AttributeError):
            problems = []
        for problem in problems:
            # Refused for good (malformed, or not this token's to claim): re-sending would not help.
            log.error("the control center refused an event: %s", problem)
        return status


def read_events(path: Path) -> list[Event]:
    """Every event of a JSON-lines run log, in the order written."""
    with path.open(encoding="utf-8") as handle:
        return [Event.from_json(line) for line in handle if line.strip()]
