"""Reads and owner actions on the center's database: what the API, the console and the CLI share.

Lists use keyset pagination (``before`` = the last id seen) so page 1000 costs what page 1
costs; rows are plain dicts, ready for JSON. Every change goes with an audit entry in the
same transaction.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import (
    Dialect,
    String,
    Text,
    case,
    cast,
    delete,
    func,
    literal,
    literal_column,
    select,
    type_coerce,
    update,
)
from sqlalchemy.orm import Session

from weiflow.center.db import changed, dialect_insert
from weiflow.center.models import (
    ApiToken,
    AuditEntry,
    Dataset,
    DatasetRead,
    DatasetState,
    LoginFailure,
    Metric,
    Model,
    ModelChange,
    ModelVersion,
    ModuleRun,
    NodeRun,
    Pipeline,
    PipelineVersion,
    Role,
    Run,
    User,
)

__all__ = [
    "LOGIN_FIRST_DELAY",
    "LOGIN_FREE_FAILURES",
    "LOGIN_MAX_DELAY",
    "LOGIN_WINDOW",
    "MAX_ID",
    "MAX_PAGE",
    "PASSWORD_HASHER",
    "ActionError",
    "Principal",
    "audit_entries",
    "authenticate_password",
    "authenticate_token",
    "clear_login_failures",
    "create_token",
    "create_user",
    "dataset_detail",
    "dataset_page_json",
    "hash_password",
    "list_datasets",
    "list_jobs",
    "list_models",
    "list_runs",
    "login_blocked",
    "model_detail",
    "record_login_failure",
    "revoke_token",
    "run_detail",
    "set_deletion",
    "set_pin",
    "verify_password",
]

MAX_PAGE = 500
# The largest id (or ``before``) a route accepts: the id columns are INTEGER, 32-bit in PostgreSQL, which
# answers a larger value with an out-of-range error (SQLite's driver fails past 2**63 - 1). Either is a 500
# if let through; no row can have a larger id, so a route refuses one with a 4xx instead.
MAX_ID = 2**31 - 1


class ActionError(Exception):
    """An owner action that cannot be done; ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Principal:
    username: str
    role: Role
    groups: tuple[str, ...] = ()
    # When the token that authenticated this principal expires (None: never, or not by token).
    expires_at: datetime | None = field(default=None, compare=False)

    def may_manage(self, owner: str | None) -> bool:
        """Admins manage everything; an owner manages datasets of pipelines owned by them or their groups."""
        if self.role is Role.ADMIN:
            return True
        return self.role is Role.OWNER and owner is not None and owner in (self.username, *self.groups)


# ---- users, passwords, tokens ---------------------------------------------------------------------------------


# Argon2id with OWASP's first recommended setting (19 MiB, 2 passes, 1 lane; 40-50 ms of CPU here, the GIL released).
# Earlier centers stored scrypt (n=2**14, now under OWASP's floor): such a hash still logs its user in, and is
# replaced by an Argon2id one at that login, as is an Argon2id hash made with older settings than these.
PASSWORD_HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
_LEGACY_SCRYPT = "scrypt$"


def hash_password(password: str) -> str:
    return PASSWORD_HASHER.hash(password)


@functools.cache
def _unknown_user_hash() -> str:
    """What a login for no one is verified against: the same work as a real login, so timing tells no names."""
    return hash_password(secrets.token_urlsafe(16))


def verify_password(password: str, stored: str) -> tuple[bool, str | None]:
    """Whether ``password`` is the one ``stored`` was made from, and, if so and ``stored`` is outdated, its new hash."""
    if stored.startswith(_LEGACY_SCRYPT):
        if not _check_scrypt(password, stored):
            return False, None
        return True, hash_password(password)
    try:
        PASSWORD_HASHER.verify(stored, password)
    except (VerificationError, InvalidHashError):  # wrong password; a damaged or foreign hash
        return False, None
    return True, hash_password(password) if PASSWORD_HASHER.check_needs_rehash(stored) else None


