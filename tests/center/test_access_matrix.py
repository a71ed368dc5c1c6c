"""The access matrix as data: every route of the center x every kind of caller → the expected HTTP status.

``MATRIX`` is the table: one row per endpoint or console action (a route with an ``{action}`` has a row
per action), one column per caller. Every cell is requested against a real center app (its API and
console, over a SQLite file holding a pipeline of group ``ranking`` with a run, a dataset, a training
curve and a model with two versions in a file repository). The table must cover every route the app
has, so a new route without a row fails here; :func:`render_markdown` draws it for
``docs/access-matrix.md``, which a test keeps equal to the table (``WEIFLOW_WRITE_ACCESS_MATRIX=1``
rewrites it).

How secrets are stored is asserted here too: the database holds an Argon2id hash of a password
(argon2-cffi, at OWASP's recommended cost) and a SHA-256 of an API or session token (a 256-bit random value, for
which a fast hash is the usual choice: no dictionary can guess it), never the secret.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher, extract_parameters
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker
from starlette.routing import Mount, Route

from tests.center.conftest import PASSWORD, TEAM
from tests.center.test_model_routing import MODEL, deploy_event, publish
from tests.center.test_progress import curve_events
from tests.center.test_progress import run_events as train_events
from weiflow.center.api import create_app
from weiflow.center.console import SESSION_COOKIE, csrf_token
from weiflow.center.db import make_engine, make_sessionmaker, migrate
from weiflow.center.models import ApiToken, AuditEntry, Dataset, DatasetState, LoginFailure, User
from weiflow.center.repository import create_token, create_user, revoke_token
from weiflow.modelrepo import FileRepository, promote
from weiflow.tracking import DatasetInfo, Event, EventKind

DOC = Path(__file__).resolve().parents[2] / "docs" / "access-matrix.md"
WRITE_ENV = "WEIFLOW_WRITE_ACCESS_MATRIX"

# The callers, in the table's column order. "other owner" is an owner of group ads; the pipeline, its
# dataset and its model belong to group ranking, whose owner is alice.
CALLERS = ("no token", "expired", "revoked", "viewer", "other owner", "owner", "admin")
USER_OF = {"viewer": "vera", "other owner": "bob", "owner": "alice", "admin": "root"}


@dataclass(frozen=True)
class Row:
    """One endpoint or console action: how to call it, and what each caller gets."""

    action: str  # what the row is, for people
    method: str
    route: str  # the app's route path, as registered (the coverage check matches on it)
    url: str  # what is requested (ids filled in from the fixture: {dataset}, {run})
    expected: tuple[int, ...]  # per caller, in CALLERS order
    console: bool = False  # a console page or form: a session cookie (and a CSRF field on POST), not a token
    body: Callable[[], Any] | None = None  # JSON (API) or form fields (console) for the request
    prepare: str | None = None  # the state the row needs first (see Center.prepare)

    def __post_init__(self) -> None:
        assert len(self.expected) == len(CALLERS), self.action


def _all(status: int) -> tuple[int, ...]:
    return (status,) * len(CALLERS)


def _signed_in(status: int) -> tuple[int, ...]:
    """401 without a valid token, ``status`` for every user."""
    return (401, 401, 401, status, status, status, status)


def _owner_action(allowed: int) -> tuple[int, ...]:
    """401 without a valid token, 403 for viewers and other groups' owners, ``allowed`` for the owner and admins."""
    return (401, 401, 401, 403, 403, allowed, allowed)


def _page(status: int) -> tuple[int, ...]:
    """Console: 303 to the login page without a live session, ``status`` for every user."""
    return (303, 303, 303, status, status, status, status)


def _console_action(allowed: int) -> tuple[int, ...]:
    return (303, 303, 303, 403, 403, allowed, allowed)


def _event_batch() -> str:
    # A new run of alice's pipeline: applied for its owner and admins, refused per event (in a 200) for others.
    event = Event(
        EventKind.RUN_STARTED, "matrix", "feed", ts=datetime.now(UTC).isoformat(), detail={"owner": "ranking"}
    )
    return "[" + event.to_json() + "]"


