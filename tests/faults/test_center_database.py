"""The center's PostgreSQL connection cut and restored while a run's events are posted.

A real ``weiflow center serve`` reaches PostgreSQL through a :class:`CuttableProxy`; the runtime's
:class:`CenterTracker` posts the events of real runs through its spool. While the proxy is cut the
center answers 503 at once (no hang, no traceback), the events wait in the spool, and once it is
restored the same server process (no restart) takes them: every event is ingested exactly once,
and the center holds what a center that never saw the fault holds.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from tests.center.conftest import activity_run_events
from tests.center.servers import add_users, database_url, running_center
from tests.faults.proxy import CuttableProxy
from weiflow.center.db import CONNECT_TIMEOUT_S, make_engine, make_sessionmaker, migrate
from weiflow.center.ingest import ingest_events
from weiflow.center.models import IngestedEvent, ModuleRun, NodeRun, Role, Run
from weiflow.tracking import CenterTracker, Event

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

RUNS = 4
CUT_S = 3.0


def _through(url: str, port: int) -> str:
    """``url`` (PostgreSQL on 127.0.0.1) reached through the proxy's ``port`` instead."""
    return make_url(url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)


def _rows(url: str) -> dict[str, object]:
    """What the center holds: ingested events per kind, runs by state, node and module runs."""
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            kinds = dict(session.execute(select(IngestedEvent.kind, func.count()).group_by(IngestedEvent.kind)).all())
            states = dict(session.execute(select(Run.state, func.count()).group_by(Run.state)).all())
            nodes = session.scalar(select(func.count()).select_from(NodeRun))
            modules = session.scalar(select(func.count()).select_from(ModuleRun))
    finally:
        engine.dispose()
    return {"events": kinds, "runs": states, "node_runs": nodes, "module_runs": modules}


@pytest.mark.reliability(
    area="dependency",
    component="control center (PostgreSQL)",
    fault="database connections cut for 3 s, new ones refused or never answered, then restored, while a run's "
    "events are posted",
    proves="503 while cut, within the connect timeout (no hang); the same server recovers without a restart, its "
    "first request after answered; every event ingested exactly once (rows per kind, runs, node and module runs "
    "equal a center that saw no fault)",
)
@pytest.mark.parametrize("stall", [False, True], ids=["refused", "unanswered"])
def test_a_cut_database_costs_503s_and_loses_no_event(tmp_path: Path, stall: bool) -> None:
    events: list[Event] = [e for i in range(RUNS) for e in activity_run_events(f"cut-{i}")]
    with database_url("postgres", tmp_path) as direct:
        token = add_users(direct, {"runtime": (Role.ADMIN, [])})["runtime"]
        parsed = make_url(direct)
        with (
            CuttableProxy((parsed.host or "127.0.0.1", parsed.port or 5432), stall=stall) as proxy,
            running_center(tmp_path, _through(direct, proxy.port), workers=1) as (base, _env),
        ):
            assert httpx.get(f"{base}/api/v1/me", headers=_auth(token)).status_code == 200
            # Unanswered connections cost each try the connect timeout: then the tracker waits before trying again.
            tracker = CenterTracker(
                base, tmp_path / "spool", token=token, timeout_s=CONNECT_TIMEOUT_S + 5, retry_s=30 if stall else 0.3
            )
            third = len(events) // 3
            for event in events[:third]:
                tracker.emit(event)
            assert tracker.pending() == [], tracker.last_error

            proxy.cut()
            cut_at = time.monotonic()
            answers = []
            for event in events[third : 2 * third]:
                tracker.emit(event)  # spooled; the center's 503 keeps it there
                if len(answers) == (2 if stall else 10):
                    continue
                started = time.monotonic()
                answer = httpx.get(f"{base}/api/v1/runs", headers=_auth(token), timeout=15)
                answers.append((answer.status_code, round(time.monotonic() - started, 2)))
            time.sleep(max(0.0, CUT_S - (time.monotonic() - cut_at)))
            assert tracker.pending(), "events posted while the database was cut wait in the spool"
            assert "503" in (tracker.last_error or ""), tracker.last_error
            assert answers and all(code == 503 for code, _ in answers), answers
            # An error at once, or once the connect timeout ends the attempt: never a hang.
            assert max(seconds for _, seconds in answers) < (CONNECT_TIMEOUT_S + 3 if stall else 3), answers

            proxy.resume()
            first = httpx.get(f"{base}/api/v1/runs", headers=_auth(token), timeout=15)
            assert first.status_code == 200, first.text  # the first request after: no stale pooled connection
            for event in events[2 * third :]:
                tracker.emit(event)
                time.sleep(0.01)
            deadline = time.monotonic() + 20
            while not tracker.flush():
                assert time.monotonic() < deadline, f"not delivered after the database came back: {tracker.last_error}"
                time.sleep(0.3)
            assert tracker.pending() == []
            listed = httpx.get(f"{base}/api/v1/runs", headers=_auth(token))
            assert listed.status_code == 200, listed.text  # the same server process: nothing restarted it
        log = (tmp_path / "center.log").read_text()
        assert "the database is unavailable (answered 503)" in log
        got = _rows(direct)

    reference = tmp_path / "reference.db"
    migrate(engine := make_engine(f"sqlite:///{reference}"))
    with make_sessionmaker(engine)() as session:
        ingest_events(session, events)
    engine.dispose()
    assert got == _rows(f"sqlite:///{reference}")
    assert got["events"] == dict(Counter(str(e.kind) for e in events))
    assert got["runs"] == {"succeeded": RUNS}
    assert proxy.refused > 0  # the center really tried the database while it was down


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