def _check_scrypt(password: str, stored: str) -> bool:
    try:
        _scheme, salt, digest = stored.split("$")
        expected = bytes.fromhex(digest)
        computed = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=2**14, r=8, p=1, dklen=32)
    except ValueError:
        return False
    return hmac.compare_digest(computed, expected)


def _token_hash(token: str) -> str:
    return _sha256(token)


def create_user(
    session: Session, username: str, role: Role, *, password: str | None = None, groups: list[str] | None = None
) -> User:
    user = User(
        username=username,
        role=role,
        password_hash=hash_password(password) if password else None,
        groups=list(groups or []),
    )
    session.add(user)
    session.flush()
    session.add(
        AuditEntry(
            actor="system", action="user.create", target_type="user", target_id=username, detail={"role": str(role)}
        )
    )
    session.commit()
    return user


def create_token(
    session: Session, username: str, *, name: str = "api", kind: str = "api", ttl: timedelta | None = None
) -> str:
    """A new secret for ``username``; only its hash is stored, so this is the one time it is seen."""
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise ActionError(404, f"no user '{username}'")
    token = "wf_" + secrets.token_urlsafe(32)
    expires = datetime.now(UTC) + ttl if ttl else None
    session.add(ApiToken(user_id=user.id, token_hash=_token_hash(token), name=name, kind=kind, expires_at=expires))
    if kind == "api":
        session.add(AuditEntry(actor=username, action="token.create", target_type="user", target_id=username))
    session.commit()
    return token


def _principal(user: User) -> Principal:
    return Principal(user.username, Role(user.role), tuple(user.groups or ()))


def authenticate_token(session: Session, token: str, *, kind: str | None = None) -> Principal | None:
    query = select(User, ApiToken).join(ApiToken, ApiToken.user_id == User.id)
    row = session.execute(query.where(ApiToken.token_hash == _token_hash(token))).first()
    if row is None:
        return None
    user, record = row
    if user.disabled or (kind is not None and record.kind != kind):
        return None
    if record.expires_at is not None and record.expires_at < datetime.now(UTC):
        return None
    return replace(_principal(user), expires_at=record.expires_at)


def revoke_token(session: Session, token: str, *, kind: str | None = None) -> None:
    """Delete the token (only if it is of ``kind``, when given): a console session ends at once."""
    query = delete(ApiToken).where(ApiToken.token_hash == _token_hash(token))
    session.execute(query.where(ApiToken.kind == kind) if kind is not None else query)
    session.commit()


def authenticate_password(session: Session, username: str, password: str) -> Principal | None:
    """The user, if ``password`` is theirs. Commits ``session`` first: no connection is held while hashing."""
    # A name no user can have (the column holds 200 characters; PostgreSQL refuses NUL) is not looked up.
    plausible = len(username) <= 200 and "\x00" not in username
    user = session.scalar(select(User).where(User.username == username)) if plausible else None
    stored = user.password_hash if user is not None and not user.disabled else None
    principal = _principal(user) if user is not None and stored else None
    session.commit()
    if principal is None or stored is None:
        verify_password(password, _unknown_user_hash())
        return None
    matches, rehashed = verify_password(password, stored)
    if not matches:
        return None
    if rehashed is not None:  # unless the password changed meanwhile
        session.execute(
            update(User).where(User.username == username, User.password_hash == stored).values(password_hash=rehashed)
        )
        session.commit()
    return principal


# ---- login throttle -------------------------------------------------------------------------------------------
# After LOGIN_FREE_FAILURES failed logins, each further failure blocks its key for LOGIN_FIRST_DELAY, doubling
# with every failure up to LOGIN_MAX_DELAY; a key with no failure for LOGIN_WINDOW starts again from nothing.
# Keys are the account (a guesser spread over many addresses) and the client address (one address trying many
# accounts). With these numbers an account takes 18 guesses in the first hour, then 4 an hour. The price: a guesser
# can keep an account's owner out for as long as the guessing lasts, at most LOGIN_MAX_DELAY after it stops.
# Read at call time, so a test (or a deployment's start-up code) can change them.
LOGIN_FREE_FAILURES = 5
LOGIN_FIRST_DELAY = timedelta(seconds=1)
LOGIN_MAX_DELAY = timedelta(minutes=15)
LOGIN_WINDOW = timedelta(hours=1)