API = "/api/v1"
MATRIX: tuple[Row, ...] = (
    # Public: what a client needs before it has a token, and nothing else.
    Row("OpenAPI document", "GET", "/api/openapi.json", "/api/openapi.json", _all(200)),
    Row("API docs page", "GET", "/api/docs", "/api/docs", _all(200)),
    # fastapi-offline's Swagger UI OAuth2 helper page (static HTML; the center has no OAuth2), at its default path.
    Row("Swagger UI OAuth2 redirect page", "GET", "/docs/oauth2-redirect", "/docs/oauth2-redirect", _all(200)),
    Row("API docs assets", "GET", "/api/docs/assets", "/api/docs/assets/swagger-ui.css", _all(200)),
    # The API: every reader reads; owners act on their own group's things; admins on everything.
    Row("who am I", "GET", f"{API}/me", f"{API}/me", _signed_in(200)),
    Row(
        "ingest events",
        "POST",
        f"{API}/events",
        f"{API}/events",
        (401, 401, 401, 403, 200, 200, 200),
        body=_event_batch,
    ),
    Row("list runs", "GET", f"{API}/runs", f"{API}/runs?pipeline=feed", _signed_in(200)),
    Row("a run", "GET", f"{API}/runs/{{run_pk}}", f"{API}/runs/{{run}}", _signed_in(200)),
    Row("a run's curves", "GET", f"{API}/runs/{{run_pk}}/progress", f"{API}/runs/{{run}}/progress", _signed_in(200)),
    Row("list datasets", "GET", f"{API}/datasets", f"{API}/datasets?state=live", _signed_in(200)),
    Row("a dataset", "GET", f"{API}/datasets/{{dataset_id}}", f"{API}/datasets/{{dataset}}", _signed_in(200)),
    *(
        Row(
            f"{verb} a dataset",
            "POST",
            f"{API}/datasets/{{dataset_id}}/{verb}",
            f"{API}/datasets/{{dataset}}/{verb}",
            _owner_action(200),
            prepare="pending",
        )
        for verb in ("confirm-deletion", "reject-deletion", "pin", "unpin")
    ),
    Row("list jobs", "GET", f"{API}/jobs", f"{API}/jobs", _signed_in(200)),
    Row("list models", "GET", f"{API}/models", f"{API}/models", _signed_in(200)),
    Row("a model", "GET", f"{API}/models/{{name}}", f"{API}/models/{MODEL}", _signed_in(200)),
    Row(
        "promote a model version",
        "POST",
        f"{API}/models/{{name}}/promote",
        f"{API}/models/{MODEL}/promote",
        _owner_action(200),
        body=lambda: {"version": 2, "traffic": 10},
        prepare="canary",
    ),
    Row(
        "roll a model back",
        "POST",
        f"{API}/models/{{name}}/rollback",
        f"{API}/models/{MODEL}/rollback",
        _owner_action(200),
        prepare="canary",
    ),
    Row("the audit log", "GET", f"{API}/audit", f"{API}/audit", (401, 401, 401, 403, 403, 403, 200)),
    # The console: a login session instead of a token; the same rules.
    Row("console home", "GET", "/", "/", _all(303), console=True),
    Row("login page", "GET", "/login", "/login", _all(200), console=True),
    # A wrong password from anyone: 401, and the form again (a right one is test_console's and test_login's).
    Row(
        "log in (wrong password)",
        "POST",
        "/login",
        "/login",
        _all(401),
        console=True,
        body=lambda: {"username": "alice", "password": "not the password"},
        prepare="unthrottled",
    ),
    Row("log out", "POST", "/logout", "/logout", _all(303), console=True, prepare="own-session"),
    Row("jobs page", "GET", "/jobs", "/jobs", _page(200), console=True),
    Row("runs page", "GET", "/runs", "/runs?pipeline=feed", _page(200), console=True),
    Row("run page", "GET", "/runs/{run_pk}", "/runs/{run}", _page(200), console=True),
    Row(
        "run by Airflow's ids",
        "GET",
        "/runs/by-id/{pipeline}/{run_id:path}",
        "/runs/by-id/feed/r1",
        _page(303),
        console=True,
    ),
    Row(
        "training curve image",
        "GET",
        "/runs/{run_pk}/curve.svg",
        "/runs/{run}/curve.svg?node=train&module=fit",
        _page(200),
        console=True,
    ),
    Row("datasets page", "GET", "/datasets", "/datasets?state=pending-deletion", _page(200), console=True),
    Row("dataset page", "GET", "/datasets/{dataset_id}", "/datasets/{dataset}", _page(200), console=True),
    *(
        Row(
            f"{verb} a dataset (form)",
            "POST",
            "/datasets/{dataset_id}/{action}",
            f"/datasets/{{dataset}}/{verb}",
            _console_action(303),
            console=True,
            prepare="pending",
        )
        for verb in ("confirm-deletion", "reject-deletion", "pin", "unpin")
    ),
    Row("models page", "GET", "/models", "/models", _page(200), console=True),
    Row("model page", "GET", "/models/{name}", f"/models/{MODEL}", _page(200), console=True),
    Row(
        "promote a model version (form)",
        "POST",
        "/models/{name}/{action}",
        f"/models/{MODEL}/promote",
        _console_action(303),
        console=True,
        body=lambda: {"version": "2", "traffic": "10"},
        prepare="canary",
    ),
    Row(
        "roll a model back (form)",
        "POST",
        "/models/{name}/{action}",
        f"/models/{MODEL}/rollback",
        _console_action(303),
        console=True,
        prepare="canary",
    ),
)


