"""The center mirrors each model's routing file and changes it for owners: events, API, mirror pass.

A real file repository in the test's directory holds the versions and the routing; the center's
storage roots decide where it may write. Attacks by ordinary accounts (a viewer, another team's
owner, a pipeline claiming a repository outside the roots) change no byte of the routing file.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tests.center.conftest import PASSWORD, add_team
from tests.center.test_console import csrf, log_in
from tests.modelrepo.conftest import manifest_for, write_saved_model
from weiflow.center.api import create_app
from weiflow.center.models import AuditEntry, ModelChange
from weiflow.center.repository import list_models, model_detail
from weiflow.center.routing import mirror_repositories
from weiflow.modelrepo import FileRepository, Routing, promote, update_routing
from weiflow.tracking import Event, EventKind

MODEL = "feed_ctr"


@dataclass
class Setup:
    client: TestClient
    headers: dict[str, dict[str, str]]
    sessions: sessionmaker[Session]
    storage: Path
    repository: FileRepository

    @property
    def routing_file(self) -> Path:
        return Path(self.repository.uri) / MODEL / "weiflow-routing.json"

    def post(self, user: str, events: list[Event]) -> dict[str, Any]:
        body = "[" + ",".join(e.to_json() for e in events) + "]"
        answer = self.client.post("/api/v1/events", content=body, headers=self.headers[user])
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result


def publish(repository: FileRepository, tmp: Path, traffic: int, who: str = "alice") -> tuple[int, Routing]:
    source = write_saved_model(tmp / f"export{len(repository.versions(MODEL)) + 1}")
    version = repository.add_version(MODEL, source, manifest_for(source, publisher=who, pipeline="feed"))
    routing = update_routing(repository, MODEL, lambda r, v: r.publish(version, traffic, existing=v, who=who))
    return version, routing


def deploy_event(repository: FileRepository, version: int, routing: Routing, *, run: str = "r1") -> Event:
    """What the deploy executor reports after a change (weiflow/engines/deploy/executor.py)."""
    return Event(
        EventKind.METRICS,
        run,
        "feed",
        node="deploy",
        module="publish",
        ts=datetime.now(UTC).isoformat(),
        detail={
            "model": {
                "name": MODEL,
                "version": version,
                "uri": repository.version_uri(MODEL, version),
                "deployed": version in routing.traffic,
                "traffic": routing.traffic.get(version, 0),
                "metrics": {"auc": 0.7 + version / 100},
                "publisher": "alice",
            },
            "action": routing.history[-1].action,
            "routing": routing.snapshot(),
        },
    )


def run_started(run: str = "r1") -> Event:
    return Event(EventKind.RUN_STARTED, run, "feed", ts=datetime.now(UTC).isoformat(), detail={"owner": "ranking"})


@pytest.fixture
def setup(sessions: sessionmaker[Session], tmp_path: Path) -> Iterator[Setup]:
    headers = add_team(sessions, password=PASSWORD)
    storage = tmp_path / "storage"
    repository = FileRepository(str(storage / "models"))
    client = TestClient(create_app(sessions, storage_roots=[str(storage)]))
    yield Setup(client, headers, sessions, storage, repository)


def published_twice(s: Setup, tmp_path: Path) -> None:
    """v1 at 100%, then v2 as a 10% canary, each reported by the pipeline's deploy node."""
    v1, r1 = publish(s.repository, tmp_path, 100)
    v2, r2 = publish(s.repository, tmp_path, 10)
    result = s.post("alice", [run_started(), deploy_event(s.repository, v1, r1), deploy_event(s.repository, v2, r2)])
    assert result["rejected"] == 0, result