def _login_keys(username: str, address: str) -> list[str]:
    # An address is kept as it is unless long or odd (the column is 300 characters; PostgreSQL refuses NUL). A user
    # name always by its hash: what a failed login typed there is often a password meant for the next field.
    keys = [
        f"addr:{address}" if len(address) <= 200 and address.isprintable() else f"addr#sha256:{_sha256(address)}",
        f"user#sha256:{_sha256(username)}",
    ]
    return keys  # always in this order: two transactions never lock the same two rows in opposite orders


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode(errors="surrogatepass")).hexdigest()


def login_blocked(session: Session, username: str, address: str, *, now: datetime | None = None) -> timedelta | None:
    """How long logins as ``username`` or from ``address`` are still refused; None when they are not."""
    now = now or datetime.now(UTC)
    until = session.scalar(
        select(func.max(LoginFailure.blocked_until)).where(
            LoginFailure.key.in_(_login_keys(username, address)), LoginFailure.blocked_until > now
        )
    )
    return until - now if until is not None else None


def record_login_failure(session: Session, username: str, address: str, *, now: datetime | None = None) -> None:
    """Count a failed login against the account and the address, blocking either that is past its free failures.

    Each count is one ``INSERT ... ON CONFLICT DO UPDATE``, atomic in SQLite and PostgreSQL alike: failures
    counted at once by several worker processes all count, and the row stays locked until the commit, so the
    block that follows is computed from this very count.
    """
    now = now or datetime.now(UTC)
    insert = dialect_insert(session)
    for key in _login_keys(username, address):
        counted = (
            insert(LoginFailure)
            .values(key=key, failures=1, last_failure=now, blocked_until=None)
            .on_conflict_do_update(
                index_elements=[LoginFailure.key],
                set_={
                    "failures": case(
                        (LoginFailure.last_failure < now - LOGIN_WINDOW, 1), else_=LoginFailure.failures + 1
                    ),
                    "last_failure": now,
                },
            )
            .returning(LoginFailure.failures)
        )
        failures = session.execute(counted).scalar_one()
        if failures > LOGIN_FREE_FAILURES:
            doublings = min(failures - LOGIN_FREE_FAILURES - 1, 40)  # 2**40 s is ages; more would overflow
            delay = min(LOGIN_FIRST_DELAY * 2**doublings, LOGIN_MAX_DELAY)
            session.execute(
                update(LoginFailure)
                .where(LoginFailure.key == key, LoginFailure.failures == failures)
                .values(blocked_until=now + delay)
                .execution_options(synchronize_session=False)
            )
    session.commit()


def clear_login_failures(session: Session, username: str, *, now: datetime | None = None) -> None:
    """After a successful login: forget the account's failures, and every key quiet for LOGIN_WINDOW.

    The address keeps its count: otherwise a guesser with an account of their own could log in with it
    between guesses at others and never be slowed down.
    """
    now = now or datetime.now(UTC)
    key = _login_keys(username, "")[1]
    stale = (LoginFailure.last_failure < now - LOGIN_WINDOW) & (
        LoginFailure.blocked_until.is_(None) | (LoginFailure.blocked_until <= now)
    )
    session.execute(delete(LoginFailure).where((LoginFailure.key == key) | stale))
    session.commit()


# ---- reads ----------------------------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    # Always six fractional digits: the same text the database renders in list_datasets_json.
    return value.isoformat(timespec="microseconds") if value is not None else None


def _page(query: Any, id_column: Any, limit: int, before: int | None) -> Any:
    if before is not None:
        query = query.where(id_column < before)
    return query.order_by(id_column.desc()).limit(max(1, min(limit, MAX_PAGE)))


