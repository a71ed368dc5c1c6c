"""``weiflow serve``'s HTTP server: TensorFlow Serving's REST API, raw-feature scoring, health and metrics.

Routes (TensorFlow Serving's, https://www.tensorflow.org/tfx/serving/api_rest, plus two of ours):

- ``GET  /v1/models/{name}[/versions/{v}|/labels/{l}]``: model status;
- ``GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata``: signatures;
- ``POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict``: row (``instances``) or columnar
  (``inputs``) requests, answered as TensorFlow Serving shapes them;
- ``POST /v1/models/{name}[/versions/{v}|/labels/{l}]:score``: ``{"instances": [raw rows], "key": "..."}``
  mapped by the version's own feature map, answered ``{"scores": [...], "model_version": "7"}``;
- ``GET /v2/health/live``, ``GET /v2/health/ready`` (ready once every model has a warm version);
- ``GET /monitoring/prometheus/metrics``;
- ``GET /v1/openapi.json``: this API's OpenAPI description (:mod:`weiflow.serving.openapi`).

Errors are TensorFlow Serving's ``{"error": "..."}`` with its HTTP codes (400 bad request, 404
unknown model or version, 408 body too slow, 413 body too large, 429 batching queue full, 500 the model failed).
Every answer from a model names the version in the body (``:score``) and in ``X-Model-Version``.

The server is Starlette on uvicorn, without FastAPI: the request bodies are TensorFlow Serving's
free-form JSON, which a schema layer would only slow down (single-row latency is the figure).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from weiflow.features.featuremap import FeatureError
from weiflow.serving.batching import Batcher, BatcherClosed, BatchStats, BatchTooLarge, QueueFull
from weiflow.serving.config import BatchingParameters
from weiflow.serving.manager import ModelManager, ModelNotFound
from weiflow.serving.metrics import CONTENT_TYPE_LATEST, ServingMetrics
from weiflow.serving.openapi import DESCRIPTION_PATH, description_bytes
from weiflow.serving.servable import Servable, ServableError
from weiflow.serving.tfjson import RequestError, dumps, parse_predict, predict_response

__all__ = ["MAX_SCORE_ROWS", "REFUSED_VERBS", "SERVED_VERBS", "PredictionService", "create_app"]

log = logging.getLogger("weiflow.serving")

# A request body must have arrived this long after its head (WEIFLOW_SERVE_BODY_TIMEOUT_S): a client trickling
# one byte a second otherwise holds its coroutine and its connection for ever (uvicorn bounds neither).
BODY_TIMEOUT_ENV = "WEIFLOW_SERVE_BODY_TIMEOUT_S"
BODY_TIMEOUT_S = 30.0
MAX_SCORE_ROWS = 10_000  # rows in one :score request; larger lists are a client's bug, not a batch
# /v1/models/NAME[/versions/N|/labels/L][/metadata|:VERB]
_MODEL_PATH = re.compile(
    r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[0-9]{1,18})|/labels/(?P<label>[^/:]+))?"
    r"(?:(?P<metadata>/metadata)|:(?P<verb>[a-z]+))?"
)
_JSON = "application/json"
# POST /v1/models/...:VERB: the verbs answered, and TensorFlow Serving's that are refused (400). The OpenAPI
# description (weiflow/serving/openapi.py) names exactly these; tests/serving/test_openapi.py checks it.
SERVED_VERBS = ("predict", "score")
REFUSED_VERBS = ("classify", "regress")
# TensorFlow Serving's HTTP status for each of its error codes (the rest: 500).
_HTTP_STATUS = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "NOT_FOUND": 404, "UNAVAILABLE": 503}


class _Refused(Exception):
    """An answer other than 200: TensorFlow Serving's ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, version: int | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.version = status, message, version


def _error(status: int, message: str) -> Response:
    return Response(orjson.dumps({"error": message}), status_code=status, media_type=_JSON)


