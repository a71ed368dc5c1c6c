"""The control center's tables (SQLAlchemy 2 declarative models).

Every timestamp is stored as naive UTC and read back as aware UTC (:class:`UtcDateTime`), so
SQLite, which keeps no zone, and PostgreSQL give the same values. Schema changes go through
Alembic (``weiflow/center/migrations``); a test checks the migrations and these models agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "ApiToken",
    "AuditEntry",
    "Base",
    "Dataset",
    "DatasetRead",
    "DatasetState",
    "IngestedEvent",
    "LoginFailure",
    "Metric",
    "Model",
    "ModelChange",
    "ModelVersion",
    "ModuleRun",
    "NodeRun",
    "Pipeline",
    "PipelineVersion",
    "ProgressPoint",
    "Role",
    "Run",
    "RunUse",
    "State",
    "User",
    "UtcDateTime",
    "utcnow",
]


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, whatever the database keeps."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the center stores UTC; pass an aware datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


class State(StrEnum):
    """Of runs, node runs and module runs."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


class DatasetState(StrEnum):
    LIVE = "live"
    PENDING_DELETION = "pending-deletion"  # marked by a sweep; the owner confirms, or the grace period passes
    DELETING = "deleting"  # claimed by one sweep; its files are being removed
    DELETED = "deleted"  # a tombstone: files gone, the record kept for lineage


class Role(StrEnum):
    ADMIN = "admin"
    OWNER = "owner"
    VIEWER = "viewer"


# Explicit constraint names: Alembic can then alter them on every database, SQLite included.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UtcDateTime, dict[str, Any]: JSON, list[Any]: JSON}  # noqa: RUF012 - read by SQLAlchemy