def list_runs(
    session: Session,
    *,
    pipeline: str | None = None,
    state: str | None = None,
    limit: int = 50,
    before: int | None = None,
) -> list[dict[str, Any]]:
    query = select(
        Run.id, Run.run_id, Pipeline.name, Run.state, Run.priority, Run.started_at, Run.ended_at, Run.duration_s
    ).join(Pipeline, Pipeline.id == Run.pipeline_id)
    if pipeline:
        query = query.where(Pipeline.name == pipeline)
    if state:
        query = query.where(Run.state == state)
    return [
        {
            "id": r.id,
            "run_id": r.run_id,
            "pipeline": r.name,
            "state": r.state,
            "priority": r.priority,
            "started_at": _iso(r.started_at),
            "ended_at": _iso(r.ended_at),
            "duration_s": r.duration_s,
        }
        for r in session.execute(_page(query, Run.id, limit, before))
    ]


def _names(value: Any) -> list[str]:
    """A node's upstream nodes as stored: a list (rows from before events were validated may hold anything)."""
    return [str(item) for item in value] if isinstance(value, list) else []


def run_detail(session: Session, run_pk: int) -> dict[str, Any] | None:
    """A run with its two-level DAG: outer nodes (state, scheduling classes) each with their modules."""
    row = session.execute(
        select(Run, Pipeline.name, PipelineVersion.sha256)
        .join(Pipeline, Pipeline.id == Run.pipeline_id)
        .outerjoin(PipelineVersion, PipelineVersion.id == Run.version_id)
        .where(Run.id == run_pk)
    ).first()
    if row is None:
        return None
    run, pipeline, sha = row
    nodes = session.scalars(select(NodeRun).where(NodeRun.run_pk == run.id).order_by(NodeRun.id)).all()
    modules: dict[int, list[ModuleRun]] = {}
    for module in session.scalars(
        select(ModuleRun).where(ModuleRun.node_run_id.in_([n.id for n in nodes])).order_by(ModuleRun.id)
    ):
        modules.setdefault(module.node_run_id, []).append(module)
    by_id = {n.node: n for n in nodes}
    outer = []
    for node_id in [*run.upstream, *(n for n in by_id if n not in run.upstream)]:
        node = by_id.get(node_id)
        inputs = node.plan.get("module_inputs", {}) if node else {}
        outer.append(
            {
                "id": node_id,
                "state": node.state if node else "queued",
                "upstream": _names(run.upstream.get(node_id) or (node.plan.get("upstream") if node else None)),
                "engine": node.engine if node else None,
                "attempt": node.attempt if node else None,
                "priority": (node.priority if node else None) or run.priority,
                "resources": node.resources if node else None,
                "backend": node.backend if node else None,
                "started_at": _iso(node.started_at) if node else None,
                "ended_at": _iso(node.ended_at) if node else None,
                "duration_s": node.duration_s if node else None,
                "error": node.error if node else None,
                "modules": [
                    {
                        "id": m.module,
                        "type": m.type,
                        "state": m.state,
                        "inputs": inputs.get(m.module, []),
                        "attempt": m.attempt,
                        "started_at": _iso(m.started_at),
                        "ended_at": _iso(m.ended_at),
                        "duration_s": m.duration_s,
                        "error": m.error,
                        "log_uri": m.log_uri,
                    }
                    for m in (modules.get(node.id, []) if node else [])
                ],
            }
        )
    metrics = [
        {"node": m.node, "module": m.module, "name": m.name, "value": m.value}
        for m in session.scalars(select(Metric).where(Metric.run_pk == run.id).order_by(Metric.id))
    ]
    written = [
        {"id": d.id, "name": d.name, "uri": d.uri, "state": d.state, "node": d.producer_node}
        for d in session.scalars(select(Dataset).where(Dataset.producer_run_pk == run.id).order_by(Dataset.id))
    ]
    return {
        "id": run.id,
        "run_id": run.run_id,
        "pipeline": pipeline,
        "spec_sha256": sha,
        "state": run.state,
        "priority": run.priority,
        "params": run.params,
        "started_at": _iso(run.started_at),
        "ended_at": _iso(run.ended_at),
        "duration_s": run.duration_s,
        "error": run.error,
        "nodes": outer,
        "datasets_written": written,
        "metrics": metrics,
    }


