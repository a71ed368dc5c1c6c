"""The REST API (FastAPI; OpenAPI at ``/api/openapi.json``, docs at ``/api/docs``) and the web console.

Every endpoint needs a bearer token (``Authorization: Bearer wf_...``): 401 without a valid
one, 403 when the role may not do it. Viewers read; owners also ingest events and manage
their own datasets; admins manage everything and read the audit log. The console's pages (:mod:`weiflow.center.console`)
share the app, the repository rules and the audit trail, with a login session instead of a token.

Reads that are one indexed page (at most ``MAX_PAGE`` rows) or one record run on the event
loop, token check included: the query costs less than handing it to a worker thread and back
(bench_center: the thread hops were half of a dataset-list request). Anything unbounded,
ingesting a batch of events, listing every job or model, changing state, runs in the thread pool.

Clients are untrusted, logged-in ones included (:class:`Limits`): a body has a size bound and
must arrive within a deadline (:class:`weiflow.center.limits.BodyLimits`), nothing holds a
database connection while a body arrives, a batch has at most ``max_events`` events, at most
``ingest_concurrency`` batches per worker are applied at once (others wait a bounded time, then
get 503), and a request that cannot get a pooled connection within ``pool_timeout_s`` gets 503
rather than queueing without end.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

from cachetools import TTLCache
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from weiflow.center import progress
from weiflow.center import repository as repo
from weiflow.center.apimodels import (
    AuditPage,
    DatasetDetail,
    DatasetPage,
    DatasetRow,
    IngestAnswer,
    Job,
    Me,
    ModelDetail,
    ModelEntry,
    PromoteRequest,
    RunDetail,
    RunPage,
    RunProgress,
)
from weiflow.center.console import add_console
from weiflow.center.db import make_engine, make_sessionmaker
from weiflow.center.eventschema import event_batch_schema
from weiflow.center.ingest import IngestResult, ingest_events, parse_events
from weiflow.center.limits import BodyLimits, Limits
from weiflow.center.models import Role, Run
from weiflow.center.repository import ActionError, Principal
from weiflow.center.routing import change_routing
from weiflow.config import load_settings
from weiflow.modelrepo.contracts import MODEL_NAME_PATTERN
from weiflow.storage import StorageRoots

__all__ = ["APP", "SERVER_OPTIONS", "app_from_settings", "create_app"]

log = logging.getLogger("weiflow.center")

_bearer = HTTPBearer(auto_error=False)

# How long a worker process trusts an API token it has checked: a token deleted or a user
# disabled in the database stops working within this time; an expired token stops at once.
# Checking on every request was a sixth of a dataset-list request's CPU (bench_center).
TOKEN_CACHE_S = 10.0


async def _session(request: Request) -> AsyncIterator[Session]:
    sessions: sessionmaker[Session] = request.app.state.sessions
    with sessions() as session:
        yield session


async def _reader(request: Request) -> AsyncIterator[Session]:
    sessions: sessionmaker[Session] = request.app.state.sessions
    with sessions() as session:
        # Reads are single statements, or statements that need no common snapshot: autocommit
        # saves PostgreSQL a BEGIN and a ROLLBACK round trip per request.
        session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        yield session


Db = Annotated[Session, Depends(_session)]
Reader = Annotated[Session, Depends(_reader)]


async def _principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    if credentials is None or len(credentials.credentials) > 200:
        raise HTTPException(401, "a valid API token is required", headers={"WWW-Authenticate": "Bearer"})
    # Keyed by the token's hash: the cache need not hold secrets.
    key = hashlib.sha256(credentials.credentials.encode()).digest()
    tokens: TTLCache[bytes, Principal] | None = request.app.state.tokens
    found = tokens.get(key) if tokens is not None else None
    if found is None or (found.expires_at is not None and found.expires_at < datetime.now(UTC)):
        # A session of its own, closed before the endpoint runs: the connection is not held while
        # the endpoint waits for a (slow) client's body.
        sessions: sessionmaker[Session] = request.app.state.sessions
        with sessions() as db:
            found = repo.authenticate_token(db, credentials.credentials, kind="api")
        if found is None:
            if tokens is not None:
                tokens.pop(key, None)
            raise HTTPException(401, "a valid API token is required", headers={"WWW-Authenticate": "Bearer"})
        if tokens is not None:
            tokens[key] = found
    return found


# Module level, not inside create_app: FastAPI resolves these (string) annotations in the module's globals.
User = Annotated[Principal, Depends(_principal)]
# Id columns are 32-bit on PostgreSQL (repo.MAX_ID): a larger number is a 422, not a driver's error (a 500).
RecordId = Annotated[int, Path(ge=1, le=repo.MAX_ID)]
Before = Annotated[int | None, Query(ge=1, le=repo.MAX_ID)]
# A list filter: no stored value is longer or holds a NUL (which PostgreSQL cannot even compare): 422.
Filter = Annotated[str | None, Query(max_length=1024, pattern=r"^[^\x00]*$")]
ModelName = Annotated[str, Path(pattern=f"^{MODEL_NAME_PATTERN}$")]


class ErrorAnswer(BaseModel):
    detail: Any = Field(description="what is wrong: a message, or (422) FastAPI's list of invalid fields")


def _answers(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorAnswer} for code in codes}


_owner_action = _answers(403, 404, 409)


def create_app(
    sessions: sessionmaker[Session],
    *,
    console: bool = True,
    token_cache_s: float = TOKEN_CACHE_S,
    limits: Limits | None = None,
    storage_roots: Sequence[str] = (),
) -> FastAPI:
    """The API (and the console, unless ``console=False``) over ``sessions``.

    A checked API token is trusted for ``token_cache_s`` seconds in this process (0: checked on
    every request). ``limits`` bound what one client may send (defaults: :class:`Limits`).
    ``storage_roots``: where the center may change a model's routing file (none: it changes none).
    """
    limits = limits or Limits()
    # fastapi-offline: the docs page loads Swagger UI from this server, never from a CDN (the
    # center often runs where nothing outside answers, and a CDN is code the center did not vet).
    app = FastAPIOffline(
        title="WeiFlow control center",
        version="1",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs" if limits.api_docs else None,
        redoc_url=None,
        static_url="/api/docs/assets",
        responses=_answers(401, 503),  # every endpoint: no valid token; the center is busy
    )
    app.state.sessions = sessions
    app.state.limits = limits
    app.state.storage_roots = StorageRoots(storage_roots, purpose="changing routing") if storage_roots else None
    # Only the event loop's thread touches it (_principal is async), so no lock.
    app.state.tokens = TTLCache(maxsize=4096, ttl=token_cache_s) if token_cache_s > 0 else None
    ingesting = asyncio.Semaphore(limits.ingest_concurrency)
    app.add_middleware(BodyLimits, max_bytes=limits.max_body_bytes, timeout_s=limits.body_timeout_s)

    @app.exception_handler(PoolTimeout)
    async def _busy(_request: Request, _exc: PoolTimeout) -> Response:
        # Every pooled connection is in use for longer than pool_timeout_s: say so, and when to retry.
        return JSONResponse(
            {"detail": "the center is busy; retry shortly"}, status_code=503, headers={"Retry-After": "2"}
        )

    @app.exception_handler(OperationalError)
    async def _database_unavailable(_request: Request, exc: OperationalError) -> Response:
        # The database dropped the connection or refuses new ones: the transaction went with the
        # connection, nothing was applied, and the client should retry rather than see a crash.
        log.warning("the database is unavailable (answered 503): %s", str(exc.orig or exc).strip().splitlines()[0])
        return JSONResponse(
            {"detail": "the center's database is unavailable; retry shortly"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    def need(user: Principal, *roles: Role) -> None:
        if user.role not in roles:
            raise HTTPException(403, f"role '{user.role}' may not do this (needs {' or '.join(roles)})")

    def act(call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except ActionError as exc:
            raise HTTPException(exc.status, str(exc)) from None

    @app.get("/api/v1/me", response_model=Me)
    async def me(user: User) -> dict[str, Any]:
        return {"username": user.username, "role": str(user.role), "groups": list(user.groups)}

    @app.post(
        "/api/v1/events",
        response_model=IngestAnswer,
        responses=_answers(400, 403, 413, 503),
        # The body is read raw (each event is validated on its own, see post_events); described here.
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": event_batch_schema(limits.max_events)}},
            }
        },
    )
    async def post_events(request: Request, user: User) -> dict[str, Any]:
        """Ingest a JSON array of events (the runtime's spool posts these); idempotent by event id.

        Each event is checked on its own (its schema, and whether this user may claim it); the
        answer counts the applied, duplicate and rejected ones and gives the first problems.
        """
        need(user, Role.ADMIN, Role.OWNER)
        body = await request.body()
        try:
            # Off the event loop: 8 MiB of JSON takes tens of milliseconds to parse.
            payload = await run_in_threadpool(json.loads, body)
        except (ValueError, RecursionError):
            raise HTTPException(400, "body must be a JSON array of events") from None
        if isinstance(payload, list) and len(payload) > limits.max_events:
            raise HTTPException(
                413, f"{len(payload)} events in one request; at most {limits.max_events}: send smaller batches"
            )

        def ingest() -> tuple[IngestResult, list[str]]:
            events, problems = parse_events(payload, limits.events)
            with sessions() as db:
                return ingest_events(db, events, user), problems

        try:
            await asyncio.wait_for(ingesting.acquire(), limits.ingest_wait_s)
        except TimeoutError:
            raise HTTPException(
                503, "busy applying other batches; retry shortly", headers={"Retry-After": "5"}
            ) from None
        try:
            result, problems = await run_in_threadpool(ingest)
        finally:
            ingesting.release()
        problems += result.problems
        return {**result.counts(), "rejected": len(problems), "problems": problems[:20]}

    @app.get("/api/v1/runs", response_model=RunPage)
    async def runs(
        db: Reader,
        user: User,
        *,
        pipeline: Filter = None,
        state: Filter = None,
        limit: Annotated[int, Query(ge=1, le=repo.MAX_PAGE)] = 50,
        before: Before = None,
    ) -> dict[str, Any]:
        items = repo.list_runs(db, pipeline=pipeline, state=state, limit=limit, before=before)
        return {"items": items, "next": items[-1]["id"] if len(items) == limit else None}

    @app.get("/api/v1/runs/{run_pk}", response_model=RunDetail, responses=_answers(404))
    async def run(run_pk: RecordId, db: Reader, user: User) -> dict[str, Any]:
        detail = repo.run_detail(db, run_pk)
        if detail is None:
            raise HTTPException(404, f"no run {run_pk}")
        return detail

    @app.get("/api/v1/runs/{run_pk}/progress", response_model=RunProgress, responses=_answers(404))
    def run_progress(run_pk: RecordId, db: Reader, user: User) -> dict[str, Any]:
        """Each module's training curve (loss and AUC by step, per worker): a separate answer, so a run's
        detail stays small; at most 500 points per worker and module."""
        # In the thread pool (a plain def): up to 5,000 stored points per module are read and thinned.
        if db.get(Run, run_pk) is None:
            raise HTTPException(404, f"no run {run_pk}")
        return {"run": run_pk, "modules": progress.run_progress(db, run_pk)}

    @app.get("/api/v1/datasets", responses={200: {"model": DatasetPage}})
    async def datasets(
        db: Reader,
        user: User,
        *,
        state: Filter = None,
        owner: Filter = None,
        name: Filter = None,
        pipeline: Filter = None,
        limit: Annotated[int, Query(ge=1, le=repo.MAX_PAGE)] = 50,
        before: Before = None,
    ) -> Response:
        page = repo.dataset_page_json(
            db, state=state, owner=owner, name=name, pipeline=pipeline, limit=limit, before=before
        )
        return Response(page, media_type="application/json")

    @app.get("/api/v1/datasets/{dataset_id}", response_model=DatasetDetail, responses=_answers(404))
    async def dataset(dataset_id: RecordId, db: Reader, user: User) -> dict[str, Any]:
        detail = repo.dataset_detail(db, dataset_id)
        if detail is None:
            raise HTTPException(404, f"no dataset {dataset_id}")
        return detail

    @app.post("/api/v1/datasets/{dataset_id}/confirm-deletion", response_model=DatasetRow, responses=_owner_action)
    def confirm(dataset_id: RecordId, db: Db, user: User) -> dict[str, Any]:
        need(user, Role.ADMIN, Role.OWNER)
        return dict(act(repo.set_deletion, db, user, dataset_id, confirm=True))

    @app.post("/api/v1/datasets/{dataset_id}/reject-deletion", response_model=DatasetRow, responses=_owner_action)
    def reject(dataset_id: RecordId, db: Db, user: User) -> dict[str, Any]:
        need(user, Role.ADMIN, Role.OWNER)
        return dict(act(repo.set_deletion, db, user, dataset_id, confirm=False))

    @app.post("/api/v1/datasets/{dataset_id}/pin", response_model=DatasetRow, responses=_owner_action)
    def pin(dataset_id: RecordId, db: Db, user: User) -> dict[str, Any]:
        need(user, Role.ADMIN, Role.OWNER)
        return dict(act(repo.set_pin, db, user, dataset_id, pinned=True))

    @app.post("/api/v1/datasets/{dataset_id}/unpin", response_model=DatasetRow, responses=_owner_action)
    def unpin(dataset_id: RecordId, db: Db, user: User) -> dict[str, Any]:
        need(user, Role.ADMIN, Role.OWNER)
        return dict(act(repo.set_pin, db, user, dataset_id, pinned=False))

    @app.get("/api/v1/jobs", response_model=list[Job])
    def jobs(db: Reader, user: User) -> list[dict[str, Any]]:
        return repo.list_jobs(db)

    @app.get("/api/v1/models", response_model=list[ModelEntry])
    def models(db: Reader, user: User) -> list[dict[str, Any]]:
        return repo.list_models(db)

    @app.get("/api/v1/models/{name}", response_model=ModelDetail, responses=_answers(404))
    def model(name: ModelName, db: Reader, user: User) -> dict[str, Any]:
        detail = repo.model_detail(db, name)
        if detail is None:
            raise HTTPException(404, f"no model '{name}'")
        return detail

    @app.post("/api/v1/models/{name}/promote", response_model=ModelDetail, responses=_answers(400, 403, 404, 409))
    def promote(name: ModelName, body: PromoteRequest, db: Db, user: User) -> dict[str, Any]:
        """Give a version (default: the newest) ``traffic`` percent; the rest stays on the stable version."""
        need(user, Role.ADMIN, Role.OWNER)
        act(
            change_routing,
            db,
            user,
            name,
            "promote",
            version=body.version,
            traffic=body.traffic,
            roots=app.state.storage_roots,
            via="api",
        )
        return repo.model_detail(db, name) or {}

    @app.post("/api/v1/models/{name}/rollback", response_model=ModelDetail, responses=_answers(403, 404, 409))
    def rollback(name: ModelName, db: Db, user: User) -> dict[str, Any]:
        """All traffic back to the previous fully live version."""
        need(user, Role.ADMIN, Role.OWNER)
        act(change_routing, db, user, name, "rollback", roots=app.state.storage_roots, via="api")
        return repo.model_detail(db, name) or {}

    @app.get("/api/v1/audit", response_model=AuditPage, responses=_answers(403))
    async def audit(
        db: Reader, user: User, limit: Annotated[int, Query(ge=1, le=repo.MAX_PAGE)] = 100, before: Before = None
    ) -> dict[str, Any]:
        need(user, Role.ADMIN)
        items = repo.audit_entries(db, limit=limit, before=before)
        return {"items": items, "next": items[-1]["id"] if len(items) == limit else None}

    if console:
        add_console(app)
    return app


APP = "weiflow.center.api:app_from_settings"  # what each `weiflow center serve` worker builds
SERVER_OPTIONS: dict[str, Any] = {
    "log_level": "info",
    # Per worker: connections and tasks beyond this get 503 at once instead of queueing without end.
    "limit_concurrency": 1000,
    "timeout_keep_alive": 5,
    # uvicorn would believe X-Forwarded-For from any local process: the login throttle counts per
    # client address, and a local client must not pick its own. Behind a proxy, see docs/center.md.
    "proxy_headers": False,
}


def app_from_settings() -> FastAPI:
    """The center over the database that weiflow.toml or WEIFLOW_DATABASE_URL names, with the
    limits ``WEIFLOW_CENTER_*`` variables set (what ``weiflow center serve`` passes its workers).

    What each ``weiflow center serve`` worker process and the Airflow plugin build.
    """
    limits = Limits.from_env()
    settings = load_settings()
    engine = make_engine(settings.database_url, **limits.pool_options())
    return create_app(make_sessionmaker(engine), limits=limits, storage_roots=settings.storage_roots)
