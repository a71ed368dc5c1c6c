"""The web console: server-rendered pages (Jinja2) over the same repository functions as the API.

No JavaScript, no build step, nothing fetched from the network: pages are HTML with inline
CSS, and a run's DAG is inline SVG (:mod:`weiflow.center.dagsvg`). Login sets a session
cookie (``HttpOnly``, ``SameSite=Strict``) holding a random token of kind ``session``, of which
only a hash is stored, like API tokens. Every POST form carries a CSRF token derived from that
secret (HMAC), so a page elsewhere cannot submit the forms even where the cookie would be sent;
the login form uses the same scheme with a short-lived pre-login cookie. Owner actions go through
:func:`weiflow.center.repository.set_deletion` and :func:`~weiflow.center.repository.set_pin`:
the same permission checks, conditional updates and audit entries as the API.

Logins are throttled per account and per client address (:func:`weiflow.center.repository.login_blocked`),
and a login's password hashing and database work run on a small thread pool of their own, never on the
event loop, so a crowd of wrong passwords slows no one else's requests.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from weiflow.center import repository as repo
from weiflow.center.curvesvg import render_curve_svg
from weiflow.center.dagsvg import STATE_COLOURS, render_dag_svg
from weiflow.center.models import ApiToken, DatasetState, Pipeline, Run, State, utcnow
from weiflow.center.progress import curve_summaries, run_progress
from weiflow.center.repository import ActionError, Principal
from weiflow.center.routing import change_routing
from weiflow.config import load_settings
from weiflow.errors import ConfigError
from weiflow.modelrepo.contracts import MODEL_NAME_PATTERN

__all__ = ["SESSION_COOKIE", "SESSION_TTL", "add_console", "csrf_token"]

SESSION_COOKIE = "wf_session"
LOGIN_COOKIE = "wf_login"
SESSION_TTL = timedelta(hours=12)
PAGE = 50
FILTER_MAX = 1024  # the longest stored value a filter compares with (a dataset URI)
ACTIONS = {
    "confirm-deletion": "deletion confirmed: the next sweep deletes the files and keeps a tombstone",
    "reject-deletion": "deletion rejected: kept, and not marked again for 30 days",
    "pin": "pinned: never deleted while pinned",
    "unpin": "unpinned: its retention policy applies again",
}
MODEL_ACTIONS = {
    "promote": "promoted: the routing file is rewritten and the prediction service follows it",
    "rollback": "rolled back: all traffic is on the previous stable version again",
}
# Inline styles only (no scripts at all): the policy forbids everything else, including framing by other sites.
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'self'; base-uri 'none'"
)

# A curve is an image of its own: its stylesheet (matplotlib's) applies to it alone, and, opened directly, it may
# run nothing and load nothing.
CURVE_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'self'"
NAME_MAX = 200  # node and module ids are at most this long (eventschema's Name)

# A login's Argon2id (40-50 ms of CPU; it releases the GIL) and its database work run on these two threads: not
# on the event loop, where four clients posting wrong passwords raised every request's latency fifty-fold, and
# not in the shared thread pool, which they could fill. However many logins arrive, they queue here and cost
# this worker at most two threads and two database connections; everything else keeps being answered.
_LOGIN_THREADS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="weiflow-login")
# An id in a path or ``before``: digits only (int() would also take '+1', ' 1', '1_0' and other scripts' digits).
_DIGITS = re.compile(r"[0-9]{1,19}")
_MODEL_NAME = re.compile(MODEL_NAME_PATTERN)

_templates = Jinja2Templates(directory=str(Path(__file__).resolve().parent / "templates"))


def csrf_token(secret: str, purpose: str = "form") -> str:
    """The CSRF token that goes with a session (or pre-login) cookie value."""
    return hmac.new(secret.encode(), purpose.encode(), hashlib.sha256).hexdigest()


def _size(value: int | None) -> str:
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"  # pragma: no cover - the loop always returns


def _when(value: str | None) -> str:
    if not value:
        return "—"
    try:
        return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return value


def _newest_first(split: dict[str, Any]) -> list[tuple[str, Any]]:
    """A split's (version, share) pairs, newest version first: by number, '10' after '9'."""
    return sorted(split.items(), key=lambda item: int(item[0]) if _DIGITS.fullmatch(str(item[0])) else -1, reverse=True)


_templates.env.filters["size"] = _size
_templates.env.filters["when"] = _when
_templates.env.filters["newest_first"] = _newest_first