def _dataset_row(d: Any) -> dict[str, Any]:
    return {
        "id": d.id,
        "name": d.name,
        "uri": d.uri,
        "owner": d.owner,
        "format": d.format,
        "size_bytes": d.size_bytes,
        "rows": d.rows,
        "retention": d.retention,
        "state": d.state,
        "pinned": d.pinned,
        "reason": d.reason,
        "delete_after": _iso(d.delete_after),
        "last_access": _iso(d.last_access),
        "created_at": _iso(d.created_at),
    }


_DATASET_COLUMNS = (
    Dataset.id,
    Dataset.name,
    Dataset.uri,
    Dataset.owner,
    Dataset.format,
    Dataset.size_bytes,
    Dataset.rows,
    Dataset.retention,
    Dataset.state,
    Dataset.pinned,
    Dataset.reason,
    Dataset.delete_after,
    Dataset.last_access,
    Dataset.created_at,
)


def list_datasets(
    session: Session,
    *,
    state: str | None = None,
    owner: str | None = None,
    name: str | None = None,
    pipeline: str | None = None,
    limit: int = 50,
    before: int | None = None,
) -> list[dict[str, Any]]:
    query = _filtered_datasets(select(*_DATASET_COLUMNS), state=state, owner=owner, name=name, pipeline=pipeline)
    return [_dataset_row(d) for d in session.execute(_page(query, Dataset.id, limit, before))]


def _filtered_datasets(
    query: Any, *, state: str | None, owner: str | None, name: str | None, pipeline: str | None
) -> Any:
    """``query`` over datasets narrowed by the list filters the API and the console offer."""
    if state:
        query = query.where(Dataset.state == state)
    if owner:
        query = query.where(Dataset.owner == owner)
    if name:
        query = query.where(Dataset.name == name)
    if pipeline:
        query = query.where(
            Dataset.pipeline_id == select(Pipeline.id).where(Pipeline.name == pipeline).scalar_subquery()
        )
    return query


def dataset_page_json(
    session: Session,
    *,
    state: str | None = None,
    owner: str | None = None,
    name: str | None = None,
    pipeline: str | None = None,
    limit: int = 50,
    before: int | None = None,
) -> str:
    """``{"items": [...], "next": id | null}``: :func:`list_datasets`'s rows, each rendered as JSON by the database.

    The API's hot path: building 50 dicts through the ORM and serializing them was two thirds
    of a dataset-list request (bench_center); the database writes each row's JSON object
    in a fraction of that. tests/center/test_api.py checks both give the same page.
    """
    columns = select(Dataset.id, _dataset_json(session.get_bind().dialect).label("doc"))
    query = _filtered_datasets(columns, state=state, owner=owner, name=name, pipeline=pipeline)
    # Through the connection, not the ORM session: no ORM result processing for plain columns.
    rows = session.connection().execute(_page(query, Dataset.id, limit, before)).all()
    following = rows[-1].id if len(rows) == limit else None
    return '{"items":[' + ",".join(row.doc for row in rows) + '],"next":' + json.dumps(following) + "}"


_DATASET_JSON: dict[str, Any] = {}


def _dataset_json(dialect: Dialect) -> Any:
    """One dataset row as a JSON object, keys and values exactly as :func:`_dataset_row` makes them.

    Compiled once per dialect into a literal column: built and cache-keyed on every request,
    the expression cost more than the query.
    """
    if dialect.name not in _DATASET_JSON:
        expression = _dataset_json_expression(dialect.name)
        sql = expression.compile(dialect=dialect, compile_kwargs={"literal_binds": True})
        _DATASET_JSON[dialect.name] = literal_column(str(sql), Text)
    return _DATASET_JSON[dialect.name]


