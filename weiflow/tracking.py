"""One tracking interface for every run, node, module and dataset event.

Engines and the runtime emit :class:`Event`s through a :class:`Tracker`; they never talk to
a database. The default tracker appends JSON lines to ``<var>/runs/<pipeline>/<run_id>.jsonl``;
the control center consumes the same events.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "DatasetInfo",
    "Event",
    "EventKind",
    "JsonlTracker",
    "MemoryTracker",
    "Tracker",
    "read_events",
    "run_log_path",
]


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

    def to_json(self) -> str:
        data = {k: v for k, v in asdict(self).items() if v not in (None, {})}
        data["kind"] = str(self.kind)
        return json.dumps(data, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, line: str) -> Event:
        data = json.loads(line)
        data["kind"] = EventKind(data["kind"])
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


def read_events(path: Path) -> list[Event]:
    """Every event of a JSON-lines run log, in the order written."""
    with path.open(encoding="utf-8") as handle:
        return [Event.from_json(line) for line in handle if line.strip()]