class _LoginRequired(Exception):
    pass


def _id(value: str | None) -> int | None:
    """``value`` as a row id (1 to ``MAX_ID``), or None: past ``MAX_ID`` the database would error, not find nothing."""
    if value is None or not _DIGITS.fullmatch(value):
        return None
    number = int(value)
    return number if 1 <= number <= repo.MAX_ID else None


def _shown(value: str) -> str:
    return value if len(value) <= 40 else value[:40] + "…"


@dataclass(frozen=True)
class _Attempt:
    """How a login attempt ended: a new session token, or refused (``retry_after`` seconds when throttled)."""

    token: str | None = None
    retry_after: int | None = None


def _attempt_login(sessions: sessionmaker[Session], username: str, password: str, address: str) -> _Attempt:
    # Runs on _LOGIN_THREADS. While blocked, the password is not even hashed: a blocked guesser costs one query.
    with sessions() as db:
        wait = repo.login_blocked(db, username, address)
        if wait is not None:
            return _Attempt(retry_after=max(1, math.ceil(wait.total_seconds())))
        principal = repo.authenticate_password(db, username, password)
        if principal is None:
            repo.record_login_failure(db, username, address)
            return _Attempt()
        repo.clear_login_failures(db, username)
        # Expired console sessions are dead rows: clear them here rather than in a separate job.
        db.execute(delete(ApiToken).where(ApiToken.kind == "session", ApiToken.expires_at < utcnow()))
        token = repo.create_token(db, principal.username, name="console", kind="session", ttl=SESSION_TTL)
        return _Attempt(token=token)


def _revoke_session(sessions: sessionmaker[Session], token: str) -> None:
    with sessions() as db:
        repo.revoke_token(db, token, kind="session")