def _dataset_json_expression(dialect: str) -> Any:
    if dialect == "postgresql":
        build: Any = func.json_build_object

        def iso(column: Any) -> Any:
            return func.to_char(column, 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')

        pinned: Any = Dataset.pinned
    elif dialect == "sqlite":
        build = func.json_object

        def iso(column: Any) -> Any:
            # SQLAlchemy keeps SQLite datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC here).
            return func.replace(type_coerce(column, String), " ", "T").concat("+00:00")

        pinned = func.json(case((Dataset.pinned, "true"), else_="false"))
    else:  # the center runs on SQLite and PostgreSQL only (weiflow.center.db)
        raise NotImplementedError(f"no JSON rendering for the {dialect} dialect")
    fields: dict[str, Any] = {
        "id": Dataset.id,
        "name": Dataset.name,
        "uri": Dataset.uri,
        "owner": Dataset.owner,
        "format": Dataset.format,
        "size_bytes": Dataset.size_bytes,
        "rows": Dataset.rows,
        "retention": Dataset.retention,
        "state": Dataset.state,
        "pinned": pinned,
        "reason": Dataset.reason,
        "delete_after": iso(Dataset.delete_after),
        "last_access": iso(Dataset.last_access),
        "created_at": iso(Dataset.created_at),
    }
    # As text: PostgreSQL's driver would parse a json value back into Python objects.
    return cast(build(*(part for key, value in fields.items() for part in (literal(key), value))), Text)


def dataset_detail(session: Session, dataset_id: int) -> dict[str, Any] | None:
    """A dataset with its lineage: the run and node that wrote it, who read it, what it came from, what came of it."""
    d = session.get(Dataset, dataset_id)
    if d is None:
        return None
    data = _dataset_row(d)
    producer = None
    upstream: list[dict[str, Any]] = []
    if d.producer_run_pk is not None:
        run = session.execute(
            select(Run.id, Run.run_id, Run.state, Pipeline.name)
            .join(Pipeline, Pipeline.id == Run.pipeline_id)
            .where(Run.id == d.producer_run_pk)
        ).first()
        if run is not None:
            producer = {"run": run.id, "run_id": run.run_id, "pipeline": run.name, "node": d.producer_node}
        # Made from: what the producing node read in that run.
        upstream = [
            {"id": u.id, "name": u.name, "uri": u.uri, "state": u.state}
            for u in session.execute(
                select(Dataset.id, Dataset.name, Dataset.uri, Dataset.state)
                .join(DatasetRead, DatasetRead.dataset_id == Dataset.id)
                .where(DatasetRead.run_pk == d.producer_run_pk, DatasetRead.node == d.producer_node)
            )
        ]
    reads = session.execute(
        select(DatasetRead.run_pk, DatasetRead.node, DatasetRead.ts, Run.run_id, Pipeline.name)
        .join(Run, Run.id == DatasetRead.run_pk)
        .join(Pipeline, Pipeline.id == Run.pipeline_id)
        .where(DatasetRead.dataset_id == d.id)
        .order_by(DatasetRead.ts.desc())
        .limit(200)
    ).all()
    consumers = [
        {"run": r.run_pk, "run_id": r.run_id, "pipeline": r.name, "node": r.node, "ts": _iso(r.ts)} for r in reads
    ]
    downstream = [
        {"id": x.id, "name": x.name, "uri": x.uri, "state": x.state}
        for x in session.execute(
            select(Dataset.id, Dataset.name, Dataset.uri, Dataset.state)
            .join(DatasetRead, DatasetRead.run_pk == Dataset.producer_run_pk)
            .where(DatasetRead.dataset_id == d.id, DatasetRead.node == Dataset.producer_node, Dataset.id != d.id)
            .distinct()
        )
    ]
    audit = [
        {"ts": _iso(a.ts), "actor": a.actor, "action": a.action, "detail": a.detail}
        for a in session.scalars(
            select(AuditEntry)
            .where(AuditEntry.target_type == "dataset", AuditEntry.target_id == str(d.id))
            .order_by(AuditEntry.id.desc())
            .limit(50)
        )
    ]
    data.update(
        files=d.files,
        schema=d.schema,
        external=d.external,
        marked_at=_iso(d.marked_at),
        deleted_at=_iso(d.deleted_at),
        confirmed_by=d.confirmed_by,
        producer=producer,
        consumers=consumers,
        lineage={"upstream": upstream, "downstream": downstream},
        audit=audit,
    )
    return data


def list_jobs(session: Session) -> list[dict[str, Any]]:
    """Pipelines with their spec versions, run count and latest run."""
    counts = dict(session.execute(select(Run.pipeline_id, func.count()).group_by(Run.pipeline_id)).all())
    latest = {
        row.pipeline_id: row
        for row in session.execute(
            select(Run.pipeline_id, Run.id, Run.run_id, Run.state).where(
                Run.id.in_(select(func.max(Run.id)).group_by(Run.pipeline_id))
            )
        )
    }
    versions: dict[int, list[str]] = {}
    for pipeline_id, sha in session.execute(
        select(PipelineVersion.pipeline_id, PipelineVersion.sha256).order_by(PipelineVersion.id)
    ):
        versions.setdefault(pipeline_id, []).append(sha)
    jobs = []
    for p in session.scalars(select(Pipeline).order_by(Pipeline.name)):
        last = latest.get(p.id)
        jobs.append(
            {
                "name": p.name,
                "owner": p.owner,
                "priority": p.priority,
                "runs": counts.get(p.id, 0),
                "versions": versions.get(p.id, []),
                "last_run": {"id": last.id, "run_id": last.run_id, "state": last.state} if last else None,
            }
        )
    return jobs


def _version_number(row: dict[str, Any]) -> tuple[int, str]:
    # ASCII digits only: str.isdigit() takes '²', which int() refuses (one event's version broke every page).
    text = row["version"]
    return (int(text), "") if re.fullmatch(r"[0-9]{1,18}", text) else (2**63, text)


def list_models(session: Session, *, name: str | None = None) -> list[dict[str, Any]]:
    """Every model (or the one called ``name``): its owner, repository, mirrored routing and versions.

    Versions come in version order, each with its share, labels, metrics and publisher; a version
    removed from the repository stays listed, with ``removed_at``.
    """
    query = select(Model, Pipeline.name, Pipeline.owner).outerjoin(Pipeline, Pipeline.id == Model.pipeline_id)
    if name is not None:
        query = query.where(Model.name == name)
    models: dict[int, dict[str, Any]] = {
        model.id: {
            "name": model.name,
            "pipeline": pipeline,
            "owner": owner,
            "repository": model.repository,
            "generation": model.generation,
            "labels": dict(model.labels or {}),
            "traffic": {},
            "mirrored_at": _iso(model.mirrored_at),
            "mirror_error": model.mirror_error,
            "versions": [],
        }
        for model, pipeline, owner in session.execute(query.order_by(Model.name))
    }
    if not models:
        return []
    versions = session.scalars(select(ModelVersion).where(ModelVersion.model_id.in_(models)).order_by(ModelVersion.id))
    for v in versions:
        entry = models[v.model_id]
        labels = sorted(label for label, number in entry["labels"].items() if str(number) == v.version)
        entry["versions"].append(
            {
                "version": v.version,
                "uri": v.uri,
                "dataset": v.dataset_id,
                "deployed": v.deployed,
                "traffic": v.traffic,
                "labels": labels,
                "metrics": dict(v.metrics or {}),
                "publisher": v.publisher,
                "created_at": _iso(v.created_at),
                "removed_at": _iso(v.removed_at),
            }
        )
        if v.deployed and v.traffic:
            entry["traffic"][v.version] = v.traffic
    for entry in models.values():
        entry["versions"].sort(key=_version_number)
    return list(models.values())


def model_detail(session: Session, name: str, *, history: int = 200) -> dict[str, Any] | None:
    """One model as :func:`list_models` gives it, with the metric names its versions share and its
    last ``history`` routing changes, newest first."""
    found = list_models(session, name=name)
    if not found:
        return None
    model = found[0]
    names: dict[str, None] = {}
    for version in model["versions"]:
        names.update(dict.fromkeys(sorted(version["metrics"])))
    model["metric_names"] = list(names)
    model_id = session.scalar(select(Model.id).where(Model.name == name))
    changes = session.scalars(
        select(ModelChange)
        .where(ModelChange.model_id == model_id)
        .order_by(ModelChange.generation.desc())
        .limit(history)
    )
    model["history"] = [
        {
            "generation": c.generation,
            "action": c.action,
            "version": c.version,
            "traffic": c.traffic,
            "who": c.who,
            "at": _iso(c.at),
            "before": c.before,
            "after": c.after,
            "via": c.via,
        }
        for c in changes
    ]
    return model


# ---- owner actions --------------------------------------------------------------------------------------------


def _dataset_for(session: Session, principal: Principal, dataset_id: int) -> Dataset:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise ActionError(404, f"no dataset {dataset_id}")
    if not principal.may_manage(dataset.owner):
        raise ActionError(
            403, f"only an admin or the owner ('{dataset.owner or 'nobody'}') may change dataset {dataset_id}"
        )
    return dataset


def _log(session: Session, principal: Principal, action: str, dataset: Dataset, **detail: Any) -> None:
    session.add(
        AuditEntry(
            actor=principal.username,
            action=action,
            target_type="dataset",
            target_id=str(dataset.id),
            detail={"uri": dataset.uri, **detail},
        )
    )


def set_pin(session: Session, principal: Principal, dataset_id: int, *, pinned: bool) -> dict[str, Any]:
    dataset = _dataset_for(session, principal, dataset_id)
    if pinned:
        # Conditional: a sweep that claimed it first ('deleting') wins, and the caller is told so.
        done = session.execute(
            update(Dataset)
            .where(Dataset.id == dataset_id, Dataset.state.in_((DatasetState.LIVE, DatasetState.PENDING_DELETION)))
            .values(pinned=True, state=DatasetState.LIVE, reason=f"pinned by {principal.username}", marked_at=None)
            .execution_options(synchronize_session=False)
        )
        if not changed(done):
            session.rollback()
            raise ActionError(409, f"dataset {dataset_id} is {dataset.state}: too late to pin it")
    else:
        if dataset.retention == "pinned":
            raise ActionError(409, f'dataset {dataset_id} is pinned by its spec (retention="pinned"); change the spec')
        session.execute(
            update(Dataset)
            .where(Dataset.id == dataset_id)
            .values(pinned=False, reason=None)
            .execution_options(synchronize_session=False)
        )
    _log(session, principal, "dataset.pin" if pinned else "dataset.unpin", dataset)
    session.commit()
    session.refresh(dataset)
    return _dataset_row(dataset)


def set_deletion(
    session: Session, principal: Principal, dataset_id: int, *, confirm: bool, hold: timedelta = timedelta(days=30)
) -> dict[str, Any]:
    """Confirm (the next sweep deletes it) or reject (live again, not marked for ``hold``) a pending deletion."""
    dataset = _dataset_for(session, principal, dataset_id)
    pending = (Dataset.id == dataset_id) & (Dataset.state == DatasetState.PENDING_DELETION)
    if confirm:
        values: dict[str, Any] = {"confirmed_by": principal.username}
    else:
        values = {
            "state": DatasetState.LIVE,
            "reason": f"deletion rejected by {principal.username}",
            "marked_at": None,
            "delete_after": None,
            "confirmed_by": None,
            "held_until": datetime.now(UTC) + hold,
        }
    done = session.execute(update(Dataset).where(pending).values(**values).execution_options(synchronize_session=False))
    if not changed(done):
        session.rollback()
        raise ActionError(409, f"dataset {dataset_id} is {dataset.state}, not pending deletion")
    _log(session, principal, "deletion.confirm" if confirm else "deletion.reject", dataset)
    session.commit()
    session.refresh(dataset)
    return _dataset_row(dataset)


def audit_entries(session: Session, *, limit: int = 100, before: int | None = None) -> list[dict[str, Any]]:
    query = select(
        AuditEntry.id,
        AuditEntry.ts,
        AuditEntry.actor,
        AuditEntry.action,
        AuditEntry.target_type,
        AuditEntry.target_id,
        AuditEntry.detail,
    )
    return [
        {
            "id": a.id,
            "ts": _iso(a.ts),
            "actor": a.actor,
            "action": a.action,
            "target_type": a.target_type,
            "target_id": a.target_id,
            "detail": a.detail,
        }
        for a in session.execute(_page(query, AuditEntry.id, limit, before))
    ]
