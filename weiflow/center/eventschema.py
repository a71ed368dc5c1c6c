"""The shape of an event the center accepts: every field typed and bounded before anything is stored.

Events come over the network from whoever holds a token, so nothing in one is trusted. Each is
checked on its own against this schema (types, lengths, nesting, finite numbers) and rejected
with its reason, while the rest of its batch is applied. What passes cannot break a later read:
before this, an ``attempt`` of ``"x"`` made every later event of that node fail (a spool
re-posting the batch was stuck for good), and a ``size_bytes`` of ``"big"`` made the console's
dataset list fail for every user.

Long error texts are not refused but cut to ``max_error_chars`` with a pointer to the run log
that holds them whole: a failing run must still be recorded as failed.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from weiflow.center.retention import parse_policy
from weiflow.errors import ConfigError
from weiflow.tracking import DatasetInfo, Event, EventKind

__all__ = ["EventLimits", "EventRejected", "event_batch_schema", "validate_event"]

MAX_INT = 2**63 - 1  # the widest integer column (BIGINT) on both databases


@dataclass(frozen=True)
class EventLimits:
    """Bounds on one event; the defaults fit every event the runtime emits with room to spare."""

    max_error_chars: int = 8_000
    max_detail_bytes: int = 64 * 1024  # the JSON text of ``detail``
    max_depth: int = 8  # nesting of objects and arrays anywhere in the event


class EventRejected(ValueError):
    """This event cannot be applied; the message says which field and why."""


Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]
RunId = Annotated[str, StringConstraints(min_length=1, max_length=250)]
Uri = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
Short = Annotated[str, StringConstraints(max_length=50)]
Count = Annotated[int, Field(ge=0, le=MAX_INT)]


def _policy(value: str | None) -> str | None:
    if value is not None:
        try:
            parse_policy(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
    return value


class _Strict(BaseModel):
    # strict: "5" is not an int and 1 is not a bool; a client that means a number sends one.
    model_config = ConfigDict(extra="forbid", strict=True)


class _DatasetIn(_Strict):
    name: Name
    uri: Uri
    format: Short
    size_bytes: Count
    files: Annotated[int, Field(ge=0, le=2**31 - 1)]
    rows: Count | None = None
    columns: dict[Name, Annotated[str, StringConstraints(max_length=200)]] | None = Field(
        None, alias="schema", max_length=10_000
    )


class _WriteIn(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    uri: Uri
    retention: Annotated[str, StringConstraints(max_length=50)] | None = None
    consumers: list[Name] = Field(default_factory=list, max_length=1000)

    _check_retention = field_validator("retention")(_policy)


class _ModelIn(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    name: Name
    version: Annotated[str, StringConstraints(min_length=1, max_length=100)] | Annotated[int, Field(ge=0, le=MAX_INT)]
    uri: Uri | None = None
    deployed: bool | None = None
    traffic: Annotated[float, Field(ge=0, le=100)] | None = None


class _DetailIn(BaseModel):
    """The keys ingestion reads, typed; any other key (a metric, a note) passes the generic bounds only."""

    model_config = ConfigDict(extra="allow", strict=True)
    owner: Name | None = None
    priority: Annotated[str, StringConstraints(max_length=20)] | None = None
    spec_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None
    params: dict[Name, Any] | None = Field(None, max_length=1000)
    # run.started: the outer DAG (node -> its upstream nodes); node.started: that node's upstream nodes.
    upstream: dict[Name, list[Name]] | list[Name] | None = Field(None, max_length=10_000)
    uses: list[Uri] | None = Field(None, max_length=10_000)
    queued: bool | None = None
    engine: Short | None = None
    resources: Annotated[str, StringConstraints(max_length=100)] | None = None
    backend: Short | None = None
    modules: list[Name] | None = Field(None, max_length=10_000)
    module_types: dict[Name, Short] | None = Field(None, max_length=10_000)
    reads: dict[Name, Uri] | None = Field(None, max_length=10_000)
    writes: dict[Name, _WriteIn] | None = Field(None, max_length=10_000)
    retention: Annotated[str, StringConstraints(max_length=50)] | None = None
    consumers: list[Name] | None = Field(None, max_length=1000)
    processes: list[Any] | None = Field(None, max_length=10_000)
    log: Uri | None = None
    model: _ModelIn | Name | None = None

    _check_retention = field_validator("retention")(_policy)


# A module.progress point (PROGRESS_FIELDS of weiflow.tracking). The bounds are far beyond any real run
# and only keep what is stored drawable: a step past 10**12 or a loss of 1e300 is a broken client.
MAX_PROGRESS_STEP = 10**12
MAX_WORKERS = 1024
Finite = Annotated[float, Field(allow_inf_nan=False)]


class _ProgressIn(BaseModel):
    # Other keys pass (the trainer may add some later) but are not stored.
    model_config = ConfigDict(extra="allow", strict=True)
    step: Annotated[int, Field(ge=0, le=MAX_PROGRESS_STEP)]
    steps: Annotated[int, Field(ge=1, le=MAX_PROGRESS_STEP)]
    worker: Annotated[int, Field(ge=0, lt=MAX_WORKERS)]
    loss: Annotated[Finite, Field(ge=-1e12, le=1e12)]
    auc: Annotated[Finite, Field(ge=0, le=1)] | None = None
    examples_per_s: Annotated[Finite, Field(ge=0, le=1e12)] | None = None
    seconds: Annotated[Finite, Field(ge=0, le=1e9)] | None = None


class _EventIn(_Strict):
    kind: EventKind
    run_id: RunId
    pipeline: Name
    id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
    ts: Annotated[str, StringConstraints(min_length=10, max_length=40)]
    node: Name | None = None
    module: Name | None = None
    attempt: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    error: str | None = None
    dataset: _DatasetIn | None = None
    duration_s: Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)] | None = None
    detail: _DetailIn | None = None

    @field_validator("kind", mode="before")
    @classmethod
    def _known_kind(cls, value: Any) -> Any:
        # Strict mode takes only enum members; from JSON the kind is its string value.
        return EventKind(value) if isinstance(value, str) and value in EventKind._value2member_map_ else value

    @field_validator("ts")
    @classmethod
    def _iso_time(cls, value: str) -> str:
        datetime.fromisoformat(value)  # ValueError: not an ISO 8601 time
        return value

    @model_validator(mode="after")
    def _upstream_shape(self) -> _EventIn:
        upstream = self.detail.upstream if self.detail else None
        if self.kind is EventKind.RUN_STARTED and isinstance(upstream, list):
            raise ValueError("detail.upstream of run.started maps each node to its upstream nodes (an object)")
        if self.kind is EventKind.NODE_STARTED and isinstance(upstream, dict):
            raise ValueError("detail.upstream of node.started lists that node's upstream nodes (an array)")
        return self


def _check_shape(value: Any, limits: EventLimits, depth: int = 0, where: str = "event") -> None:
    """Nesting within ``max_depth``, only finite numbers (NaN is not JSON and breaks readers) and no
    NUL characters (PostgreSQL's text refuses them), anywhere."""
    if depth > limits.max_depth:
        raise EventRejected(f"{where}: nested deeper than {limits.max_depth} levels")
    if isinstance(value, str) and "\x00" in value:
        raise EventRejected(f"{where}: contains a NUL character")
    if isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in key:
                raise EventRejected(f"{where}: a key contains a NUL character")
            _check_shape(item, limits, depth + 1, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_shape(item, limits, depth + 1, f"{where}[{index}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise EventRejected(f"{where}: {value} is not a finite number")


def _reason(error: ValidationError) -> str:
    first = error.errors(include_url=False)[0]
    place = ".".join(str(part) for part in first["loc"]) or "event"
    more = f" (and {error.error_count() - 1} more problem(s))" if error.error_count() > 1 else ""
    return f"{place}: {first['msg']}{more}"


def _truncated(error: str, limit: int, pipeline: str, run_id: str) -> str:
    if len(error) <= limit:
        return error
    return (
        error[:limit] + f"\n… [{len(error) - limit} more characters cut by the control center; the whole text is "
        f"in the run log, runs/{pipeline}/{run_id}.jsonl under the var directory of the host that ran it]"
    )


def _check_progress(parsed: _EventIn, detail: dict[str, Any]) -> None:
    """A progress point says whose it is and holds numbers a chart can draw (see :class:`_ProgressIn`)."""
    if not parsed.node or not parsed.module:
        raise EventRejected("module.progress: names the node and the module it measures (node, module)")
    try:
        _ProgressIn.model_validate(detail)
    except ValidationError as exc:
        raise EventRejected(f"detail.{_reason(exc)}") from None


def validate_event(item: Any, limits: EventLimits | None = None) -> Event:
    """The :class:`Event` an untrusted JSON value describes, or :class:`EventRejected` saying why not.

    ``item`` is a parsed JSON object, or a JSON string of one (how the runtime's spool sends them).
    """
    limits = limits or EventLimits()
    line = item if isinstance(item, str) else None
    if line is not None:
        try:
            item = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise EventRejected(f"not valid JSON: {exc}") from None
    if not isinstance(item, dict):
        raise EventRejected(f"an event is a JSON object, got {type(item).__name__}")
    _check_shape(item, limits)
    item = dict(item)
    if "id" not in item:
        # Run logs written before events had ids: the text names the event, as in Event.from_json.
        text = line.strip() if line is not None else json.dumps(item, sort_keys=True)
        item["id"] = hashlib.sha256(text.encode()).hexdigest()[:32]
    if "ts" not in item:
        item["ts"] = datetime.now(UTC).isoformat(timespec="microseconds")
    try:
        parsed = _EventIn.model_validate(item)
    except ValidationError as exc:
        raise EventRejected(_reason(exc)) from None
    # An explicit null means "not given": readers then see a missing key, never a null where they expect a list.
    detail = {key: value for key, value in (item.get("detail") or {}).items() if value is not None}
    if len(json.dumps(detail)) > limits.max_detail_bytes:
        raise EventRejected(f"detail: larger than {limits.max_detail_bytes} bytes of JSON")
    if parsed.kind is EventKind.PROGRESS:
        _check_progress(parsed, detail)
    dataset = None
    if parsed.dataset is not None:
        dataset = DatasetInfo(**parsed.dataset.model_dump(by_alias=True))
    error = _truncated(parsed.error, limits.max_error_chars, parsed.pipeline, parsed.run_id) if parsed.error else None
    return Event(
        kind=parsed.kind,
        run_id=parsed.run_id,
        pipeline=parsed.pipeline,
        node=parsed.node,
        module=parsed.module,
        attempt=parsed.attempt,
        error=error,
        dataset=dataset,
        duration_s=parsed.duration_s,
        detail=dict(detail),
        ts=parsed.ts,
        id=parsed.id,
    )


def event_batch_schema(max_events: int) -> dict[str, Any]:
    """The JSON schema of a batch of events, for the API's OpenAPI description.

    Self-contained: in an OpenAPI document a ``#/$defs/...`` reference would resolve against the
    document's root, so the (non-recursive) definitions are written in place.
    """
    schema = TypeAdapter(list[_EventIn]).json_schema()
    definitions = schema.pop("$defs", {})

    def inline(value: Any) -> Any:
        if isinstance(value, dict):
            ref = value.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(definitions[ref.removeprefix("#/$defs/")])
            return {key: inline(item) for key, item in value.items()}
        if isinstance(value, list):
            return [inline(item) for item in value]
        return value

    schema = inline(schema)
    schema["maxItems"] = max_events
    schema["description"] = (
        "Events as the runtime emits them (weiflow.tracking.Event). Each is checked on its own: a malformed "
        "one, or a claim the token may not make, is rejected with its reason and the rest applied."
    )
    return dict(schema)
