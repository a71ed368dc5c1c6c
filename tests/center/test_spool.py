"""The runtime reports through a spool: a run completes with the center down, and nothing is lost when it is back."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from weiflow.center.api import create_app
from weiflow.center.eventschema import EventLimits
from weiflow.center.limits import Limits
from weiflow.center.models import IngestedEvent, Role, Run
from weiflow.center.repository import create_token, create_user
from weiflow.processes import free_port
from weiflow.tracking import CenterTracker, Event, EventKind


class Server:
    def __init__(self, sessions: sessionmaker[Session], port: int, limits: Limits | None = None) -> None:
        app = create_app(sessions, limits=limits)
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "center did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def token(sessions: sessionmaker[Session]) -> str:
    with sessions() as session:
        create_user(session, "runtime", Role.OWNER)
        return create_token(session, "runtime")


def count(sessions: sessionmaker[Session], model: type[IngestedEvent] | type[Run]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


@pytest.mark.reliability(
    area="dependency",
    component="runtime → control center (spool)",
    fault="center not listening while events are emitted",
    proves="emit never waits on a dead center; the events wait in the spool and are ingested once when it is back",
)
def test_events_wait_in_the_spool_while_the_center_is_down(
    sessions: sessionmaker[Session], token: str, tmp_path: Path
) -> None:
    port = free_port()
    tracker = CenterTracker(f"http://127.0.0.1:{port}", tmp_path / "spool", token=token, timeout_s=0.5)
    events = [Event(EventKind.RUN_STARTED, "r1", "p"), Event(EventKind.RUN_SUCCEEDED, "r1", "p")]
    started = time.monotonic()
    for event in events:
        tracker.emit(event)  # the center is down: emit returns, the run goes on
    assert time.monotonic() - started < 2  # one failed try, then no waiting on every event
    assert len(tracker.pending()) == 2 and tracker.last_error
    with Server(sessions, port):
        assert tracker.flush()
        assert tracker.pending() == []
        assert tracker.flush()  # nothing left: nothing sent twice
    assert count(sessions, IngestedEvent) == 2
    with sessions() as session:
        assert session.scalar(select(Run.state)) == "succeeded"


def test_a_bad_token_keeps_events_spooled(sessions: sessionmaker[Session], token: str, tmp_path: Path) -> None:
    port = free_port()
    tracker = CenterTracker(f"http://127.0.0.1:{port}", tmp_path / "spool", token="wf_wrong")
    with Server(sessions, port):
        tracker.emit(Event(EventKind.RUN_STARTED, "r1", "p"))
        assert tracker.pending() and "401" in (tracker.last_error or "")
        tracker.token = token
        assert tracker.flush()
    assert count(sessions, Run) == 1


@pytest.mark.reliability(
    area="dependency",
    component="runtime → control center (spool)",
    fault="acknowledgement lost: an applied batch sent again",
    proves="the event is ingested once (ingested_events rows)",
)
def test_redelivery_after_a_lost_acknowledgement_counts_once(
    sessions: sessionmaker[Session], token: str, tmp_path: Path
) -> None:
    port = free_port()
    tracker = CenterTracker(f"http://127.0.0.1:{port}", tmp_path / "spool", token=token)
    event = Event(EventKind.RUN_STARTED, "r1", "p")
    with Server(sessions, port):
        tracker.emit(event)
        # The center applied it but the reply was lost: the runtime spools and sends it again.
        tracker._spool(event)
        assert tracker.flush()
    assert count(sessions, IngestedEvent) == 1


@pytest.mark.reliability(
    area="dependency",
    component="runtime → control center (spool)",
    fault="center accepts connections and never answers (background delivery)",
    proves="emit returns at once; every event stays spooled and is delivered when a center answers",
)
def test_background_delivery_never_makes_emit_wait(sessions: sessionmaker[Session], token: str, tmp_path: Path) -> None:
    # A center that accepts connections and never answers: the worst case for a caller that waits.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        tracker = CenterTracker(url, tmp_path / "spool", token=token, timeout_s=1, background=True)
        started = time.monotonic()
        for i in range(3):
            tracker.emit(Event(EventKind.RUN_STARTED, f"r{i}", "p"))
        assert time.monotonic() - started < 0.5  # spooled; the courier thread waits, not the caller
        assert tracker.wait_delivered(10) and len(tracker.pending()) == 3 and tracker.last_error
    finally:
        silent.close()
    port = free_port()
    tracker = CenterTracker(f"http://127.0.0.1:{port}", tmp_path / "spool", token=token, background=True)
    with Server(sessions, port):
        tracker.emit(Event(EventKind.RUN_STARTED, "r3", "p"))  # delivers what waited too
        assert tracker.wait_delivered(10)
    assert tracker.pending() == [] and count(sessions, Run) == 4


def test_a_spool_splits_batches_the_center_finds_too_large_and_sets_aside_an_event_it_never_takes(
    sessions: sessionmaker[Session], token: str, tmp_path: Path
) -> None:
    port = free_port()
    limits = Limits(max_events=3, max_body_bytes=20_000, events=EventLimits(max_detail_bytes=50_000))
    tracker = CenterTracker(f"http://127.0.0.1:{port}", tmp_path / "spool", token=token)
    with Server(sessions, port, limits):
        for i in range(7):
            tracker.emit(Event(EventKind.RUN_STARTED, f"r{i}", "p"))
        tracker.emit(Event(EventKind.RUN_STARTED, "huge", "p", detail={"note": "x" * 30_000}))
        tracker.emit(Event(EventKind.RUN_STARTED, "r7", "p"))
        assert tracker.flush() and tracker.pending() == []
    assert count(sessions, Run) == 8  # r0..r7: every event but the one over the body limit
    assert [p.name.endswith(".json") for p in (tmp_path / "spool" / "rejected").iterdir()] == [True]