class Pipeline(Base):
    __tablename__ = "pipelines"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    owner: Mapped[str | None] = mapped_column(String(200))
    priority: Mapped[str | None] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PipelineVersion(Base):
    """One spec version, by the SHA-256 of its file."""

    __tablename__ = "pipeline_versions"
    __table_args__ = (UniqueConstraint("pipeline_id", "sha256"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipelines.id"))
    sha256: Mapped[str] = mapped_column(String(64))
    first_seen: Mapped[datetime] = mapped_column(default=utcnow)


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        UniqueConstraint("pipeline_id", "run_id"),
        Index("ix_runs_state_id", "state", "id"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(String(250))
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipelines.id"), index=True)
    version_id: Mapped[int | None] = mapped_column(ForeignKey("pipeline_versions.id"))
    state: Mapped[str] = mapped_column(String(20), default=State.RUNNING)
    priority: Mapped[str | None] = mapped_column(String(20))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    upstream: Mapped[dict[str, Any]] = mapped_column(default=dict)  # outer DAG: node -> upstream nodes
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    duration_s: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)


class NodeRun(Base):
    __tablename__ = "node_runs"
    __table_args__ = (UniqueConstraint("run_pk", "node"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_pk: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    node: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(20), default=State.QUEUED)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    engine: Mapped[str | None] = mapped_column(String(50))
    priority: Mapped[str | None] = mapped_column(String(20))
    resources: Mapped[str | None] = mapped_column(String(100))
    backend: Mapped[str | None] = mapped_column(String(50))
    plan: Mapped[dict[str, Any]] = mapped_column(default=dict)  # modules, their types and inputs, upstream
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    duration_s: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)


class ModuleRun(Base):
    __tablename__ = "module_runs"
    __table_args__ = (UniqueConstraint("node_run_id", "module"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_run_id: Mapped[int] = mapped_column(ForeignKey("node_runs.id", ondelete="CASCADE"))
    module: Mapped[str] = mapped_column(String(200))
    type: Mapped[str | None] = mapped_column(String(50))
    state: Mapped[str] = mapped_column(String(20), default=State.QUEUED)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    duration_s: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    log_uri: Mapped[str | None] = mapped_column(String(1024))


class Dataset(Base):
    """One dataset instance: a URI. Its record outlives its files (state ``deleted``)."""

    __tablename__ = "datasets"
    __table_args__ = (
        Index("ix_datasets_state_id", "state", "id"),
        Index("ix_datasets_pipeline_name_created", "pipeline_id", "name", "created_at"),
        Index("ix_datasets_owner_id", "owner", "id"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uri: Mapped[str] = mapped_column(String(1024), unique=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    pipeline_id: Mapped[int | None] = mapped_column(ForeignKey("pipelines.id"))
    owner: Mapped[str | None] = mapped_column(String(200))
    format: Mapped[str | None] = mapped_column(String(50))
    external: Mapped[bool] = mapped_column(Boolean, default=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    files: Mapped[int] = mapped_column(Integer, default=0)
    rows: Mapped[int | None] = mapped_column(BigInteger)
    schema: Mapped[dict[str, Any] | None]
    producer_run_pk: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    producer_node: Mapped[str | None] = mapped_column(String(200))
    consumers_expected: Mapped[list[Any]] = mapped_column(default=list)  # node ids of the producing pipeline
    retention: Mapped[str | None] = mapped_column(String(50))
    state: Mapped[str] = mapped_column(String(20), default=DatasetState.LIVE)
    pinned: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str | None] = mapped_column(Text)  # why it is pending deletion, deleted, or kept
    marked_at: Mapped[datetime | None]
    delete_after: Mapped[datetime | None]  # end of the grace period
    confirmed_by: Mapped[str | None] = mapped_column(String(200))
    held_until: Mapped[datetime | None]  # an owner rejected the deletion: not marked again before this
    claimed_at: Mapped[datetime | None]  # when a sweep took it for deletion (a lease against crashed sweeps)
    deleted_at: Mapped[datetime | None]
    last_access: Mapped[datetime | None] = mapped_column(index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class DatasetRead(Base):
    """A node of a run read a dataset: the consumers, the last access, and lineage."""

    __tablename__ = "dataset_reads"
    __table_args__ = (UniqueConstraint("dataset_id", "run_pk", "node"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    run_pk: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    node: Mapped[str] = mapped_column(String(200))
    ts: Mapped[datetime] = mapped_column(default=utcnow)


class RunUse(Base):
    """A dataset (by URI) that a run reads or writes: while the run is queued or running it is never deleted."""

    __tablename__ = "run_uses"
    __table_args__ = (UniqueConstraint("run_pk", "uri"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_pk: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    uri: Mapped[str] = mapped_column(String(1024), index=True)


class Model(Base):
    """A model in a model repository, and a mirror of its routing file (which stays the source of truth)."""

    __tablename__ = "models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # The pipeline that first published it: only that pipeline's owners (or an admin) change it.
    pipeline_id: Mapped[int | None] = mapped_column(ForeignKey("pipelines.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The repository holding it (learnt from the versions' URIs); the center changes its routing
    # there only when it lies inside the center's storage roots.
    repository: Mapped[str | None] = mapped_column(String(1024))
    # The routing's generation, labels and split as last mirrored; a lower generation is never applied.
    generation: Mapped[int] = mapped_column(Integer, default=0)
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    mirrored_at: Mapped[datetime | None]
    mirror_error: Mapped[str | None] = mapped_column(String(1000))


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    version: Mapped[str] = mapped_column(String(100))
    uri: Mapped[str | None] = mapped_column(String(1024))
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id"))
    run_pk: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    deployed: Mapped[bool] = mapped_column(Boolean, default=False)
    traffic: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # From the version's manifest: what its run's evaluate module measured, and who published it.
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    publisher: Mapped[str | None] = mapped_column(String(100))
    removed_at: Mapped[datetime | None]  # its files were removed from the repository (kept here for the record)


class ModelChange(Base):
    """One change of a model's routing (its generation), whoever made it: a pipeline, the console or the CLI.

    The routing file keeps only its last 100 changes; this table keeps the whole trail.
    """

    __tablename__ = "model_changes"
    __table_args__ = (UniqueConstraint("model_id", "generation"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    generation: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(20))
    version: Mapped[int | None] = mapped_column(Integer)
    traffic: Mapped[int | None] = mapped_column(Integer)
    who: Mapped[str] = mapped_column(String(100))
    at: Mapped[datetime]
    before: Mapped[dict[str, Any]] = mapped_column(default=dict)
    after: Mapped[dict[str, Any]] = mapped_column(default=dict)
    via: Mapped[str] = mapped_column(String(20))  # pipeline | console | api | repository


class Metric(Base):
    __tablename__ = "metrics"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_pk: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    node: Mapped[str | None] = mapped_column(String(200))
    module: Mapped[str | None] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(200))
    value: Mapped[float] = mapped_column(Float)
    ts: Mapped[datetime] = mapped_column(default=utcnow)


class ProgressPoint(Base):
    """One point of a module's progress while it ran (a ``module.progress`` event): a training curve's.

    A table of its own rather than rows of ``metrics``: a point is one row with typed columns (which
    worker, which attempt, at which step), and the run's final metrics stay a short list.
    """

    __tablename__ = "progress_points"
    __table_args__ = (Index("ix_progress_points_run_module", "run_pk", "node", "module"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_pk: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    node: Mapped[str] = mapped_column(String(200))
    module: Mapped[str] = mapped_column(String(200))
    attempt: Mapped[int] = mapped_column(Integer)
    worker: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(BigInteger)
    steps: Mapped[int] = mapped_column(BigInteger)
    loss: Mapped[float] = mapped_column(Float)
    auc: Mapped[float | None] = mapped_column(Float)
    examples_per_s: Mapped[float | None] = mapped_column(Float)
    seconds: Mapped[float | None] = mapped_column(Float)
    ts: Mapped[datetime] = mapped_column(default=utcnow)


class IngestedEvent(Base):
    """Ids of events already applied: a re-delivered event is recognised and ignored."""

    __tablename__ = "ingested_events"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(300))
    role: Mapped[str] = mapped_column(String(20))
    groups: Mapped[list[Any]] = mapped_column(default=list)  # pipeline owners this user answers for
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    """API tokens and console sessions; only a SHA-256 of the secret is stored."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(20), default="api")  # api | session
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]


class AuditEntry(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ts: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(50))
    target_type: Mapped[str] = mapped_column(String(50))
    target_id: Mapped[str] = mapped_column(String(1024))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class LoginFailure(Base):
    """Recent failed console logins per account (``user#sha256:<hash of the name>``) and per client address
    (``addr:<ip>``).

    In the database, not in a worker's memory: every worker process and a restarted center see the
    same count, so a guesser cannot spread attempts over workers or wait out a restart.
    """

    __tablename__ = "login_failures"
    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure: Mapped[datetime] = mapped_column(default=utcnow)
    blocked_until: Mapped[datetime | None]