class PredictionService:
    """What the routes share: the loaded models, one batcher per (version, signature), the metrics."""

    def __init__(
        self,
        manager: ModelManager,
        *,
        batching: BatchingParameters | None = None,
        max_request_bytes: int = 64 * 1024 * 1024,
        metrics: ServingMetrics | None = None,
        body_timeout_s: float | None = None,
    ) -> None:
        self.manager = manager
        self.batching = batching
        self.max_request_bytes = max_request_bytes
        if body_timeout_s is None:
            body_timeout_s = float(os.environ.get(BODY_TIMEOUT_ENV) or BODY_TIMEOUT_S)
        self.body_timeout_s = body_timeout_s
        self.metrics = metrics or ServingMetrics()
        self._batchers: dict[tuple[str, int, str], tuple[Servable, Batcher]] = {}

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self.manager.start()

    def stop(self) -> None:
        self.manager.stop()
        for _, batcher in list(self._batchers.values()):
            batcher.close(drain=True)
        self._batchers.clear()

    def model_changed(self, model: str, version: int, state: str) -> None:
        """The manager's report: metrics follow it; a version that leaves takes its batchers along."""
        self.metrics.set_state(model, version, state)
        if state == "AVAILABLE":
            with contextlib.suppress(ModelNotFound), self.manager.lease(model, version=version) as servable:
                self.metrics.load_seconds.labels(model, str(version)).set(getattr(servable, "load_seconds", 0.0))
        if state in ("UNLOADING", "END"):
            for key in [k for k in list(self._batchers) if k[:2] == (model, version)]:  # the loop thread adds keys
                _, batcher = self._batchers.pop(key)
                _close_later(batcher)

    # -- running a model ---------------------------------------------------------------

    async def run(self, servable: Servable, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run ``signature`` on ``inputs``: through the version's batcher with batching on, else in a thread."""
        labels = (servable.model, str(servable.version))
        if self.batching is None:
            started = time.perf_counter()
            outputs = await run_in_threadpool(servable.run, signature, inputs)
            self.metrics.model_time.labels(*labels).observe(time.perf_counter() - started)
            self.metrics.batch_size.labels(*labels).observe(_rows(inputs))
            return outputs
        for attempt in range(2):
            batcher = self._batcher(servable, signature)
            try:
                future = batcher.submit(inputs)
                break
            except BatcherClosed:
                # The version was reloaded between the lookup and the submit: its new batcher takes it.
                if attempt:
                    raise _Refused(
                        503, f"{servable.model} version {servable.version} is being unloaded; retry"
                    ) from None
            except QueueFull:
                full = f"the batching queue of {servable.model} version {servable.version} is full; retry"
                raise _Refused(429, full, servable.version) from None
            except (BatchTooLarge, ValueError, TypeError) as exc:
                raise _Refused(400, str(exc), servable.version) from None
        try:
            return await asyncio.wrap_future(future)
        except BatcherClosed:  # unloaded while it queued (a drain that ran out of time)
            leaving = f"{servable.model} version {servable.version} was unloaded; retry"
            raise _Refused(503, leaving, servable.version) from None

    def _batcher(self, servable: Servable, signature: str) -> Batcher:
        key = (servable.model, servable.version, signature)
        found = self._batchers.get(key)
        if found is not None and found[0] is servable:
            return found[1]
        assert self.batching is not None
        labels = (servable.model, str(servable.version))

        def observe(stats: BatchStats) -> None:
            self.metrics.queue.labels(*labels).observe(stats.queue_s)
            self.metrics.model_time.labels(*labels).observe(stats.run_s)
            self.metrics.batch_size.labels(*labels).observe(stats.size)

        def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return servable.run(signature, inputs)

        batcher = Batcher(run, self.batching, name=f"{servable.model}/{servable.version}/{signature}", on_batch=observe)
        self._batchers[key] = (servable, batcher)
        if found is not None:  # a reloaded version under the same number: the old batcher drains and goes
            _close_later(found[1])
        return batcher

    # -- the routes --------------------------------------------------------------------

    async def models(self, request: Request) -> Response:
        match = _MODEL_PATH.fullmatch(request.url.path)
        if match is None:
            return _error(400, f"Malformed request: {request.method} {request.url.path}")
        name, verb = match["name"], match["verb"]
        version = int(match["version"]) if match["version"] else None
        label = match["label"]
        api = "metadata" if match["metadata"] else (verb or "status")
        if request.method == "GET" and verb is None:
            return await self._answer(name, api, lambda: self._get(name, version, label, bool(match["metadata"])))
        if request.method == "POST" and verb == "predict":
            return await self._answer(name, api, lambda: self._predict(request, name, version, label))
        if request.method == "POST" and verb == "score":
            return await self._answer(name, api, lambda: self._score(request, name, version, label))
        if request.method == "POST" and verb in REFUSED_VERBS:
            return _error(400, f"{verb} is not supported by weiflow serve: use :predict, or :score for raw features")
        return _error(400, f"Malformed request: {request.method} {request.url.path}")

    async def _answer(self, model: str, api: str, handler: Callable[[], Any]) -> Response:
        started = time.perf_counter()
        version = ""
        response: Response
        try:
            body, served = await handler()
            version = str(served) if served is not None else ""
            response = Response(body, media_type=_JSON)
            if version:
                response.headers["X-Model-Version"] = version
        except _Refused as exc:
            version = str(exc.version) if exc.version is not None else ""
            response = _error(exc.status, exc.message)
        except ModelNotFound as exc:  # 404, or 400 for an unknown version label, as TensorFlow Serving answers
            response = _error(getattr(exc, "http_status", 404), str(exc.args[0]) if exc.args else str(exc))
        except (RequestError, FeatureError) as exc:
            response = _error(400, str(exc))
        except ServableError as exc:
            response = _error(_HTTP_STATUS.get(exc.code, 500), str(exc))
        except ClientDisconnect:  # the client left mid-upload: nobody to answer, nothing to log
            response = _error(499, "client closed the request")
        except Exception as exc:  # never die of a request: answer 500 and log the cause
            log.exception("%s %s failed", api, model)
            response = _error(500, f"{type(exc).__name__}: {exc}")
        if response.status_code in (408, 413):
            # The rest of the body was not read: the connection cannot carry another request; uvicorn closes it.
            response.headers["Connection"] = "close"
        # Only models the service knows name a series: any client could otherwise add one per made-up name.
        label = model if self.manager.known(model) else "_unknown"
        try:
            self.metrics.requests.labels(label, version, api, str(response.status_code)).inc()
            self.metrics.latency.labels(label, api).observe(time.perf_counter() - started)
        except Exception:  # metrics are for people; a request never fails because of them
            log.exception("recording the metrics of %s %s failed", api, model)
        return response

    async def _get(self, name: str, version: int | None, label: str | None, metadata: bool) -> tuple[bytes, int | None]:
        if not metadata:
            # TensorFlow Serving answers a status by label with every version of the model, as we do.
            return orjson.dumps(self.manager.status(name, version)), None
        with self.manager.lease(name, version=version, label=label) as servable:
            return dumps(servable.metadata()), servable.version

    async def _body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_request_bytes:
            raise _Refused(413, f"request body of {declared} bytes exceeds {self.max_request_bytes}")
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.body_timeout_s):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > self.max_request_bytes:
                        raise _Refused(413, f"request body exceeds {self.max_request_bytes} bytes")
                    chunks.append(chunk)
        except TimeoutError:
            raise _Refused(408, f"request body not received within {self.body_timeout_s:g} s") from None
        return b"".join(chunks)

    async def _predict(
        self, request: Request, name: str, version: int | None, label: str | None
    ) -> tuple[bytes, int | None]:
        body = await self._body(request)
        with self.manager.lease(name, version=version, label=label) as servable:
            parsed = await _off_loop_if_large(len(body), _parse, body, servable)
            signature = servable.signature(parsed.signature_name).name  # '' and 'serving_default' batch together
            outputs = await self.run(servable, signature, parsed.inputs)
            answer = await _off_loop_if_large(len(body), lambda: dumps(predict_response(parsed, outputs)))
            return answer, servable.version

    async def _score(self, request: Request, name: str, version: int | None, label: str | None) -> tuple[bytes, int]:
        body = await self._body(request)
        rows, key = _score_request(body)
        with self.manager.lease(name, version=version, label=label, key=key) as servable:
            online, signature = servable.online, servable.signature(None)
            if online is None:
                raise _Refused(
                    400,
                    f"{name} version {servable.version} has no feature map (assets.extra/featuremap.json): "
                    "score raw features only with models a WeiFlow pipeline exported; use :predict",
                    servable.version,
                )
            started = time.perf_counter()
            wanted = (*online.sources, *online.feature_map.keep)  # raw sources, and passthrough columns
            columns = {source: [row.get(source) for row in rows] for source in wanted}
            mapped = online.transform_columns(columns)  # a missing field is null, as a missing column value offline
            inputs = {}
            for input_name, info in signature.inputs.items():
                if input_name not in mapped:
                    raise _Refused(
                        500,
                        f"{name} version {servable.version}: the signature input '{input_name}' is neither a feature "
                        "nor a kept column of its feature map",
                        servable.version,
                    )
                inputs[input_name] = np.asarray(mapped[input_name], dtype=info.dtype)
            self.metrics.feature_mapping.labels(name).observe(time.perf_counter() - started)
            outputs = await self.run(servable, signature.name, inputs)
            scores = _scores(outputs)
            return orjson.dumps({"scores": scores, "model_version": str(servable.version)}), servable.version

    async def live(self, request: Request) -> Response:
        return Response(b'{"live": true}', media_type=_JSON)

    async def ready(self, request: Request) -> Response:
        ready = self.manager.ready()
        return Response(orjson.dumps({"ready": ready}), status_code=200 if ready else 503, media_type=_JSON)

    async def prometheus(self, request: Request) -> Response:
        return Response(self.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def openapi(self, request: Request) -> Response:
        return Response(description_bytes(), media_type=_JSON)


LARGE_BODY_BYTES = 256 * 1024  # parsing and answering a body this large would hold the event loop for ms


async def _off_loop_if_large(size: int, work: Callable[..., Any], *args: Any) -> Any:
    """``work(*args)``, in a thread when the body is large: every other request waits while the loop works."""
    if size > LARGE_BODY_BYTES:
        return await run_in_threadpool(work, *args)
    return work(*args)


def _parse(body: bytes, servable: Servable) -> Any:
    try:
        return parse_predict(body, servable.signature)
    except RequestError:
        raise
    except (RecursionError, ValueError) as exc:  # nesting deeper than the parser or NumPy takes
        raise RequestError(f"the request cannot be read: {type(exc).__name__}: {exc}") from None


async def _routing_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 and 405 in TensorFlow Serving's error shape, not as text: clients and the OpenAPI
    description expect ``{"error": ...}`` from every answer. A model path the router cannot match (a newline
    in it: ``{path:path}`` stops there) is malformed, as models() answers for every other one."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404 and request.url.path.startswith("/v1/models/"):
        return _error(400, f"Malformed request: {request.method} {request.url.path}")
    response = _error(exc.status_code, exc.detail)
    response.headers.update(exc.headers or {})  # a 405's Allow
    return response


def _close_later(batcher: Batcher) -> None:
    """Drain and close ``batcher`` on a thread of its own: closing waits for its queue (up to 30 s), and the
    caller is the event loop or the manager's poll thread, neither of which may wait that long."""
    threading.Thread(target=batcher.close, kwargs={"drain": True}, name=f"close {batcher!r}", daemon=True).start()


def _rows(inputs: Mapping[str, np.ndarray]) -> int:
    first = next(iter(inputs.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1


def _score_request(body: bytes) -> tuple[list[dict[str, Any]], str | None]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"JSON Parse error: {exc}") from None
    if not isinstance(document, dict):
        raise RequestError('a :score request is an object: {"instances": [{"field": value, ...}, ...], "key": "..."}')
    unknown = sorted(set(document) - {"instances", "key"})
    if unknown:
        raise RequestError(f"unknown field(s) {', '.join(unknown)} in a :score request (instances, key)")
    rows = document.get("instances")
    if not isinstance(rows, list) or not rows:
        raise RequestError("'instances' must be a non-empty list of objects (one per row of raw features)")
    if len(rows) > MAX_SCORE_ROWS:
        raise RequestError(f"'instances' holds {len(rows)} rows; send at most {MAX_SCORE_ROWS} per request")
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise RequestError(f"instances[{index}] is not an object of raw feature values")
    key = document.get("key")
    if key is not None and (not isinstance(key, str) or len(key) > 1024):
        raise RequestError("'key' must be a string of at most 1024 characters (it picks the version)")
    return rows, key


def _scores(outputs: Mapping[str, np.ndarray]) -> list[float | None]:
    """The model's score per row: ``probability`` when it has one (WeiFlow's exports do), else its only output."""
    if "probability" in outputs:
        values = outputs["probability"]
    elif len(outputs) == 1:
        values = next(iter(outputs.values()))
    else:
        raise RequestError(
            f"the model has outputs {', '.join(sorted(outputs))} and none is 'probability'; use :predict"
        )
    flat = np.asarray(values, dtype=np.float64).reshape(len(values), -1)[:, 0]
    return [float(v) if math.isfinite(v) else None for v in flat.tolist()]


def create_app(service: PredictionService) -> Starlette:
    """The ASGI app over ``service``: the models load at startup, before the first request is taken."""

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(service.start)
        try:
            yield
        finally:
            await run_in_threadpool(service.stop)

    routes = [
        Route("/v2/health/live", service.live, methods=["GET"]),
        Route("/v2/health/ready", service.ready, methods=["GET"]),
        Route("/monitoring/prometheus/metrics", service.prometheus, methods=["GET"]),
        Route(DESCRIPTION_PATH, service.openapi, methods=["GET"]),
        Route("/v1/models/{path:path}", service.models, methods=["GET", "POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _routing_error})
    app.state.service = service
    return app