def render_markdown(rows: tuple[Row, ...] = MATRIX) -> str:
    """The table as markdown: what docs/access-matrix.md holds."""
    lines = [
        "# Access matrix",
        "",
        "Generated from `tests/center/test_access_matrix.py` (`MATRIX`); every cell is a request to a real",
        "center in that test. Rewrite with `WEIFLOW_WRITE_ACCESS_MATRIX=1 .venv/bin/python -m pytest",
        "tests/center/test_access_matrix.py`; a test fails when this file and the table differ.",
        "",
        "Callers: *no token* (no Authorization header, no session cookie); *expired* (an admin's token or",
        "session past its expiry); *revoked* (an admin's, deleted: a logged-out session, a removed token);",
        "*viewer*; *other owner* (an owner of another group than the pipeline's); *owner* (of the pipeline's",
        "group); *admin*.",
        "API routes take a bearer token, console routes a login session cookie and, on POST, a CSRF field.",
        "303 on a console route without a session is the redirect to the login page.",
        "",
        "| action | request | " + " | ".join(CALLERS) + " |",
        "|---|---|" + "---|" * len(CALLERS),
    ]
    for row in rows:
        where = "console" if row.console else "API"
        cells = " | ".join(str(status) for status in row.expected)
        lines.append(f"| {row.action} ({where}) | `{row.method} {row.url}` | {cells} |")
    lines += [
        "",
        "Event ingestion answers 200 to any owner: each event is checked on its own, and an event about",
        "another group's pipeline is refused inside the answer (`rejected`), applying nothing.",
        "",
    ]
    return "\n".join(lines)


@dataclass
class Center:
    client: TestClient
    sessions: sessionmaker[Session]
    repository: FileRepository
    tokens: dict[str, str]  # caller -> API token (expired and revoked included)
    cookies: dict[str, str]  # caller -> console session token
    ids: dict[str, int] = field(default_factory=dict)

    def prepare(self, what: str | None) -> None:
        if what == "pending":
            # Every dataset action is valid from here: confirm, reject, pin and unpin all succeed for those allowed.
            with self.sessions() as db:
                db.execute(
                    update(Dataset)
                    .where(Dataset.id == self.ids["dataset"])
                    .values(state=DatasetState.PENDING_DELETION, pinned=False, marked_at=datetime.now(UTC))
                )
                db.commit()
        elif what == "unthrottled":
            # Seven wrong passwords from one address in a row would be throttled (429): each cell starts afresh.
            with self.sessions() as db:
                db.execute(delete(LoginFailure))
                db.commit()
        elif what == "canary":
            # v1 stable at 90%, v2 a 10% canary: both a promote and a rollback have something to do.
            promote(self.repository, MODEL, 2, traffic=10, who="root")

    def snapshot(self) -> tuple[Any, ...]:
        """What a refused action must leave as it was: the dataset's state and pin, the routing file, the audit log."""
        with self.sessions() as db:
            dataset = db.get_one(Dataset, self.ids["dataset"])
            audit = db.scalar(select(func.count()).select_from(AuditEntry))
            state = (dataset.state, dataset.pinned, audit)
        return (*state, (Path(self.repository.uri) / MODEL / "weiflow-routing.json").read_bytes())