def test_deploy_events_mirror_the_routing_and_a_late_event_never_rolls_it_back(setup: Setup, tmp_path: Path) -> None:
    v1, r1 = publish(setup.repository, tmp_path, 100)
    v2, r2 = publish(setup.repository, tmp_path, 10)
    # Delivered out of order: the newer change first, then the older one (a spool flushed late).
    setup.post("alice", [run_started(), deploy_event(setup.repository, v2, r2)])
    setup.post("alice", [deploy_event(setup.repository, v1, r1)])
    model = setup.client.get(f"/api/v1/models/{MODEL}", headers=setup.headers["vera"]).json()
    assert model["repository"] == setup.repository.uri  # learnt from the versions' URIs
    assert (model["generation"], model["traffic"], model["labels"]) == (
        2,
        {"1": 90.0, "2": 10.0},
        {"canary": 2, "stable": 1},
    )
    assert [(v["version"], v["traffic"], v["labels"]) for v in model["versions"]] == [
        ("1", 90.0, ["stable"]),
        ("2", 10.0, ["canary"]),
    ]
    assert model["versions"][1]["metrics"] == {"auc": pytest.approx(0.72)}
    assert model["metric_names"] == ["auc"]
    assert [(c["generation"], c["action"], c["version"], c["via"]) for c in model["history"]] == [
        (2, "publish", 2, "pipeline"),
        (1, "publish", 1, "pipeline"),
    ]


def test_a_routing_that_does_not_add_up_or_names_another_model_is_refused(setup: Setup, tmp_path: Path) -> None:
    v1, r1 = publish(setup.repository, tmp_path, 100)
    bad_sum = deploy_event(setup.repository, v1, r1)
    bad_sum.detail["routing"] = {**r1.snapshot(), "traffic": {"1": 90}}
    other = deploy_event(setup.repository, v1, r1)
    other.detail["routing"] = {**r1.snapshot(), "model": "someone_elses"}
    huge = deploy_event(setup.repository, v1, r1)  # PostgreSQL's 32-bit columns would fail the whole batch
    huge.detail["routing"] = {**r1.snapshot(), "generation": 2**31}
    badly_named = deploy_event(setup.repository, v1, r1)
    badly_named.detail["model"] = {**badly_named.detail["model"], "name": "../../etc"}
    result = setup.post("alice", [run_started(), bad_sum, other, huge, badly_named])
    reasons = " | ".join(result["problems"])
    assert result["rejected"] == 4, result
    assert "sum to 90" in reasons and "not of 'feed_ctr'" in reasons
    assert "32-bit" in reasons and "invalid model name" in reasons
    with setup.sessions() as session:
        assert list_models(session) == []  # a refused event leaves nothing behind


def test_owner_promotes_and_rolls_back_through_the_api_and_the_file_follows(setup: Setup, tmp_path: Path) -> None:
    published_twice(setup, tmp_path)
    url = f"/api/v1/models/{MODEL}"
    answer = setup.client.post(f"{url}/promote", json={"traffic": 100}, headers=setup.headers["alice"])
    assert answer.status_code == 200, answer.text
    assert answer.json()["traffic"] == {"2": 100.0}
    assert setup.repository.read_routing(MODEL).traffic == {2: 100}  # the source of truth changed first
    answer = setup.client.post(f"{url}/rollback", headers=setup.headers["root"])
    assert answer.status_code == 200, answer.text
    assert setup.repository.read_routing(MODEL).traffic == {1: 100}
    history = answer.json()["history"]
    assert [(c["action"], c["who"], c["via"]) for c in history[:2]] == [
        ("rollback", "root", "api"),
        ("promote", "alice", "api"),
    ]
    with setup.sessions() as session:
        audit = session.execute(
            select(AuditEntry.actor, AuditEntry.action, AuditEntry.detail).where(AuditEntry.target_type == "model")
        ).all()
    assert [(a.actor, a.action, a.detail["after"]) for a in audit] == [
        ("alice", "model.promote", {"2": 100}),
        ("root", "model.rollback", {"1": 100}),
    ]


REFUSED = [
    ("vera", "promote", {"traffic": 100}, 403, "role 'viewer'"),
    ("bob", "promote", {"traffic": 100}, 403, "owner ('ranking')"),
    ("bob", "rollback", None, 403, "owner ('ranking')"),
    ("alice", "promote", {"version": 9, "traffic": 50}, 409, "no version 9"),
    ("alice", "promote", {"traffic": 101}, 422, "less than or equal to 100"),
    ("alice", "promote", {"traffic": 5, "extra": 1}, 422, "extra"),
]


