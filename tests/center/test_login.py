"""Console login under attack: the throttle (per account, per address, shared by workers), hashing off the
event loop, logout that ends the session on the server, ``center user``'s password input, bounded ids."""

from __future__ import annotations

import hashlib
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from tests.center.conftest import PASSWORD
from tests.center.test_console import csrf, log_in
from tests.center.test_serve import center_env, start_center, weiflow
from weiflow.center import repository as repo
from weiflow.center.api import create_app
from weiflow.center.cli import main as center_main
from weiflow.center.console import SESSION_COOKIE
from weiflow.center.db import make_engine, make_sessionmaker
from weiflow.center.models import ApiToken, LoginFailure, Role, User
from weiflow.config import load_settings
from weiflow.processes import free_port

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def client_at(sessions: sessionmaker[Session], address: str) -> TestClient:
    """A console client whose requests come from ``address`` (what the throttle counts per address)."""
    return TestClient(create_app(sessions), client=(address, 50000))


def attempt(client: TestClient, username: str, password: str) -> httpx.Response:
    form = client.get("/login")
    return client.post(
        "/login",
        data={"username": username, "password": password, "csrf": csrf(form.text), "next": "/runs"},
        follow_redirects=False,
    )


def failures(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions() as session:
        return {row.key: row.failures for row in session.scalars(select(LoginFailure))}


def user_key(name: str) -> str:
    """An account's key in ``login_failures``: the hash of its name, which is never stored as typed."""
    return "user#sha256:" + hashlib.sha256(name.encode()).hexdigest()


def end_blocks(sessions: sessionmaker[Session]) -> None:
    """What waiting out every block would do, without the wait."""
    with sessions() as session:
        session.execute(update(LoginFailure).values(blocked_until=datetime.now(UTC) - timedelta(seconds=1)))
        session.commit()


@pytest.fixture
def two_free(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two free failures, then a block of a minute: long enough that no test outruns it by accident."""
    monkeypatch.setattr(repo, "LOGIN_FREE_FAILURES", 2)
    monkeypatch.setattr(repo, "LOGIN_FIRST_DELAY", timedelta(minutes=1))


def test_login_is_throttled_after_the_free_failures_without_checking_the_password(
    activity_center: sessionmaker[Session], two_free: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = client_at(activity_center, "10.0.0.1")
    for _ in range(3):  # two free, and the third blocks
        assert attempt(client, "vera", "wrong").status_code == 401
    hashed = []
    real_verify = repo.verify_password
    monkeypatch.setattr(repo, "verify_password", lambda *a, **k: hashed.append(1) or real_verify(*a, **k))
    blocked = attempt(client, "vera", PASSWORD)
    assert blocked.status_code == 429, blocked.text
    assert 55 <= int(blocked.headers["retry-after"]) <= 60
    assert "try again in" in blocked.text and SESSION_COOKIE not in client.cookies
    assert hashed == []  # refused before any hashing: a blocked guesser costs one query
    assert failures(activity_center) == {user_key("vera"): 3, "addr:10.0.0.1": 3}  # refusals are not failures

    end_blocks(activity_center)
    assert attempt(client, "vera", PASSWORD).status_code == 303
    assert hashed == [1]
    # The account's count is cleared; the address's is not (or a guesser with an account of their
    # own could log in between guesses at others and never be slowed down).
    assert failures(activity_center) == {"addr:10.0.0.1": 3}


def test_the_throttle_counts_per_address_across_usernames_and_per_account_across_addresses(
    activity_center: sessionmaker[Session], two_free: None
) -> None:
    guesser = client_at(activity_center, "10.0.0.1")
    for name in ("nobody", "otto", "gina"):  # unknown users count like known ones
        assert attempt(guesser, name, "wrong").status_code == 401
    assert attempt(guesser, "vera", PASSWORD).status_code == 429  # vera's account is fine; the address is not
    assert attempt(client_at(activity_center, "10.0.0.2"), "vera", PASSWORD).status_code == 303

    for n in range(3):  # one account, three addresses
        assert attempt(client_at(activity_center, f"10.0.1.{n}"), "root", "wrong").status_code == 401
    assert attempt(client_at(activity_center, "10.0.1.9"), "root", PASSWORD).status_code == 429
    assert attempt(client_at(activity_center, "10.0.1.9"), "vera", PASSWORD).status_code == 303


def test_the_delay_doubles_up_to_the_cap_and_quiet_keys_are_forgotten(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        now = T0
        for _ in range(repo.LOGIN_FREE_FAILURES):
            repo.record_login_failure(session, "vera", "10.0.0.1", now=now)
        assert repo.login_blocked(session, "vera", "10.0.0.1", now=now) is None
        delays = []
        for _ in range(12):
            repo.record_login_failure(session, "vera", "10.0.0.1", now=now)
            wait = repo.login_blocked(session, "vera", "10.0.0.1", now=now)
            assert wait is not None
            delays.append(wait.total_seconds())
            assert repo.login_blocked(session, "vera", "10.0.0.1", now=now + wait) is None  # over on time
            now += wait
        assert delays == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900]
        assert repo.login_blocked(session, "bob", "10.0.0.2", now=now - timedelta(seconds=1)) is None

        # A failure after an hour without any starts the count again: free again.
        later = now + repo.LOGIN_WINDOW + timedelta(seconds=1)
        repo.record_login_failure(session, "vera", "10.0.0.1", now=later)
        assert repo.login_blocked(session, "vera", "10.0.0.1", now=later) is None
        assert failures(sessions) == {user_key("vera"): 1, "addr:10.0.0.1": 1}

        # A success forgets the account, and with it every key quiet for the window.
        repo.record_login_failure(session, "otto", "10.0.0.3", now=T0)
        repo.clear_login_failures(session, "vera", now=later)
        assert failures(sessions) == {"addr:10.0.0.1": 1}

        # Names no user can have are counted by their hash, not refused by the database.
        odd = "x\x00" + "y" * 5000
        repo.record_login_failure(session, odd, odd, now=later)
        assert repo.authenticate_password(session, odd, "whatever") is None
        assert sum(key.startswith(("user#sha256:", "addr#sha256:")) for key in failures(sessions)) == 2


def test_an_older_scrypt_password_logs_in_once_and_is_stored_as_argon2id_from_then_on(
    sessions: sessionmaker[Session],
) -> None:
    # What centers before Argon2id stored: scrypt (n=2**14, r=8, p=1), salt and 32-byte digest in hex.
    salt = bytes(range(16))
    digest = hashlib.scrypt(PASSWORD.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    legacy = f"scrypt${salt.hex()}${digest.hex()}"
    with sessions() as session:
        repo.create_user(session, "vera", Role.VIEWER)
        session.execute(update(User).where(User.username == "vera").values(password_hash=legacy))
        session.commit()
        assert repo.authenticate_password(session, "vera", "wrong") is None
        assert session.scalar(select(User.password_hash).where(User.username == "vera")) == legacy  # kept
        principal = repo.authenticate_password(session, "vera", PASSWORD)
        assert principal is not None and principal.username == "vera"
        upgraded = session.scalar(select(User.password_hash).where(User.username == "vera"))
        assert upgraded is not None and upgraded.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
        assert repo.authenticate_password(session, "vera", PASSWORD) == principal  # by the new hash
        assert session.scalar(select(User.password_hash).where(User.username == "vera")) == upgraded  # up to date

        # A stored value that is no hash at all (damaged, or put there by hand) refuses, never errs.
        for damaged in ("scrypt$zz$00", "scrypt$00", "$argon2id$v=19$m=1,t=1,p=1$AAAA$AAAA", "plain", ""):
            session.execute(update(User).where(User.username == "vera").values(password_hash=damaged))
            session.commit()
            assert repo.authenticate_password(session, "vera", PASSWORD) is None, damaged


@pytest.fixture
def second_worker(engine: Engine, request: pytest.FixtureRequest) -> Iterator[sessionmaker[Session]]:
    """Sessions on a second engine (its own connection pool) over the same database: another worker process."""
    if engine.dialect.name == "sqlite":
        other = make_engine(engine.url.render_as_string(hide_password=False))
    else:
        url, schema = request.getfixturevalue("postgres_schema")
        other = make_engine(url, schema=schema)
    yield make_sessionmaker(other)
    other.dispose()


def test_failures_counted_at_once_by_two_workers_all_count(
    sessions: sessionmaker[Session], second_worker: sessionmaker[Session]
) -> None:
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def count(worker: sessionmaker[Session], address: str) -> None:
        try:
            start.wait()
            for _ in range(5):
                with worker() as session:
                    repo.record_login_failure(session, "vera", address)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=count, args=(worker, f"10.0.0.{n}"))
        for n, worker in enumerate([sessions, second_worker] * 4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    counted = failures(sessions)
    assert counted[user_key("vera")] == 40 and all(counted[f"addr:10.0.0.{n}"] == 5 for n in range(8)), counted
    with second_worker() as session:
        assert repo.login_blocked(session, "vera", "10.9.9.9") is not None  # seen by either worker


def test_logout_without_the_csrf_field_still_ends_the_session_on_the_server(
    activity_center: sessionmaker[Session],
) -> None:
    console = TestClient(create_app(activity_center))
    log_in(console, "vera")
    token = console.cookies[SESSION_COOKIE]
    response = console.post("/logout", follow_redirects=False)  # no form at all
    assert response.status_code == 303 and response.headers["location"] == "/login"
    assert SESSION_COOKIE not in console.cookies
    console.cookies.set(SESSION_COOKIE, token)  # the old cookie, replayed
    assert console.get("/runs", follow_redirects=False).status_code == 303
    with activity_center() as session:
        assert session.scalar(select(ApiToken.id).where(ApiToken.kind == "session")) is None


def test_logout_ends_only_console_sessions(activity_center: sessionmaker[Session]) -> None:
    with activity_center() as session:
        api_token = repo.create_token(session, "vera")
    console = TestClient(create_app(activity_center))
    console.cookies.set(SESSION_COOKIE, api_token)  # an API token passed off as a session cookie
    console.post("/logout")
    with activity_center() as session:
        assert repo.authenticate_token(session, api_token, kind="api") is not None


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/runs/2147483648", 404),  # MAX_ID + 1: PostgreSQL's INTEGER overflows
        ("/runs/9223372036854775808", 404),  # SQLite's driver overflows
        ("/runs/99999999999999999999999", 404),
        ("/runs/0", 404),
        ("/runs/-1", 404),
        ("/runs/+1", 404),
        ("/runs/1e3", 404),
        ("/datasets/9223372036854775808", 404),
        ("/datasets/1" + "0" * 400, 404),
        ("/runs?before=9223372036854775808", 422),
        ("/runs?before=-5", 422),
        ("/datasets?before=99999999999999999999", 422),
        ("/datasets?before=x", 422),
    ],
)
def test_ids_out_of_range_are_a_clean_4xx_page(activity_center: sessionmaker[Session], path: str, status: int) -> None:
    console = TestClient(create_app(activity_center), raise_server_exceptions=False)
    log_in(console, "vera")
    response = console.get(path)
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"].startswith("text/html") and "Problem" in response.text
    page = console.get("/datasets")
    refused = console.post("/datasets/9223372036854775808/pin", data={"csrf": csrf(page.text)})
    assert refused.status_code == 404 and "No dataset" in refused.text
    assert console.get(f"/runs/{repo.MAX_ID}").status_code == 404  # the largest id: just not there
    assert console.get(f"/runs?before={repo.MAX_ID}").status_code == 200


# ---- the real command and server ------------------------------------------------------------------------------


def add_user(env: dict[str, str], name: str, password: str) -> str:
    """``weiflow center user NAME --role owner --password-stdin``; the API token it prints."""
    made = weiflow("center", "user", name, "--role", "owner", "--password-stdin", env=env, input=password + "\n")
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


@pytest.mark.integration
def test_center_user_takes_the_password_from_stdin_and_refuses_it_on_the_command_line(tmp_path: Path) -> None:
    env = center_env(tmp_path)
    for argv in (["--password", "s3cret"], ["--password=s3cret"]):
        refused = weiflow("center", "user", "alice", "--role", "owner", *argv, env=env)
        assert refused.returncode == 2
        assert "--password takes no value" in refused.stderr and "--password-stdin" in refused.stderr
    empty = weiflow("center", "user", "alice", "--role", "owner", "--password-stdin", env=env, input="\n")
    assert empty.returncode == 2 and "empty password" in empty.stderr

    assert add_user(env, "alice", "s3cret with spaces ").startswith("wf_")  # nothing refused above was created
    engine = make_engine(env["WEIFLOW_DATABASE_URL"])
    with make_sessionmaker(engine)() as session:
        assert repo.authenticate_password(session, "alice", "s3cret with spaces ") is not None
        assert repo.authenticate_password(session, "alice", "s3cret with spaces") is None
    engine.dispose()


def test_center_user_asks_for_the_password_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = load_settings(env={"WEIFLOW_VAR_DIR": str(tmp_path / "var")}, cwd=tmp_path)
    answers = iter(["first", "second", "same", "same"])
    prompts: list[str] = []

    def fake_getpass(prompt: str = "Password: ") -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr("getpass.getpass", fake_getpass)
    assert center_main(["user", "bob", "--role", "viewer", "--password"], settings) == 2
    assert "the two passwords differ; nothing was created" in capsys.readouterr().err
    assert center_main(["user", "bob", "--role", "viewer", "--password"], settings) == 0
    assert prompts[0] == "Password for bob: " and len(prompts) == 4
    engine = make_engine(settings.database_url)
    with make_sessionmaker(engine)() as session:
        assert repo.authenticate_password(session, "bob", "same") is not None
    engine.dispose()


def login_over_http(base: str, username: str, password: str) -> httpx.Response:
    """A login on a fresh connection: with several workers, whichever accepts it answers."""
    with httpx.Client(base_url=base) as client:
        form = client.get("/login")
        return client.post(
            "/login",
            data={"username": username, "password": password, "csrf": csrf(form.text), "next": "/runs"},
            follow_redirects=False,
        )


@pytest.mark.integration
def test_a_real_center_throttles_logins_across_its_workers_and_logout_ends_the_session(tmp_path: Path) -> None:
    env = center_env(tmp_path)
    add_user(env, "vera", PASSWORD)
    port = free_port()
    server, _workers = start_center(env, port)
    base = f"http://127.0.0.1:{port}"
    engine = make_engine(env["WEIFLOW_DATABASE_URL"])
    db = make_sessionmaker(engine)
    try:
        for _ in range(repo.LOGIN_FREE_FAILURES + 1):  # the free ones, and one that blocks
            assert login_over_http(base, "vera", "wrong").status_code == 401
        assert failures(db) == {user_key("vera"): 6, "addr:127.0.0.1": 6}  # every worker counted in one place
        with db() as session:  # as if the block were longer than the 1 s it is: no race with the clock
            session.execute(update(LoginFailure).values(blocked_until=datetime.now(UTC) + timedelta(seconds=30)))
            session.commit()
        blocked = login_over_http(base, "vera", PASSWORD)
        assert blocked.status_code == 429 and 25 <= int(blocked.headers["retry-after"]) <= 30

        end_blocks(db)
        with httpx.Client(base_url=base) as browser:
            form = browser.get("/login")
            data = {"username": "vera", "password": PASSWORD, "csrf": csrf(form.text), "next": "/runs"}
            assert browser.post("/login", data=data, follow_redirects=False).status_code == 303
            cookie = browser.cookies[SESSION_COOKIE]
            assert browser.get("/runs").status_code == 200
            assert browser.post("/logout", follow_redirects=False).status_code == 303  # no CSRF field
        replay = httpx.get(f"{base}/runs", cookies={SESSION_COOKIE: cookie}, follow_redirects=False)
        assert replay.status_code == 303 and "/login" in replay.headers["location"]
    finally:
        engine.dispose()
        server.terminate()
        server.communicate(timeout=30)


# One worker (one event loop: the worst case) that never throttles, so every wrong password is hashed.
UNTHROTTLED_CENTER = """
import sys
import uvicorn
from weiflow.center import repository
repository.LOGIN_FREE_FAILURES = 10**9
from weiflow.center.api import app_from_settings
uvicorn.run(app_from_settings(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


@pytest.mark.integration
@pytest.mark.slow
def test_a_flood_of_wrong_passwords_does_not_slow_authenticated_requests(tmp_path: Path) -> None:
    env = center_env(tmp_path)
    token = add_user(env, "vera", PASSWORD)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-c", UNTHROTTLED_CENTER, str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    stop = threading.Event()
    answers: list[int] = []

    def guess() -> None:
        with httpx.Client(base_url=base, timeout=30) as client:
            page = client.get("/login")
            while not stop.is_set():
                page = client.post("/login", data={"username": "vera", "password": "wrong", "csrf": csrf(page.text)})
                answers.append(page.status_code)

    guessers = [threading.Thread(target=guess) for _ in range(4)]
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{base}/login", timeout=1)
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, "the center did not start"
                time.sleep(0.2)
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as api:
            assert api.get("/api/v1/me").status_code == 200
            for thread in guessers:
                thread.start()
            while len(answers) < 8:  # the flood is on: logins are being hashed
                time.sleep(0.05)
            latencies = []
            for _ in range(25):
                started = time.perf_counter()
                assert api.get("/api/v1/me").json()["username"] == "vera"
                latencies.append(time.perf_counter() - started)
                time.sleep(0.04)
        hashed = len(answers)
    finally:
        stop.set()
        for thread in guessers:
            if thread.is_alive():
                thread.join(timeout=30)
        server.terminate()
        server.communicate(timeout=30)
    assert set(answers) == {401}, set(answers)  # wrong passwords, all checked: nothing throttled them
    assert hashed >= 16, hashed
    # With the hashing on the event loop, /me waited behind up to four hashes (~0.1 s each here) every time.
    assert max(latencies) < 0.5 and statistics.median(latencies) < 0.05, latencies