@pytest.fixture(scope="module")
def center(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Center]:
    tmp = tmp_path_factory.mktemp("access")
    engine = make_engine(f"sqlite:///{tmp / 'center.db'}")
    migrate(engine)
    sessions = make_sessionmaker(engine)
    storage = tmp / "storage"
    repository = FileRepository(str(storage / "models"))
    client = TestClient(create_app(sessions, storage_roots=[str(storage)], token_cache_s=0), follow_redirects=False)
    tokens, cookies = {}, {}
    with sessions() as db:
        for name, role, groups in TEAM:
            create_user(db, name, role, groups=groups)
        for caller, user in USER_OF.items():
            tokens[caller] = create_token(db, user)
            cookies[caller] = create_token(db, user, name="console", kind="session", ttl=timedelta(hours=1))
        for caller in ("expired", "revoked"):
            tokens[caller] = create_token(db, "root", ttl=timedelta(hours=1))
            cookies[caller] = create_token(db, "root", name="console", kind="session", ttl=timedelta(hours=1))
        for kind in ("api", "session"):
            secret = tokens["expired"] if kind == "api" else cookies["expired"]
            db.execute(
                update(ApiToken)
                .where(ApiToken.token_hash == hashlib.sha256(secret.encode()).hexdigest())
                .values(expires_at=datetime.now(UTC) - timedelta(minutes=1))
            )
        db.commit()
        revoke_token(db, tokens["revoked"])
        revoke_token(db, cookies["revoked"])
    tokens["no token"] = cookies["no token"] = ""
    c = Center(client, sessions, repository, tokens, cookies)

    # What the rows act on: a run with a training curve and a model with two versions (group ranking's
    # pipeline 'feed', run r1), and a dataset of another of its runs.
    v1, r1 = publish(repository, tmp, 100)
    v2, r2 = publish(repository, tmp, 10)
    path = storage / "samples"
    path.mkdir(parents=True)
    (path / "part-0").write_text("x" * 10)
    ts = datetime.now(UTC).isoformat()
    writes = {"samples": {"uri": f"file://{path}", "retention": "ttl:1", "consumers": []}}
    dataset_run = [
        Event(EventKind.RUN_STARTED, "r2", "feed", ts=ts, detail={"owner": "ranking", "upstream": {"make": []}}),
        Event(EventKind.NODE_STARTED, "r2", "feed", node="make", ts=ts, detail={"modules": ["w"], "writes": writes}),
        Event(
            EventKind.DATASET_WRITTEN,
            "r2",
            "feed",
            node="make",
            module="w",
            ts=ts,
            dataset=DatasetInfo("samples", f"file://{path}", "json", 10, 1, 1),
        ),
    ]
    events = [
        *train_events(ended=True),
        *curve_events(1, 3),
        deploy_event(repository, v1, r1),
        deploy_event(repository, v2, r2),
        *dataset_run,
    ]
    answer = client.post(
        f"{API}/events", content="[" + ",".join(e.to_json() for e in events) + "]", headers=auth(c, "admin")
    )
    assert answer.status_code == 200 and answer.json()["rejected"] == 0, answer.text
    c.ids["run"] = client.get(f"{API}/runs?pipeline=feed", headers=auth(c, "admin")).json()["items"][-1]["id"]
    c.ids["dataset"] = client.get(f"{API}/datasets?name=samples", headers=auth(c, "admin")).json()["items"][0]["id"]
    yield c
    client.close()
    engine.dispose()


def auth(center: Center, caller: str) -> dict[str, str]:
    token = center.tokens[caller]
    return {"Authorization": f"Bearer {token}"} if token else {}


def call(center: Center, row: Row, caller: str) -> httpx.Response:
    """Request ``row`` as ``caller``: its token, or its console session cookie and the CSRF field that goes with it."""
    url = row.url.format(**center.ids)
    body = row.body() if row.body else None
    client: httpx.Client = center.client  # TestClient is one; its own stub types its calls Any
    client.cookies.clear()
    if not row.console:
        if isinstance(body, str):
            return client.request(row.method, url, content=body, headers=auth(center, caller))
        return client.request(row.method, url, json=body, headers=auth(center, caller))
    cookie = center.cookies[caller]
    if row.prepare == "own-session" and caller in USER_OF:
        # Logging out ends the session: each live caller logs out a session of its own.
        with center.sessions() as db:
            cookie = create_token(db, USER_OF[caller], name="console", kind="session", ttl=timedelta(hours=1))
    if cookie:
        client.cookies.set(SESSION_COOKIE, cookie)
    if row.method == "GET":
        return client.get(url)
    form = dict(body or {})
    if url == "/login":
        # The login form's own CSRF pair: a pre-login cookie and its HMAC, as the login page hands them out.
        client.cookies.set("wf_login", "pre-login-secret")
        form["csrf"] = csrf_token("pre-login-secret", "login")
    elif cookie:
        form["csrf"] = csrf_token(cookie)
    return client.post(url, data=form)


