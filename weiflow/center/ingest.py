"""Events in, rows out: the only way runtime facts reach the center's database.

Ingestion is idempotent (an event id is applied once) and order-tolerant: events of one run
come from several processes (parallel Airflow tasks) and from spools delivered late, so a
``node.succeeded`` may arrive before its ``node.started``, or a run's first event may be a
node's. Rows are created on first mention, and a state never moves back from an end state
to ``running`` for the same attempt.

A run may be announced many times (``weiflow run-node`` announces it at every node, WeiFlow's
Airflow listener when Airflow queues it and when Airflow starts it): a ``run.started`` marked
``queued`` never moves a running run back to queued, and one that comes after the run ended
leaves it ended, unless it names a run attempt (an orchestrator's count of how often it started
the run: Airflow's clear number + 1) and was emitted after the end: Airflow was told to run it
again (a cleared run), and its datasets need protecting again. Likewise an end emitted before
the run's latest (re)start belongs to an earlier attempt and is ignored.

Events are claims, and each is checked against who posts it (:class:`Principal`; ``None`` is a
trusted in-process caller). A token may post events only for pipelines its user owns, by name or
group, or as an admin. A pipeline is registered by its first event, owned by the spec's ``owner``
(which the poster must answer for) or else by the poster; its owner changes only by an admin or
by a new spec version posted by a user who answers for the old owner and the new one, and every
registration and change is audited. A ``dataset.written`` for a URI of another owner's pipeline,
or a model version of another owner's model, is refused. Refusals are per event, with the reason.

A ``module.progress`` event (a point of a training curve) is owned like any other event of its run but
changes no run, node or module state: it only adds a :class:`ProgressPoint`, at most
:data:`~weiflow.center.progress.MAX_POINTS_PER_MODULE` per module of a run (later ones are dropped).

Retention clocks (when a dataset was written, when it was last read) are the center's receipt
time, never the client's: a timestamp in the past would make fresh data look due for deletion.
Run and node times come from the event (they order a run's history), but never from the future.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from weiflow.center.eventschema import EventLimits, EventRejected, validate_event
from weiflow.center.models import (
    AuditEntry,
    Dataset,
    DatasetRead,
    DatasetState,
    IngestedEvent,
    Metric,
    Model,
    ModelVersion,
    ModuleRun,
    NodeRun,
    Pipeline,
    PipelineVersion,
    ProgressPoint,
    Role,
    Run,
    RunUse,
    State,
)
from weiflow.center.progress import MAX_POINTS_PER_MODULE
from weiflow.center.repository import Principal
from weiflow.center.routing import MAX_VERSION_METRICS, record_routing, repository_of, too_large
from weiflow.modelrepo import ModelRepoError, Routing, check_model_name
from weiflow.tracking import Event, EventKind

__all__ = ["IngestResult", "ingest_events", "parse_events"]

log = logging.getLogger("weiflow.center")


def _finite(value: float) -> bool:
    """Whether ``value`` is a finite float; an integer like 10**400 is not one (float() would overflow)."""
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


_ENDED = {State.SUCCEEDED, State.FAILED, State.SKIPPED}
_END_STATE = {
    EventKind.RUN_SUCCEEDED: State.SUCCEEDED,
    EventKind.RUN_FAILED: State.FAILED,
    EventKind.NODE_SUCCEEDED: State.SUCCEEDED,
    EventKind.NODE_FAILED: State.FAILED,
    EventKind.NODE_SKIPPED: State.SKIPPED,
    EventKind.MODULE_SUCCEEDED: State.SUCCEEDED,
    EventKind.MODULE_FAILED: State.FAILED,
}


@dataclass
class IngestResult:
    """What became of a batch: counts, and one line per rejected event saying why."""

    applied: int = 0
    duplicate: int = 0
    rejected: int = 0
    problems: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {"applied": self.applied, "duplicate": self.duplicate, "rejected": self.rejected}


class Refused(Exception):
    """The poster may not make this claim (another owner's pipeline, dataset or model)."""


def parse_events(payload: Any, limits: EventLimits | None = None) -> tuple[list[tuple[int, Event]], list[str]]:
    """Events from a JSON array (of objects or of JSON strings), each with its index in the array;
    bad entries are reported, not fatal.

    One malformed event must not block a spool forever, so it is rejected with its reason and
    the rest are applied.
    """
    items = payload if isinstance(payload, list) else [payload]
    events: list[tuple[int, Event]] = []
    problems: list[str] = []
    for index, item in enumerate(items):
        try:
            events.append((index, validate_event(item, limits or EventLimits())))
        except EventRejected as exc:
            problems.append(f"event {index}: {exc}")
    return events, problems


def _ts(event: Event, now: datetime) -> datetime:
    try:
        value = datetime.fromisoformat(event.ts)
    except ValueError:
        return now
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    return min(value, now)


def ingest_events(
    session: Session,
    events: list[Event] | list[tuple[int, Event]],
    principal: Principal | None = None,
    *,
    now: datetime | None = None,
) -> IngestResult:
    """Apply events in order, each at most once and only if ``principal`` may claim it; commits.

    ``events`` may carry their index in the posted batch, which the problems then name. ``now``
    is the receipt time (default: the clock), which retention clocks use.
    """
    result = IngestResult()
    batch = [entry if isinstance(entry, tuple) else (position, entry) for position, entry in enumerate(events)]
    seen = _already_ingested(session, [event.id for _, event in batch])
    # Rows this batch looked up, by natural key: one query each, not one per event.
    rows: dict[tuple[Any, ...], Any] = {}
    for index, event in batch:
        if event.id in seen:
            result.duplicate += 1
            continue
        seen.add(event.id)
        outcome = _apply_one(session, event, principal, rows, now or datetime.now(UTC))
        if isinstance(outcome, Refused):
            result.rejected += 1
            result.problems.append(f"event {index} ({event.kind} of {event.pipeline}/{event.run_id}): {outcome}")
            log.warning("refused event %s from %s: %s", event.id, principal.username if principal else "-", outcome)
            continue
        if outcome == "duplicate":
            result.duplicate += 1
            continue
        result.applied += 1
    session.commit()
    return result


def _apply_one(
    session: Session,
    event: Event,
    principal: Principal | None,
    rows: dict[tuple[Any, ...], Any],
    now: datetime,
) -> str | Refused:
    """'applied', 'duplicate', or the refusal. A unique-key clash means another center process
    applied this event meanwhile, or created a row it needs (the same run, node or dataset from
    a parallel task's batch): then it is applied again, now finding that row, never dropped."""
    for _ in range(3):
        try:
            with session.begin_nested():
                session.add(IngestedEvent(id=event.id, kind=str(event.kind)))
                session.flush()
                _Applier(session, event, principal, rows, now).apply()
        except IntegrityError:
            rows.clear()  # rows made inside the rolled-back savepoint are gone
            if session.get(IngestedEvent, event.id) is not None:
                return "duplicate"
            continue
        except Refused as refused:
            rows.clear()
            return refused
        return "applied"
    raise RuntimeError(f"event {event.id}: a unique key kept clashing in three tries")


def _already_ingested(session: Session, ids: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        found.update(session.scalars(select(IngestedEvent.id).where(IngestedEvent.id.in_(chunk))))
    return found


class _Applier:
    def __init__(
        self,
        session: Session,
        event: Event,
        principal: Principal | None,
        rows: dict[tuple[Any, ...], Any],
        now: datetime,
    ) -> None:
        self.s = session
        self.e = event
        self.principal = principal
        self.rows = rows
        self.now = now  # the receipt time: what retention clocks use
        self.ts = _ts(event, self.now)
        self.new_run = False  # whether this event's run row was created by this event

    def apply(self) -> None:
        kind = self.e.kind
        run = self._run()
        if kind is EventKind.RUN_STARTED:
            self._run_started(run)
        elif kind in (EventKind.RUN_SUCCEEDED, EventKind.RUN_FAILED):
            self._run_ended(run)
        elif kind is EventKind.NODE_STARTED:
            self._node_started(run)
        elif kind in (EventKind.NODE_SUCCEEDED, EventKind.NODE_FAILED, EventKind.NODE_SKIPPED):
            node = self._node(run)
            if self._newer(node.state, node.attempt):
                node.state = _END_STATE[kind]
                node.attempt = self.e.attempt or node.attempt
                node.ended_at = self.ts
                node.duration_s = self.e.duration_s
                node.error = self.e.error
        elif kind is EventKind.MODULE_STARTED:
            module = self._module(run)
            if self._newer(module.state, module.attempt, starting=True):
                module.state, module.attempt = State.RUNNING, self.e.attempt or 1
                module.started_at, module.ended_at, module.error, module.duration_s = self.ts, None, None, None
        elif kind in (EventKind.MODULE_SUCCEEDED, EventKind.MODULE_FAILED):
            module = self._module(run)
            if self._newer(module.state, module.attempt):
                module.state, module.attempt = _END_STATE[kind], self.e.attempt or module.attempt
                module.ended_at, module.duration_s, module.error = self.ts, self.e.duration_s, self.e.error
                module.log_uri = self.e.detail.get("log") or module.log_uri
        elif kind is EventKind.DATASET_WRITTEN:
            self._dataset_written(run)
        elif kind is EventKind.METRICS:
            self._metrics(run)
        elif kind is EventKind.PROGRESS:
            # A point of a curve, nothing more: no run, node or module state changes, and no model is
            # recorded from its detail (a progress event is not how a publish is reported).
            self._progress(run)
            return
        elif kind is EventKind.CLUSTER_STARTED:
            node = self._node(run)
            node.plan = {**node.plan, "processes": self.e.detail.get("processes", [])}
        self._model(run)

    def _newer(self, state: str, attempt: int, *, starting: bool = False) -> bool:
        """Whether this event may change a row that is in ``state`` for ``attempt``."""
        this = self.e.attempt or 1
        if this != attempt:
            return this > attempt
        return not (starting and state in _ENDED)  # a late 'started' never undoes an end

    # ---- who may claim what ----------------------------------------------------------------------------------

    def _who(self) -> str:
        return self.principal.username if self.principal else "system"

    def _answers_for(self, owner: str | None) -> bool:
        """Whether the poster may act for ``owner`` (admins and trusted callers for anyone)."""
        return self.principal is None or self.principal.may_manage(owner)

    def _audit(self, action: str, target_type: str, target_id: str, **detail: Any) -> None:
        self.s.add(
            AuditEntry(
                actor=self._who(), action=action, target_type=target_type, target_id=target_id[:1024], detail=detail
            )
        )

    def _pipeline(self) -> Pipeline:
        claimed, priority = self.e.detail.get("owner"), self.e.detail.get("priority")
        pipeline = self.rows.get(("pipeline", self.e.pipeline)) or self.s.scalar(
            select(Pipeline).where(Pipeline.name == self.e.pipeline)
        )
        if pipeline is None:
            if claimed is None and self.principal is not None and self.principal.role is not Role.ADMIN:
                claimed = self.principal.username  # a spec without an owner belongs to whoever registers it
            if claimed is not None and not self._answers_for(claimed):
                raise Refused(
                    f"pipeline '{self.e.pipeline}' would be owned by '{claimed}', "
                    f"which user '{self._who()}' does not answer for"
                )
            pipeline = Pipeline(name=self.e.pipeline, owner=claimed, created_at=self.now)
            self.s.add(pipeline)
            self.s.flush()
            self._audit("pipeline.register", "pipeline", pipeline.name, owner=claimed)
        elif not self._answers_for(pipeline.owner):
            raise Refused(
                f"pipeline '{pipeline.name}' belongs to '{pipeline.owner or 'nobody'}'; user '{self._who()}' "
                "may not post its events (ask its owner or an admin)"
            )
        elif claimed and pipeline.owner != claimed:
            self._change_owner(pipeline, claimed)
        if priority and pipeline.priority != priority:
            pipeline.priority = priority
        self.rows["pipeline", pipeline.name] = pipeline
        return pipeline

    def _change_owner(self, pipeline: Pipeline, claimed: str) -> None:
        """An admin, or a new spec version from a user who answers for the old owner and the new one."""
        sha = self.e.detail.get("spec_sha256")
        known = sha is not None and self.s.scalar(
            select(PipelineVersion.id).where(PipelineVersion.pipeline_id == pipeline.id, PipelineVersion.sha256 == sha)
        )
        admin = self.principal is None or self.principal.role is Role.ADMIN
        if not admin and (sha is None or known or not self._answers_for(claimed)):
            raise Refused(
                f"pipeline '{pipeline.name}' is owned by '{pipeline.owner}': its owner changes to '{claimed}' only "
                f"by an admin, or by a new spec version posted by a user who answers for both"
            )
        self._audit("pipeline.owner", "pipeline", pipeline.name, old=pipeline.owner, new=claimed, spec_sha256=sha)
        pipeline.owner = claimed

    def _run(self) -> Run:
        pipeline = self._pipeline()
        run = self.rows.get(("run", pipeline.id, self.e.run_id)) or self.s.scalar(
            select(Run).where(Run.pipeline_id == pipeline.id, Run.run_id == self.e.run_id)
        )
        self.new_run = run is None
        if run is None:
            run = Run(run_id=self.e.run_id, pipeline_id=pipeline.id, state=State.RUNNING, started_at=self.ts)
            run.params, run.upstream = {}, {}
            self.s.add(run)
            self.s.flush()
        self.rows["run", pipeline.id, run.run_id] = run
        sha = self.e.detail.get("spec_sha256")
        if sha and run.version_id is None:
            version = self.s.scalar(
                select(PipelineVersion).where(PipelineVersion.pipeline_id == pipeline.id, PipelineVersion.sha256 == sha)
            )
            if version is None:
                version = PipelineVersion(pipeline_id=pipeline.id, sha256=sha, first_seen=self.ts)
                self.s.add(version)
                self.s.flush()
            run.version_id = version.id
        if self.e.detail.get("priority") and not run.priority:
            run.priority = self.e.detail["priority"]
        return run

    def _run_started(self, run: Run) -> None:
        queued = bool(self.e.detail.get("queued"))
        if run.state in _ENDED and self.e.attempt is not None and run.ended_at is not None and self.ts > run.ended_at:
            # Started again after it ended (Airflow cleared it): a new attempt, to protect and to time.
            run.state = State.QUEUED if queued else State.RUNNING
            run.started_at, run.ended_at, run.error, run.duration_s = self.ts, None, None, None
        else:
            if run.state not in _ENDED and (not queued or self.new_run):
                # A 'queued' only describes a run nothing said was running yet: a late one never undoes a start.
                run.state = State.QUEUED if queued else State.RUNNING
            run.started_at = min(run.started_at or self.ts, self.ts)
        run.params = dict(self.e.detail.get("params", {}))
        run.upstream = {**run.upstream, **self.e.detail.get("upstream", {})}
        for uri in self.e.detail.get("uses", []):
            self._use(run, str(uri))

    def _run_ended(self, run: Run) -> None:
        if run.ended_at is not None and self.ts < run.ended_at:
            return  # a later end is already recorded (a run marked success after it failed, say)
        if self.e.attempt is not None and run.started_at is not None and self.ts < run.started_at:
            return  # the end of an attempt before the one now recorded (delivered late)
        if run.started_at is None:
            run.started_at = self.ts
        run.state = _END_STATE[self.e.kind]
        run.ended_at = self.ts
        run.error = self.e.error
        run.duration_s = (self.ts - run.started_at).total_seconds()

    def _use(self, run: Run, uri: str) -> None:
        exists = self.s.scalar(select(RunUse.id).where(RunUse.run_pk == run.id, RunUse.uri == uri))
        if exists is None:
            self.s.add(RunUse(run_pk=run.id, uri=uri))

    def _node(self, run: Run) -> NodeRun:
        node_id = self.e.node or "?"
        node = self.rows.get(("node", run.id, node_id)) or self.s.scalar(
            select(NodeRun).where(NodeRun.run_pk == run.id, NodeRun.node == node_id)
        )
        if node is None:
            node = NodeRun(run_pk=run.id, node=node_id, state=State.QUEUED, attempt=self.e.attempt or 1)
            node.plan = {}
            self.s.add(node)
            self.s.flush()
        self.rows["node", run.id, node_id] = node
        return node

    def _node_started(self, run: Run) -> None:
        node = self._node(run)
        detail = self.e.detail
        if self._newer(node.state, node.attempt, starting=True):
            node.state, node.attempt = State.RUNNING, self.e.attempt or 1
            node.started_at, node.ended_at, node.error, node.duration_s = self.ts, None, None, None
        node.engine = detail.get("engine") or node.engine
        node.priority = detail.get("priority") or run.priority
        node.resources = detail.get("resources") or node.resources
        node.backend = detail.get("backend") or node.backend
        node.plan = {**node.plan, **{k: v for k, v in detail.items() if k != "spec_sha256"}}
        if run.state not in _ENDED:
            run.state = State.RUNNING
        if node.node not in run.upstream:
            run.upstream = {**run.upstream, node.node: list(detail.get("upstream", []))}
        types = detail.get("module_types", {})
        for module_id in detail.get("modules", []):
            self._module_row(node, module_id, types.get(module_id))
        for name, uri in detail.get("reads", {}).items():
            self._use(run, uri)
            self._read(run, node.node, name, uri)
        for info in detail.get("writes", {}).values():
            if isinstance(info, dict) and "uri" in info:
                self._use(run, info["uri"])

    def _read(self, run: Run, node: str, name: str, uri: str) -> None:
        dataset = self.s.scalar(select(Dataset).where(Dataset.uri == uri))
        if dataset is None:
            # Read before any writer reported it: a dataset from outside WeiFlow (external), kept for lineage.
            dataset = Dataset(uri=uri, name=name, external=True, created_at=self.now, last_access=self.now)
            dataset.consumers_expected = []
            self.s.add(dataset)
            self.s.flush()
        if dataset.last_access is None or dataset.last_access < self.now:
            dataset.last_access = self.now
        seen = self.s.scalar(
            select(DatasetRead.id).where(
                DatasetRead.dataset_id == dataset.id, DatasetRead.run_pk == run.id, DatasetRead.node == node
            )
        )
        if seen is None:
            self.s.add(DatasetRead(dataset_id=dataset.id, run_pk=run.id, node=node, ts=self.now))

    def _module_row(self, node: NodeRun, module_id: str, type_name: str | None) -> ModuleRun:
        module = self.rows.get(("module", node.id, module_id)) or self.s.scalar(
            select(ModuleRun).where(ModuleRun.node_run_id == node.id, ModuleRun.module == module_id)
        )
        if module is None:
            module = ModuleRun(node_run_id=node.id, module=module_id, type=type_name, state=State.QUEUED, attempt=1)
            self.s.add(module)
            self.s.flush()
        elif type_name and not module.type:
            module.type = type_name
        self.rows["module", node.id, module_id] = module
        return module

    def _module(self, run: Run) -> ModuleRun:
        node = self._node(run)
        return self._module_row(node, self.e.module or "?", None)

    def _dataset_written(self, run: Run) -> None:
        info = self.e.dataset
        if info is None:
            return
        node = self._node(run) if self.e.node else None
        declared = (node.plan.get("writes", {}) if node else {}).get(info.name)
        declared = declared if isinstance(declared, dict) else {}
        pipeline = self.s.get(Pipeline, run.pipeline_id)
        dataset = self.s.scalar(select(Dataset).where(Dataset.uri == info.uri))
        if dataset is None:
            dataset = Dataset(uri=info.uri, name=info.name, created_at=self.now)
            self.s.add(dataset)
        else:
            self._may_write(dataset, pipeline)
            if dataset.state not in (DatasetState.LIVE, DatasetState.DELETING):
                # Written again (a rerun): the files are new, so an old mark or tombstone no longer applies.
                dataset.state, dataset.reason, dataset.marked_at = DatasetState.LIVE, None, None
                dataset.delete_after, dataset.deleted_at, dataset.confirmed_by = None, None, None
                dataset.created_at = self.now
        dataset.name = info.name
        dataset.external = False
        dataset.format = info.format
        dataset.size_bytes, dataset.files, dataset.rows = info.size_bytes, info.files, info.rows
        dataset.schema = info.schema
        dataset.pipeline_id = run.pipeline_id
        dataset.owner = pipeline.owner if pipeline else None
        dataset.producer_run_pk, dataset.producer_node = run.id, self.e.node
        dataset.retention = declared.get("retention") or self.e.detail.get("retention") or dataset.retention
        dataset.consumers_expected = list(declared.get("consumers", self.e.detail.get("consumers", [])))
        if dataset.retention == "pinned":
            dataset.pinned = True
        self._use(run, info.uri)

    def _may_write(self, dataset: Dataset, pipeline: Pipeline | None) -> None:
        """Refuse a write to a URI that another owner's pipeline wrote; audit taking over a read-only one."""
        if dataset.pipeline_id is not None and not self._answers_for(dataset.owner):
            raise Refused(
                f"dataset {dataset.uri} belongs to '{dataset.owner or 'nobody'}' (pipeline id {dataset.pipeline_id}); "
                f"user '{self._who()}' may not write it: choose a URI of your own pipeline's"
            )
        if dataset.pipeline_id is None and dataset.external:
            # Known only as something runs read; now a WeiFlow pipeline says it writes it.
            self._audit(
                "dataset.claim",
                "dataset",
                str(dataset.id),
                uri=dataset.uri,
                pipeline=pipeline.name if pipeline else None,
            )

    def _metrics(self, run: Run) -> None:
        def numbers(prefix: str, values: dict[str, Any]) -> None:
            for key, value in values.items():
                name = f"{prefix}{key}"
                if isinstance(value, bool):
                    continue
                if isinstance(value, int | float):
                    self.s.add(
                        Metric(
                            run_pk=run.id,
                            node=self.e.node,
                            module=self.e.module,
                            name=name[:200],
                            value=float(value),
                            ts=self.ts,
                        )
                    )
                elif isinstance(value, dict) and not prefix:
                    numbers(f"{key}.", value)

        numbers("", self.e.detail)

    def _progress(self, run: Run) -> None:
        # The event's node and module are checked present (eventschema); no node or module row is made
        # for them: the node's own events make those, and a curve is drawn from its points alone.
        node, module, detail = self.e.node or "?", self.e.module or "?", self.e.detail
        key = ("progress", run.id, node, module)
        stored: int | None = self.rows.get(key)
        if stored is None:
            # Counted once per batch (then kept in ``rows``): one query for a spool's hundred points, not a hundred.
            stored = (
                self.s.scalar(
                    select(func.count(ProgressPoint.id)).where(
                        ProgressPoint.run_pk == run.id, ProgressPoint.node == node, ProgressPoint.module == module
                    )
                )
                or 0
            )
        if stored >= MAX_POINTS_PER_MODULE:
            # Dropped, not refused: the client did nothing wrong that a re-post would fix, and the curve so far
            # is kept. The event id stays recorded, so a spool re-posting it sees a duplicate.
            log.debug("progress of %s/%s in run %s: over %d points, dropped", node, module, run.id, stored)
            self.rows[key] = stored
            return
        self.s.add(
            ProgressPoint(
                run_pk=run.id,
                node=node,
                module=module,
                attempt=self.e.attempt or 1,
                worker=detail["worker"],
                step=detail["step"],
                steps=detail["steps"],
                loss=float(detail["loss"]),
                auc=float(detail["auc"]) if "auc" in detail else None,
                examples_per_s=float(detail["examples_per_s"]) if "examples_per_s" in detail else None,
                seconds=float(detail["seconds"]) if "seconds" in detail else None,
                ts=self.ts,
            )
        )
        self.rows[key] = stored + 1

    def _model(self, run: Run) -> None:
        """``detail.model`` on any event records a model version; ``detail.routing`` mirrors its routing.

        ``model = {name, version, uri?, repository?, deployed?, traffic?, metrics?, publisher?}``;
        ``routing`` is the routing file after the change the event reports (its history cut to that
        change), applied unless the center already shows a newer generation.
        """
        spec = self.e.detail.get("model")
        if not isinstance(spec, dict) or "name" not in spec or "version" not in spec:
            return
        try:
            check_model_name(str(spec["name"]))
        except ModelRepoError as exc:
            raise Refused(f"detail.model.name: {exc.message} ({exc.hint})") from None
        if len(str(spec["version"])) > 100:
            raise Refused("detail.model.version: at most 100 characters")
        model = self.s.scalar(select(Model).where(Model.name == str(spec["name"])))
        if model is None:
            model = Model(name=str(spec["name"]), pipeline_id=run.pipeline_id, created_at=self.now)
            self.s.add(model)
            self.s.flush()
        elif model.pipeline_id != run.pipeline_id:
            owner = self.s.scalar(select(Pipeline.owner).where(Pipeline.id == model.pipeline_id))
            if model.pipeline_id is None or not self._answers_for(owner):
                raise Refused(
                    f"model '{model.name}' belongs to '{owner or 'nobody'}'; user '{self._who()}' may not change "
                    "its versions"
                )
        version = self.s.scalar(
            select(ModelVersion).where(ModelVersion.model_id == model.id, ModelVersion.version == str(spec["version"]))
        )
        if version is None:
            version = ModelVersion(model_id=model.id, version=str(spec["version"]), run_pk=run.id, created_at=self.now)
            self.s.add(version)
        uri = spec.get("uri") or (self.e.dataset.uri if self.e.dataset else None)
        if uri:
            version.uri = str(uri)
            version.dataset_id = self.s.scalar(select(Dataset.id).where(Dataset.uri == str(uri)))
        repository = spec.get("repository") or (repository_of(str(uri), model.name, version.version) if uri else None)
        if isinstance(repository, str) and repository:
            if len(repository) > 1024:
                raise Refused("detail.model: the repository URI is longer than 1024 characters")
            model.repository = repository
        metrics = spec.get("metrics")
        if isinstance(metrics, dict):
            version.metrics = {
                str(k)[:200]: float(v)
                for k, v in list(metrics.items())[:MAX_VERSION_METRICS]
                if isinstance(v, int | float) and not isinstance(v, bool) and _finite(v)
            }
        if isinstance(spec.get("publisher"), str):
            version.publisher = spec["publisher"][:100]
        routing = self.e.detail.get("routing")
        if routing is not None:
            # The whole split, consistent across versions: the per-version fields below would let a late event
            # undo a newer change.
            record_routing(self.s, model, self._routing(model.name, routing), via="pipeline", now=self.now)
            return
        if spec.get("deployed") is not None:
            version.deployed = bool(spec["deployed"])
        if spec.get("traffic") is not None:
            version.traffic = float(spec["traffic"])

    def _routing(self, model: str, value: Any) -> Routing:
        try:
            routing = Routing.from_json(json.dumps(value), source="detail.routing")
        except ModelRepoError as exc:
            raise Refused(f"not a valid model routing: {exc.message}") from None
        if routing.model != model:
            raise Refused(f"detail.routing is the routing of model '{routing.model}', not of '{model}'")
        problem = too_large(routing)
        if problem:
            raise Refused(problem)
        return routing
