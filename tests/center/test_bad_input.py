"""A real ``weiflow center serve`` (two workers, SQLite) under hostile input, slow clients and secret-hunting.

- SQL-injection and path-traversal strings in every filter and path parameter of the API and the console:
  4xx or an empty result, never 5xx, never a file's content; the database intact afterwards.
- Heads trickled or never sent get 408 from :mod:`weiflow.httpserver` (trickled bodies: test_trust.py),
  while other clients are answered.
- The secrets the run used (an API token, a password) appear in no answer and no line of the server's log,
  whatever was sent: good and bad logins, a password typed as a user name, near-miss tokens, errors.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import func, inspect, select

from tests.center.conftest import PASSWORD
from tests.center.servers import database_url, running_center
from tests.slow_clients import assert_408_and_closed, trickling
from weiflow.center.console import LOGIN_COOKIE, csrf_token
from weiflow.center.db import make_engine, make_sessionmaker
from weiflow.center.models import Dataset, Role, Run
from weiflow.center.repository import create_token, create_user
from weiflow.httpserver import HEAD_TIMEOUT_ENV
from weiflow.tracking import DatasetInfo, Event, EventKind

TIMEOUT_S = 1.0

HOSTILE = [
    "' OR 1=1 --",
    '"; DROP TABLE runs; --',
    "1; DELETE FROM datasets",
    "../../etc/passwd",
    "..%2f..%2fetc%2fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/etc/passwd",
    "file:///etc/passwd",
    "a\x00b",
    "x" * 5000,
    "١٢",  # Arabic-Indic digits: int() would take them as 12
    "+1",
    "99999999999999999999999",
]


@dataclass
class Center:
    url: str
    log: Path
    db_url: str
    token: str  # alice's (an admin) API token: a secret the log must not hold
    answers: list[str] = field(default_factory=list)  # every body the tests received, for the secrets check

    def get(self, path: str, **kw: object) -> httpx.Response:
        answer = httpx.get(self.url + path, headers=self.auth, timeout=10, **kw)  # type: ignore[arg-type]
        self.answers.append(answer.text)
        return answer

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def counts(self) -> tuple[int, int, list[str]]:
        engine = make_engine(self.db_url)
        with make_sessionmaker(engine)() as db:
            runs = db.scalar(select(func.count()).select_from(Run)) or 0
            datasets = db.scalar(select(func.count()).select_from(Dataset)) or 0
        tables = sorted(inspect(engine).get_table_names())
        engine.dispose()
        return runs, datasets, tables


@pytest.fixture(scope="module")
def center(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Center]:
    tmp = tmp_path_factory.mktemp("badinput")
    (tmp / "passwd").write_text("root:x:0:0:a file no request may read\n")
    with database_url("sqlite", tmp) as url:
        engine = make_engine(url)
        with make_sessionmaker(engine)() as db:
            create_user(db, "alice", Role.ADMIN, password=PASSWORD)  # reaches every endpoint
            token = create_token(db, "alice")
        engine.dispose()
        env = {HEAD_TIMEOUT_ENV: str(TIMEOUT_S), "WEIFLOW_CENTER_BODY_TIMEOUT_S": str(TIMEOUT_S)}
        with running_center(tmp, url, workers=2, **env) as (base, _env):
            c = Center(base, tmp / "center.log", url, token)
            ts = datetime.now(UTC).isoformat()
            uri = f"file://{tmp / 'storage' / 'samples'}"
            writes = {"samples": {"uri": uri, "retention": "ttl:7", "consumers": []}}
            events = [
                Event(EventKind.RUN_STARTED, "r1", "feed", ts=ts, detail={"owner": "ranking"}),
                Event(EventKind.NODE_STARTED, "r1", "feed", node="make", ts=ts, detail={"writes": writes}),
                Event(
                    EventKind.DATASET_WRITTEN,
                    "r1",
                    "feed",
                    node="make",
                    ts=ts,
                    dataset=DatasetInfo("samples", uri, "parquet", 10, 1, 1),
                ),
            ]
            body = "[" + ",".join(e.to_json() for e in events) + "]"
            answer = httpx.post(f"{base}/api/v1/events", content=body, headers=c.auth, timeout=10)
            assert answer.status_code == 200 and answer.json()["rejected"] == 0, answer.text
            yield c


def api_requests(value: str) -> list[tuple[str, str]]:
    q, p = quote(value, safe=""), quote(value, safe="")
    lists = [f"/api/v1/runs?{name}={q}" for name in ("pipeline", "state", "before")]
    lists += [f"/api/v1/datasets?{name}={q}" for name in ("state", "owner", "name", "pipeline", "before")]
    lists += [f"/api/v1/audit?before={q}"]
    paths = [f"/api/v1/runs/{p}", f"/api/v1/runs/{p}/progress", f"/api/v1/datasets/{p}", f"/api/v1/models/{p}"]
    posts = [f"/api/v1/datasets/{p}/pin", f"/api/v1/models/{p}/rollback"]
    return [("GET", url) for url in lists + paths] + [("POST", url) for url in posts]


def console_requests(value: str) -> list[str]:
    q = quote(value, safe="")
    return [
        f"/runs?pipeline={q}",
        f"/runs?state={q}",
        f"/runs?before={q}",
        f"/datasets?state={q}&owner={q}&name={q}",
        f"/datasets?before={q}",
        f"/runs/{q}",
        f"/runs/by-id/{q}/{q}",
        f"/runs/by-id/feed/{q}",
        f"/runs/1/curve.svg?node={q}&module={q}",
        f"/datasets/{q}",
        f"/models/{q}",
    ]


def log_in(http: httpx.Client, username: str, password: str) -> httpx.Response:
    http.cookies.set(LOGIN_COOKIE, "pre-login-secret")
    form = {"username": username, "password": password, "csrf": csrf_token("pre-login-secret", "login")}
    return http.post("/login", data=form)


@pytest.mark.reliability(
    area="input",
    component="center API and console",
    fault="SQL-injection and path-traversal strings in every filter and path parameter",
    proves="4xx or an empty list, never 5xx or a file's content; the runs, datasets and tables intact",
)
@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_filters_and_ids_are_refused_or_match_nothing(center: Center, value: str) -> None:
    before = center.counts()
    with httpx.Client(base_url=center.url, headers=center.auth, timeout=10) as http:
        for method, url in api_requests(value):
            answer = http.request(method, url)
            center.answers.append(answer.text)
            assert answer.status_code in (200, 404, 422), (method, url, answer.status_code, answer.text[:200])
            assert "root:x:0" not in answer.text
            if answer.status_code == 200 and "items" in answer.json():
                assert answer.json()["items"] == [], (url, "a filter that matches no stored value matched")
            elif answer.status_code == 200:
                # A record by id: only '+1', which FastAPI reads as the number 1 (the console refuses it): run 1.
                record = answer.json()
                assert value == "+1" and record.get("id", record.get("run")) == 1, (url, answer.text[:200])
        assert log_in(http, "alice", PASSWORD).status_code == 303
        for url in console_requests(value):
            answer = http.get(url)
            center.answers.append(answer.text)
            assert answer.status_code in (200, 404, 422), (url, answer.status_code, answer.text[:200])
            assert "root:x:0" not in answer.text
            if answer.status_code == 200:
                assert "samples" not in answer.text and "/runs/1" not in answer.text, url
    assert center.counts() == before
    assert center.get("/api/v1/runs").json()["items"][0]["run_id"] == "r1"


@pytest.mark.reliability(
    area="input",
    component="center API and console",
    fault="slowloris: a head trickled a byte at a time, a connection that sends nothing",
    proves="408 and closed after the head deadline; other clients answered meanwhile",
)
@pytest.mark.parametrize("head", [b"GET /api/v1/me HTTP/1.1\r\nHost: x\r\nX-Slow: ", b""], ids=["head", "silent"])
def test_slow_heads_get_408_and_hold_nothing(center: Center, head: bytes) -> None:
    port = int(center.url.rsplit(":", 1)[1])
    with trickling(port, head, count=10, byte=b"x") as slow:
        for _ in range(3):
            started = time.monotonic()
            assert center.get("/api/v1/me").status_code == 200
            assert time.monotonic() - started < 1.0
        time.sleep(TIMEOUT_S + 1.0)
        assert_408_and_closed(slow)


@pytest.mark.reliability(
    area="access",
    component="center logs and answers",
    fault="secrets sent in good and bad logins, near-miss tokens and failing requests",
    proves="neither the API token nor the password appears in any answer or any line of the server's log",
)
def test_secrets_are_in_no_answer_and_no_log_line(center: Center) -> None:
    token, near = center.token, center.token[:-1] + ("A" if center.token[-1] != "A" else "B")
    bodies = []
    with httpx.Client(base_url=center.url, timeout=10) as http:
        attempts = [
            ("alice", PASSWORD),  # a good login
            ("alice", PASSWORD + "!"),  # a wrong password, one character off
            (PASSWORD, PASSWORD),  # the password typed as the user name
            ("nobody", PASSWORD),
            (token, token),
        ]
        for username, password in attempts:
            http.cookies.clear()
            bodies.append(log_in(http, username, password).text)
        bad_headers = [
            {"Authorization": f"Bearer {near}"},
            {"Authorization": f"Token {token}"},
            {"Authorization": f"Bearer {token} {token}"},
            {"Authorization": f"Bearer {token}" + "x" * 300},
            {"Authorization": f"Basic {token}"},
        ]
        for headers in bad_headers:
            for url in ("/api/v1/me", "/api/v1/runs?before=0", "/api/v1/datasets/0"):
                bodies.append(http.get(url, headers=headers).text)
        good = {"Authorization": f"Bearer {token}"}
        for method, url, content in (
            ("GET", "/api/v1/runs?before=abc", None),
            ("GET", "/api/v1/datasets/99999", None),
            ("POST", "/api/v1/events", "[{not json"),
            ("POST", "/api/v1/events", '[{"kind": "run.started"}]'),
            ("POST", "/api/v1/models/nope/promote", '{"traffic": 500}'),
            ("GET", "/api/v1/audit", None),
        ):
            answer = http.request(method, url, headers=good, content=content)
            assert answer.status_code < 500, (url, answer.text)
            bodies.append(answer.text)
            bodies.append(str(answer.headers))
    time.sleep(0.5)  # the workers' last log lines
    log = center.log.read_text(errors="replace")
    assert "GET /api/v1/me" in log  # the log is the access log of these requests
    for secret in (token, token[3:], PASSWORD):
        assert secret not in log, f"a secret in the server's log: {center.log}"
        for body in bodies + center.answers:
            assert secret not in body


MALFORMED = [
    ("POST", "/api/v1/events", b"[" * 100_000),
    ("POST", "/api/v1/events", b"{" * 100_000),
    ("POST", "/api/v1/events", b"\xff\xfe\x00"),
    ("POST", "/api/v1/events", b'[{"kind": "run.started", "run_id": "' + b"r" * 100_000 + b'"}]'),
    ("POST", "/api/v1/events", b'[{"kind": "run.started", "detail": ' + b"[" * 5_000 + b"]" * 5_000 + b"}]"),
    ("POST", "/api/v1/events", b"null"),
    ("POST", "/api/v1/models/feed/promote", b"{"),
    ("POST", "/api/v1/models/feed/promote", b'{"traffic": "1e999"}'),
    ("POST", "/api/v1/models/feed/promote", b'{"traffic": 10, "version": -1}'),
    ("POST", "/api/v1/models/feed/promote", b"[" * 100_000),
    ("POST", "/api/v1/datasets/1/pin", b"x" * 100_000),
]


@pytest.mark.reliability(
    area="input",
    component="center API and console",
    fault="malformed bodies: broken or deeply nested JSON, bad bytes, huge fields",
    proves="4xx naming the problem (or the event rejected in a 200), never a 5xx; the runs and datasets intact",
)
@pytest.mark.parametrize(("method", "url", "body"), MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_bodies_are_4xx(center: Center, method: str, url: str, body: bytes) -> None:
    before = center.counts()
    headers = {**center.auth, "Content-Type": "application/json"}
    answer = httpx.request(method, center.url + url, content=body, headers=headers, timeout=10)
    center.answers.append(answer.text)
    assert answer.status_code < 500, (answer.status_code, answer.text[:200])
    if answer.status_code == 200 and url.endswith("/events"):
        assert answer.json()["applied"] == 0, answer.text[:300]
    assert center.counts() == before