CELLS = [pytest.param(row, caller, id=f"{row.method} {row.url} as {caller}") for row in MATRIX for caller in CALLERS]


@pytest.mark.reliability(
    area="access",
    component="center API and console",
    fault="every route x {no token, expired, revoked, viewer, other owner, owner, admin}",
    proves="each caller gets exactly the status in docs/access-matrix.md; refused callers change nothing",
)
@pytest.mark.parametrize(("row", "caller"), CELLS)
def test_every_cell_of_the_access_matrix(center: Center, row: Row, caller: str) -> None:
    expected = row.expected[CALLERS.index(caller)]
    anonymous = caller in ("no token", "expired", "revoked")
    refused = row.method == "POST" and (expected in (401, 403) or (row.console and anonymous))
    center.prepare(row.prepare)
    before = center.snapshot() if refused and row.url not in ("/login", "/logout") else None
    answer = call(center, row, caller)
    assert answer.status_code == expected, (row.action, caller, answer.status_code, answer.text[:300])
    if before is not None:
        assert center.snapshot() == before, (row.action, caller, "a refused request changed something")
    if row.console and anonymous and row.url not in ("/", "/logout"):
        assert answer.headers["location" if expected == 303 else "content-type"].startswith(("/login", "text/html"))
    if row.url == f"{API}/events" and expected == 200:
        assert answer.json()["rejected"] == (1 if caller == "other owner" else 0), answer.text


def _route_keys(app: Any) -> set[tuple[str, str]]:
    keys = set()
    for route in app.routes:
        if isinstance(route, Mount):
            keys.add(("GET", route.path))
        elif isinstance(route, APIRoute | Route):
            keys.update((method, route.path) for method in route.methods or () if method != "HEAD")
    return keys


def test_the_matrix_has_a_row_for_every_route(center: Center) -> None:
    routes = _route_keys(center.client.app)
    rows = {(row.method, row.route) for row in MATRIX}
    assert routes - rows == set(), "routes without a row in MATRIX: add them, with each caller's status"
    assert rows - routes == set(), "rows for routes the app no longer has"


def test_the_generated_table_is_the_committed_one() -> None:
    text = render_markdown()
    if os.environ.get(WRITE_ENV) == "1":
        DOC.write_text(text)
    assert DOC.exists() and DOC.read_text() == text, f"docs/access-matrix.md is stale: rerun with {WRITE_ENV}=1"


@pytest.mark.reliability(
    area="access",
    component="center credentials",
    fault="the database read by someone who should not",
    proves="it holds an Argon2id hash of each password and a SHA-256 of each token, never the secret",
)
def test_passwords_and_tokens_are_stored_only_as_hashes(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'center.db'}")
    migrate(engine)
    sessions = make_sessionmaker(engine)
    with sessions() as db:
        create_user(db, "alice", TEAM[1][1], password=PASSWORD, groups=["ranking"])
        token = create_token(db, "alice")
        stored = db.scalar(select(User.password_hash).where(User.username == "alice"))
        rows = db.execute(select(ApiToken)).scalars().all()
    engine.dispose()
    assert stored is not None and PASSWORD not in stored
    # Argon2id at OWASP's first recommended setting (19 MiB, 2 passes, 1 lane), a random salt per password.
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    parameters = extract_parameters(stored)
    assert (parameters.salt_len, parameters.hash_len) == (16, 32)
    assert PasswordHasher().verify(stored, PASSWORD)  # any Argon2 implementation checks it: the standard encoding
    [row] = rows
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest() and token not in row.token_hash
    raw = (tmp_path / "center.db").read_bytes()
    assert PASSWORD.encode() not in raw and token.encode() not in raw and token[3:].encode() not in raw