@pytest.mark.parametrize("case", REFUSED, ids=[f"{c[0]}-{c[1]}-{c[3]}" for c in REFUSED])
def test_refused_changes_leave_the_routing_file_byte_for_byte(
    setup: Setup, tmp_path: Path, case: tuple[str, str, dict[str, Any] | None, int, str]
) -> None:
    user, path, body, status, says = case
    published_twice(setup, tmp_path)
    before = setup.routing_file.read_bytes()
    answer = setup.client.post(f"/api/v1/models/{MODEL}/{path}", json=body, headers=setup.headers[user])
    assert answer.status_code == status, answer.text
    assert says in answer.text
    assert setup.routing_file.read_bytes() == before


def test_unknown_models_and_names_that_are_not_model_names(setup: Setup) -> None:
    h = setup.headers["root"]
    assert setup.client.get("/api/v1/models/nope", headers=h).status_code == 404
    assert setup.client.post("/api/v1/models/nope/rollback", headers=h).status_code == 404
    assert setup.client.get("/api/v1/models/..%2F..%2Fetc", headers=h).status_code in (404, 422)


def test_a_repository_outside_the_storage_roots_is_never_written(
    sessions: sessionmaker[Session], setup: Setup, tmp_path: Path
) -> None:
    # The pipeline's events may claim any repository; the center writes only inside its roots.
    outside = FileRepository(str(tmp_path / "elsewhere" / "models"))
    v1, r1 = publish(outside, tmp_path, 100)
    v2, r2 = publish(outside, tmp_path, 10)
    setup.post("alice", [run_started(), deploy_event(outside, v1, r1), deploy_event(outside, v2, r2)])
    routing_file = Path(outside.uri) / MODEL / "weiflow-routing.json"
    before = routing_file.read_bytes()
    answer = setup.client.post(f"/api/v1/models/{MODEL}/promote", json={"traffic": 100}, headers=setup.headers["root"])
    assert answer.status_code == 409
    assert "outside every storage root" in answer.json()["detail"]
    assert routing_file.read_bytes() == before
    # A center with no roots at all changes nothing either, and says how to fix it.
    bare = TestClient(create_app(sessions))
    answer = bare.post(f"/api/v1/models/{MODEL}/rollback", headers=setup.headers["root"])
    assert answer.status_code == 409 and "storage_roots" in answer.json()["detail"]


def test_changes_made_by_hand_are_mirrored_from_the_files(setup: Setup, tmp_path: Path) -> None:
    published_twice(setup, tmp_path)
    # On call, with `weiflow deploy`: a third version and a promote the center never hears of.
    v3, _ = publish(setup.repository, tmp_path, 0, who="oncall")
    promote(setup.repository, MODEL, v3, 50, who="oncall")
    report = mirror_repositories(setup.sessions, [str(setup.storage)])
    assert (report.mirrored, report.failed) == ([MODEL], {})
    with setup.sessions() as session:
        detail = model_detail(session, MODEL)
        assert detail is not None
        assert detail["traffic"] == {"1": 50.0, "3": 50.0}
        assert [(c["generation"], c["who"], c["via"]) for c in detail["history"][:2]] == [
            (4, "oncall", "repository"),
            (3, "oncall", "repository"),
        ]
        third = detail["versions"][-1]
        assert (third["version"], third["publisher"]) == ("3", "oncall")
        assert third["metrics"] == {"auc": 0.75, "logloss": 0.41}
        assert session.scalar(select(ModelChange.id).where(ModelChange.generation == 4)) is not None
    assert mirror_repositories(setup.sessions, [str(setup.storage)]).unchanged == [MODEL]  # idempotent


def test_a_damaged_routing_file_is_reported_and_the_mirror_kept(setup: Setup, tmp_path: Path) -> None:
    published_twice(setup, tmp_path)
    setup.routing_file.write_text(json.dumps({"schema": "weiflow.routing/1", "model": MODEL, "traffic": {"1": 7}}))
    report = mirror_repositories(setup.sessions, [str(setup.storage)])
    assert list(report.failed) == [MODEL]
    with setup.sessions() as session:
        detail = model_detail(session, MODEL)
    assert detail is not None
    assert detail["traffic"] == {"1": 90.0, "2": 10.0}
    assert detail["mirror_error"] and "routing" in detail["mirror_error"]


