"""The shapes of the API's answers and request bodies, for its OpenAPI description: what clients
(and the schemathesis run in the tests) can hold the center to.

They describe what :mod:`weiflow.center.repository` returns; FastAPI checks each answer against
them, so a drift between the two is an error the tests see, not a silent change for clients.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from weiflow.center.repository import MAX_ID

__all__ = [
    "AuditPage",
    "DatasetDetail",
    "DatasetPage",
    "DatasetRow",
    "IngestAnswer",
    "Job",
    "Me",
    "ModelDetail",
    "ModelEntry",
    "PromoteRequest",
    "RoutingChange",
    "RunDetail",
    "RunPage",
    "RunProgress",
]


class Me(BaseModel):
    username: str
    role: str
    groups: list[str]


class IngestAnswer(BaseModel):
    applied: int = Field(description="events applied now")
    duplicate: int = Field(description="events applied before (same id): ignored")
    rejected: int = Field(description="malformed events, and claims this token may not make")
    problems: list[str] = Field(description="why, for the first 20 rejected events")


class RunRow(BaseModel):
    id: int
    run_id: str
    pipeline: str
    state: str
    priority: str | None
    started_at: str | None
    ended_at: str | None
    duration_s: float | None


class RunPage(BaseModel):
    items: list[RunRow]
    next: int | None = Field(description="pass as `before` for the next page; null on the last")


class ModuleRow(BaseModel):
    id: str
    type: str | None
    state: str
    inputs: list[str]
    attempt: int
    started_at: str | None
    ended_at: str | None
    duration_s: float | None
    error: str | None
    log_uri: str | None


class NodeRow(BaseModel):
    id: str
    state: str
    upstream: list[str]
    engine: str | None
    attempt: int | None
    priority: str | None
    resources: str | None
    backend: str | None
    started_at: str | None
    ended_at: str | None
    duration_s: float | None
    error: str | None
    modules: list[ModuleRow]


class MetricRow(BaseModel):
    node: str | None
    module: str | None
    name: str
    value: float


class WrittenRow(BaseModel):
    id: int
    name: str
    uri: str
    state: str
    node: str | None


class RunDetail(BaseModel):
    id: int
    run_id: str
    pipeline: str
    spec_sha256: str | None
    state: str
    priority: str | None
    params: dict[str, Any]
    started_at: str | None
    ended_at: str | None
    duration_s: float | None
    error: str | None
    nodes: list[NodeRow] = Field(description="the outer DAG, each node with its inner DAG of modules")
    datasets_written: list[WrittenRow]
    metrics: list[MetricRow]


class ProgressPointRow(BaseModel):
    step: int = Field(description="steps done so far, all workers together")
    loss: float = Field(description="the mean training loss of the call's steps")
    auc: float | None = Field(description="the AUC of the call's training batches; null when they held one class")
    examples_per_s: float | None = Field(description="training examples per second since training started")
    seconds: float | None = Field(description="seconds since training started")


class WorkerSeries(BaseModel):
    worker: int = Field(description="the worker's index (0-based)")
    points: list[ProgressPointRow] = Field(description="by step; evenly thinned to at most 500")


class ModuleCurve(BaseModel):
    node: str
    module: str
    attempt: int = Field(description="the latest attempt that reported progress, the one shown")
    steps: int = Field(description="the number of steps the module trains for")
    workers: list[WorkerSeries]


class RunProgress(BaseModel):
    run: int = Field(description="the run's id")
    modules: list[ModuleCurve] = Field(description="each module that reported progress, in order of first report")


class DatasetRow(BaseModel):
    id: int
    name: str
    uri: str
    owner: str | None
    format: str | None
    size_bytes: int
    rows: int | None
    retention: str | None
    state: str
    pinned: bool
    reason: str | None
    delete_after: str | None
    last_access: str | None
    created_at: str | None


class DatasetPage(BaseModel):
    items: list[DatasetRow]
    next: int | None


class DatasetRef(BaseModel):
    id: int
    name: str
    uri: str
    state: str


class Lineage(BaseModel):
    upstream: list[DatasetRef]
    downstream: list[DatasetRef]


class Producer(BaseModel):
    run: int
    run_id: str
    pipeline: str
    node: str | None


class Consumer(BaseModel):
    run: int
    run_id: str
    pipeline: str
    node: str
    ts: str | None


class HistoryEntry(BaseModel):
    ts: str | None
    actor: str
    action: str
    detail: dict[str, Any]


class DatasetDetail(DatasetRow):
    files: int
    schema_: dict[str, Any] | None = Field(alias="schema")
    external: bool
    marked_at: str | None
    deleted_at: str | None
    confirmed_by: str | None
    producer: Producer | None
    consumers: list[Consumer]
    lineage: Lineage
    audit: list[HistoryEntry]


class LastRun(BaseModel):
    id: int
    run_id: str
    state: str


class Job(BaseModel):
    name: str
    owner: str | None
    priority: str | None
    runs: int
    versions: list[str] = Field(description="SHA-256 of each spec version seen, oldest first")
    last_run: LastRun | None


class VersionRow(BaseModel):
    version: str
    uri: str | None
    dataset: int | None
    deployed: bool
    traffic: float | None = Field(description="percent of the model's requests it serves (0 when not live)")
    labels: list[str] = Field(description="routing labels naming it: stable, canary, or the owner's own")
    metrics: dict[str, float] = Field(description="what its run's evaluate module measured (from its manifest)")
    publisher: str | None
    created_at: str | None
    removed_at: str | None = Field(description="when its files left the repository (it stays listed)")


class ModelEntry(BaseModel):
    name: str
    pipeline: str | None = Field(description="the pipeline that publishes it; its owners may change the routing")
    owner: str | None
    repository: str | None
    generation: int = Field(description="the routing file's generation the center mirrors")
    labels: dict[str, int]
    traffic: dict[str, float] = Field(description="live version -> percent")
    mirrored_at: str | None
    mirror_error: str | None = Field(description="why the last reading of the routing file failed, if it did")
    versions: list[VersionRow]


class RoutingChange(BaseModel):
    generation: int
    action: str = Field(description="publish | promote | rollback | remove | label")
    version: int | None
    traffic: int | None
    who: str
    at: str | None
    before: dict[str, int]
    after: dict[str, int]
    via: str = Field(description="pipeline | console | api | repository (made with `weiflow deploy` by hand)")


class ModelDetail(ModelEntry):
    metric_names: list[str] = Field(description="every metric its versions carry, for a side-by-side table")
    history: list[RoutingChange] = Field(description="routing changes, newest first (the last 200)")


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int | None = Field(None, ge=1, le=MAX_ID, description="default: the newest version")
    traffic: int = Field(ge=0, le=100, description="percent for the version; the rest stays on the stable one")


class AuditRow(BaseModel):
    id: int
    ts: str | None
    actor: str
    action: str
    target_type: str
    target_id: str
    detail: dict[str, Any]


class AuditPage(BaseModel):
    items: list[AuditRow]
    next: int | None