def _base(request: Request) -> str:
    """The prefix the console is mounted under ('' standalone, '/weiflow-center' inside Airflow)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _airflow_run_url(request: Request, pipeline: str, run_id: str) -> str | None:
    """The run's page in Airflow's UI (the DAG id is the pipeline's name), or None with no ``airflow_url``.

    ``app.state.airflow_url`` when set (mounted in Airflow: its base path), else the setting, read once.
    """
    state = request.app.state
    if not hasattr(state, "airflow_url"):
        try:
            state.airflow_url = load_settings().airflow_url
        except ConfigError:
            state.airflow_url = None
    if state.airflow_url is None:
        return None
    return f"{state.airflow_url}/dags/{quote(pipeline, safe='')}/runs/{quote(run_id, safe='')}"


def _safe_next(value: str | None) -> str:
    # Only a path on this site: never '//host' or 'https://host' (an open redirect after login).
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/runs"


def _sessions(request: Request) -> sessionmaker[Session]:
    sessions: sessionmaker[Session] = request.app.state.sessions
    return sessions


def _user(request: Request, db: Session) -> Principal:
    token = request.cookies.get(SESSION_COOKIE)
    principal = repo.authenticate_token(db, token, kind="session") if token else None
    if principal is None:
        raise _LoginRequired
    return principal


def _page(
    request: Request, name: str, context: dict[str, Any], *, user: Principal | None = None, status: int = 200
) -> Response:
    token = request.cookies.get(SESSION_COOKIE)
    response = _templates.TemplateResponse(
        request,
        name,
        {
            "base": _base(request),
            "user": user,
            "csrf": csrf_token(token) if token and user else "",
            "colours": STATE_COLOURS,
            **context,
        },
        status_code=status,
    )
    return _harden(response)


def _harden(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


def _redirect(request: Request, path: str) -> RedirectResponse:
    return RedirectResponse(_base(request) + path, status_code=303)


def _cookie_path(request: Request) -> str:
    return _base(request) or "/"


def _bad_before(request: Request, user: Principal) -> Response:
    message = f"'before' must be a whole number from 1 to {repo.MAX_ID}."
    return _page(request, "error.html", {"message": message}, user=user, status=422)


def _bad_filter(request: Request, user: Principal, *values: str | None) -> Response | None:
    """A 422 page for a filter no stored value can match and PostgreSQL cannot even compare (a NUL)."""
    if any(value and ("\x00" in value or len(value) > FILTER_MAX) for value in values):
        message = f"Filters are text of at most {FILTER_MAX} characters, without NUL characters."
        return _page(request, "error.html", {"message": message}, user=user, status=422)
    return None


def _stale_form(request: Request, user: Principal) -> Response:
    message = "The form's security token is missing or stale; reload the page and try again."
    return _page(request, "error.html", {"message": message}, user=user, status=403)


def _form_ok(form_value: Any, cookie: str | None, purpose: str = "form") -> bool:
    if not cookie or not isinstance(form_value, str):
        return False
    return hmac.compare_digest(form_value, csrf_token(cookie, purpose))


def add_console(app: FastAPI) -> None:
    """Register the console's pages on ``app`` (which holds ``state.sessions``)."""
    router = APIRouter(include_in_schema=False)

    @app.exception_handler(_LoginRequired)
    async def _to_login(request: Request, _exc: _LoginRequired) -> Response:
        target = request.url.path[len(_base(request)) :] if request.url.path.startswith(_base(request)) else "/"
        if request.url.query:
            target += "?" + request.url.query
        return _redirect(request, "/login?" + urlencode({"next": target}))

    @router.get("/")
    def home(request: Request) -> Response:
        return _redirect(request, "/runs")

    @router.get("/login")
    def login_form(request: Request, next: str | None = None, error: str | None = None) -> Response:
        return login_page(request, next, error, status=401 if error else 200)

    def login_page(request: Request, next: str | None, error: str | None, *, status: int) -> Response:
        secret = secrets.token_urlsafe(24)
        response = _page(
            request,
            "login.html",
            {"next": _safe_next(next), "login_csrf": csrf_token(secret, "login"), "error": error},
            status=status,
        )
        response.set_cookie(
            LOGIN_COOKIE,
            secret,
            max_age=900,
            path=_cookie_path(request),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = await request.form()
        target = _safe_next(str(form.get("next") or ""))
        if not _form_ok(form.get("csrf"), request.cookies.get(LOGIN_COOKIE), "login"):
            return login_form(request, target, "The login form expired; please try again.")
        username, password = str(form.get("username") or ""), str(form.get("password") or "")
        # The peer's address. Behind a reverse proxy that is the proxy's (all its users then share one count)
        # unless uvicorn trusts the proxy's X-Forwarded-For: by default only from 127.0.0.1 and ::1, more
        # with FORWARDED_ALLOW_IPS. The account's own count holds whatever the address says.
        address = request.client.host if request.client else "unknown"
        attempt = await asyncio.get_running_loop().run_in_executor(
            _LOGIN_THREADS, _attempt_login, _sessions(request), username, password, address
        )
        if attempt.retry_after is not None:
            wait = f"Too many failed logins as this user or from this address: try again in {attempt.retry_after} s."
            response = login_page(request, target, wait, status=429)
            response.headers["Retry-After"] = str(attempt.retry_after)
            return response
        if attempt.token is None:
            return login_form(request, target, "Unknown user or wrong password.")
        response = _redirect(request, target)
        response.set_cookie(
            SESSION_COOKIE,
            attempt.token,
            max_age=int(SESSION_TTL.total_seconds()),
            path=_cookie_path(request),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        response.delete_cookie(LOGIN_COOKIE, path=_cookie_path(request))
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        # No CSRF check: whatever the form holds, the session in the cookie ends here, server-side, so a stale
        # page's Log out never leaves alive a session its user believes ended. Nor can another site log anyone
        # out: the cookie is SameSite=Strict, so a cross-site POST arrives without it.
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            await run_in_threadpool(_revoke_session, _sessions(request), token)
        response = _redirect(request, "/login")
        response.delete_cookie(SESSION_COOKIE, path=_cookie_path(request))
        return response

    @router.get("/jobs")
    def jobs(request: Request) -> Response:
        with _sessions(request)() as db:
            user = _user(request, db)
            items = repo.list_jobs(db)
        return _page(request, "jobs.html", {"jobs": items}, user=user)

    @router.get("/runs")
    def runs(
        request: Request, pipeline: str | None = None, state: str | None = None, before: str | None = None
    ) -> Response:
        with _sessions(request)() as db:
            user = _user(request, db)
            if before and _id(before) is None:
                return _bad_before(request, user)
            if refused := _bad_filter(request, user, pipeline, state):
                return refused
            items = repo.list_runs(db, pipeline=pipeline or None, state=state or None, limit=PAGE, before=_id(before))
        filters = {k: v for k, v in (("pipeline", pipeline), ("state", state)) if v}
        more = urlencode({**filters, "before": items[-1]["id"]}) if len(items) == PAGE else None
        context = {"runs": items, "filters": filters, "more": more, "states": [s.value for s in State]}
        return _page(request, "runs.html", context, user=user)

    @router.get("/runs/{run_pk}")
    def run(request: Request, run_pk: str) -> Response:
        with _sessions(request)() as db:
            user = _user(request, db)
            pk = _id(run_pk)
            detail = repo.run_detail(db, pk) if pk is not None else None
            curves = curve_summaries(db, detail["id"]) if detail is not None else []
        if detail is None:
            return _page(request, "error.html", {"message": f"No run {_shown(run_pk)}."}, user=user, status=404)
        airflow = _airflow_run_url(request, detail["pipeline"], detail["run_id"])
        context = {"run": detail, "svg": render_dag_svg(detail["nodes"]), "airflow_run": airflow, "curves": curves}
        return _page(request, "run.html", context, user=user)

    @router.get("/runs/by-id/{pipeline}/{run_id:path}")
    def run_by_id(request: Request, pipeline: str, run_id: str) -> Response:
        # Airflow's extra link: a run by its pipeline (DAG id) and run id, which is all Airflow knows.
        with _sessions(request)() as db:
            user = _user(request, db)
            if refused := _bad_filter(request, user, pipeline, run_id):
                return refused
            pk = db.scalar(
                select(Run.id)
                .join(Pipeline, Pipeline.id == Run.pipeline_id)
                .where(Pipeline.name == pipeline, Run.run_id == run_id)
            )
        if pk is None:
            message = f"No run {_shown(run_id)} of pipeline {_shown(pipeline)} (yet: its events may be on their way)."
            return _page(request, "error.html", {"message": message}, user=user, status=404)
        return _redirect(request, f"/runs/{pk}")  # the browser keeps the link's #node-… across the redirect

    @router.get("/runs/{run_pk}/curve.svg")
    def curve(request: Request, run_pk: str, node: str = "", module: str = "") -> Response:
        # Node and module in the query, not the path: an id with a '/' (events may carry one) still finds its curve.
        # The run page's rule applies: anyone logged in may see any run.
        with _sessions(request)() as db:
            user = _user(request, db)
            pk = _id(run_pk)
            valid = all(0 < len(name) <= NAME_MAX and "\x00" not in name for name in (node, module))
            curves = run_progress(db, pk, node=node, module=module) if pk is not None and valid else []
        if not curves:
            message = f"No training curve of {_shown(node)}/{_shown(module)} in run {_shown(run_pk)}."
            return _page(request, "error.html", {"message": message}, user=user, status=404)
        response = Response(render_curve_svg(curves[0]), media_type="image/svg+xml")
        _harden(response).headers["Content-Security-Policy"] = CURVE_CSP
        return response

    @router.get("/datasets")
    def datasets(
        request: Request,
        state: str | None = None,
        owner: str | None = None,
        name: str | None = None,
        before: str | None = None,
    ) -> Response:
        with _sessions(request)() as db:
            user = _user(request, db)
            if before and _id(before) is None:
                return _bad_before(request, user)
            if refused := _bad_filter(request, user, state, owner, name):
                return refused
            items = repo.list_datasets(
                db, state=state or None, owner=owner or None, name=name or None, limit=PAGE, before=_id(before)
            )
        filters = {k: v for k, v in (("state", state), ("owner", owner), ("name", name)) if v}
        more = urlencode({**filters, "before": items[-1]["id"]}) if len(items) == PAGE else None
        context = {
            "datasets": items,
            "filters": filters,
            "more": more,
            "states": [s.value for s in DatasetState],
        }
        return _page(request, "datasets.html", context, user=user)

    def dataset_page(
        request: Request, db: Session, user: Principal, dataset_id: int, *, message: str | None, error: str | None
    ) -> Response:
        detail = repo.dataset_detail(db, dataset_id)
        if detail is None:
            return _page(request, "error.html", {"message": f"No dataset {dataset_id}."}, user=user, status=404)
        context = {
            "d": detail,
            "may_manage": user.may_manage(detail["owner"]),
            "message": message,
            "error": error,
        }
        return _page(request, "dataset.html", context, user=user, status=409 if error else 200)

    def no_dataset(request: Request, user: Principal, dataset_id: str) -> Response:
        return _page(request, "error.html", {"message": f"No dataset {_shown(dataset_id)}."}, user=user, status=404)

    @router.get("/datasets/{dataset_id}")
    def dataset(request: Request, dataset_id: str, done: str | None = None) -> Response:
        with _sessions(request)() as db:
            user = _user(request, db)
            pk = _id(dataset_id)
            if pk is None:
                return no_dataset(request, user, dataset_id)
            return dataset_page(request, db, user, pk, message=ACTIONS.get(done or ""), error=None)

    @router.post("/datasets/{dataset_id}/{action}")
    async def dataset_action(request: Request, dataset_id: str, action: str) -> Response:
        form = await request.form()
        with _sessions(request)() as db:
            user = _user(request, db)
            if not _form_ok(form.get("csrf"), request.cookies.get(SESSION_COOKIE)):
                return _stale_form(request, user)
            pk = _id(dataset_id)
            if pk is None:
                return no_dataset(request, user, dataset_id)
            try:
                if action == "confirm-deletion":
                    repo.set_deletion(db, user, pk, confirm=True)
                elif action == "reject-deletion":
                    repo.set_deletion(db, user, pk, confirm=False)
                elif action in ("pin", "unpin"):
                    repo.set_pin(db, user, pk, pinned=action == "pin")
                else:
                    return _page(request, "error.html", {"message": f"No action '{action}'."}, user=user, status=404)
            except ActionError as exc:
                if exc.status == 404:
                    return _page(request, "error.html", {"message": str(exc)}, user=user, status=404)
                page = dataset_page(request, db, user, pk, message=None, error=str(exc))
                page.status_code = exc.status
                return page
        # Post/redirect/get: reloading the result page does not repeat the action.
        return _redirect(request, f"/datasets/{pk}?" + urlencode({"done": action}))

    @router.get("/models")
    def models(request: Request) -> Response:
        with _sessions(request)() as db:
            user = _user(request, db)
            items = repo.list_models(db)
        return _page(request, "models.html", {"models": items}, user=user)

    def model_page(
        request: Request,
        db: Session,
        user: Principal,
        name: str,
        *,
        message: str | None,
        error: str | None,
        status: int,
    ) -> Response:
        detail = repo.model_detail(db, name) if _MODEL_NAME.fullmatch(name) else None
        if detail is None:
            return _page(request, "error.html", {"message": f"No model '{_shown(name)}'."}, user=user, status=404)
        context = {"m": detail, "may_manage": user.may_manage(detail["owner"]), "message": message, "error": error}
        return _page(request, "model.html", context, user=user, status=status)

    @router.get("/models/{name}")
    def model(request: Request, name: str, done: str | None = None) -> Response:
        with _sessions(request)() as db:
            user = _user(request, db)
            return model_page(request, db, user, name, message=MODEL_ACTIONS.get(done or ""), error=None, status=200)

    @router.post("/models/{name}/{action}")
    async def model_action(request: Request, name: str, action: str) -> Response:
        form = await request.form()
        with _sessions(request)() as db:
            user = _user(request, db)
            if not _form_ok(form.get("csrf"), request.cookies.get(SESSION_COOKIE)):
                return _stale_form(request, user)
            if action not in MODEL_ACTIONS or not _MODEL_NAME.fullmatch(name):
                message = f"No action '{_shown(action)}'."
                return _page(request, "error.html", {"message": message}, user=user, status=404)
            version, traffic = str(form.get("version") or ""), str(form.get("traffic") or "")
            problem = None
            if version and _id(version) is None:
                problem = f"Version '{_shown(version)}' is not a version number."
            elif action == "promote" and (not _DIGITS.fullmatch(traffic) or not 0 <= int(traffic) <= 100):
                problem = f"Traffic '{_shown(traffic)}' is not a whole percent from 0 to 100."
            if problem:
                return model_page(request, db, user, name, message=None, error=problem, status=422)
            try:
                await run_in_threadpool(
                    change_routing,
                    db,
                    user,
                    name,
                    "promote" if action == "promote" else "rollback",
                    version=_id(version) if version else None,
                    traffic=int(traffic) if action == "promote" else None,
                    roots=request.app.state.storage_roots,
                    via="console",
                )
            except ActionError as exc:
                db.rollback()
                if exc.status == 404:
                    return _page(request, "error.html", {"message": str(exc)}, user=user, status=404)
                return model_page(request, db, user, name, message=None, error=str(exc), status=exc.status)
        return _redirect(request, f"/models/{name}?" + urlencode({"done": action}))

    app.include_router(router)