def test_console_owner_promotes_and_others_are_refused_by_the_same_rules(setup: Setup, tmp_path: Path) -> None:
    published_twice(setup, tmp_path)
    console = setup.client
    log_in(console, "vera")
    page = console.get(f"/models/{MODEL}")
    assert page.status_code == 200 and 'id="promote"' not in page.text and "Only an admin or the owner" in page.text
    for user in ("vera", "bob"):
        console.cookies.clear()
        log_in(console, user)
        token = csrf(console.get(f"/models/{MODEL}").text)
        for action, form in (("promote", {"version": "2", "traffic": "100"}), ("rollback", {})):
            answer = console.post(f"/models/{MODEL}/{action}", data={"csrf": token, **form})
            assert answer.status_code == 403 and "only an admin or the owner" in answer.text, (user, action)
    assert setup.repository.read_routing(MODEL).generation == 2

    console.cookies.clear()
    log_in(console, "alice")
    page = console.get(f"/models/{MODEL}")
    assert 'id="promote"' in page.text and "v2 10% · v1 90%" in page.text
    stale = console.post(f"/models/{MODEL}/promote", data={"csrf": "forged", "version": "2", "traffic": "50"})
    assert stale.status_code == 403 and setup.repository.read_routing(MODEL).generation == 2
    bad = console.post(f"/models/{MODEL}/promote", data={"csrf": csrf(page.text), "version": "2", "traffic": "150"})
    assert bad.status_code == 422 and "whole percent" in bad.text
    missing = console.post(f"/models/{MODEL}/promote", data={"csrf": csrf(page.text), "version": "7", "traffic": "5"})
    assert missing.status_code == 409 and "no version 7" in missing.text
    done = console.post(f"/models/{MODEL}/promote", data={"csrf": csrf(page.text), "version": "2", "traffic": "50"})
    assert done.status_code == 200 and "promoted" in done.text and "v2 50% · v1 50%" in done.text
    assert setup.repository.read_routing(MODEL).traffic == {1: 50, 2: 50}
    assert console.get("/models").text.count("v2 50% · v1 50%") == 1
    assert console.get("/models/no_such_model").status_code == 404


def test_another_teams_pipeline_naming_the_model_first_cannot_move_its_traffic(setup: Setup, tmp_path: Path) -> None:
    # ranking's versions are in the repository (published by hand); bob's pipeline reports the name first.
    v1, r1 = publish(setup.repository, tmp_path, 100)
    squat = dataclasses.replace(deploy_event(setup.repository, v1, r1, run="b1"), pipeline="bobs")
    bobs_run = Event(EventKind.RUN_STARTED, "b1", "bobs", ts=datetime.now(UTC).isoformat(), detail={"owner": "ads"})
    assert setup.post("bob", [bobs_run, squat])["rejected"] == 0
    before = setup.routing_file.read_bytes()
    answer = setup.client.post(f"/api/v1/models/{MODEL}/promote", json={"traffic": 50}, headers=setup.headers["bob"])
    assert answer.status_code == 409 and "published by pipeline 'feed'" in answer.json()["detail"]
    assert setup.routing_file.read_bytes() == before


def test_links_and_fifos_below_the_repository_are_refused(setup: Setup, tmp_path: Path) -> None:
    import os

    published_twice(setup, tmp_path)
    model_dir = Path(setup.repository.uri) / MODEL
    elsewhere = tmp_path / "elsewhere"
    model_dir.rename(elsewhere)
    model_dir.symlink_to(elsewhere)  # the model's files now lie outside the storage roots
    before = (elsewhere / "weiflow-routing.json").read_bytes()
    answer = setup.client.post(f"/api/v1/models/{MODEL}/rollback", headers=setup.headers["root"])
    assert answer.status_code == 409 and "symbolic link" in answer.json()["detail"]
    assert (elsewhere / "weiflow-routing.json").read_bytes() == before
    model_dir.unlink()
    elsewhere.rename(model_dir)
    (model_dir / "weiflow-routing.json").unlink()
    os.mkfifo(model_dir / "weiflow-routing.json")  # reading it would block a request, and the mirror, forever
    answer = setup.client.post(f"/api/v1/models/{MODEL}/rollback", headers=setup.headers["root"])
    assert answer.status_code == 409 and "not a regular file" in answer.json()["detail"]
    assert list(mirror_repositories(setup.sessions, [str(setup.storage)]).failed) == [MODEL]
