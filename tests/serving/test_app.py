"""The HTTP layer alone, over a stand-in model (no TensorFlow): a full batching queue answers 429 at once,
a failing model 500 while the service keeps answering, bodies are bounded, paths are TensorFlow Serving's."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np
import pytest

from weiflow.serving.app import PredictionService, create_app
from weiflow.serving.config import BatchingParameters
from weiflow.serving.manager import ModelNotFound
from weiflow.serving.servable import Signature, TensorInfo

SIGNATURE = Signature(
    "serving_default",
    "tensorflow/serving/predict",
    {"x": TensorInfo("x", np.dtype(np.float32), (None,))},
    {"y": TensorInfo("y", np.dtype(np.float32), (None,))},
)


class StandIn:
    """A servable computing y = 2x, which can be held (``gate``) or made to fail."""

    model, version, online, load_seconds = "m", 1, None, 0.1

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail = False

    def signature(self, name: str | None = None) -> Signature:
        return SIGNATURE

    def run(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.entered.set()
        self.gate.wait(10)
        if self.fail:
            raise RuntimeError("the model broke")
        return {"y": inputs["x"] * 2}


class OneModel:
    """The manager's interface over one stand-in version."""

    def __init__(self, servable: StandIn) -> None:
        self.servable = servable

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def ready(self) -> bool:
        return True

    def known(self, model: str) -> bool:
        return model == "m"

    @contextmanager
    def lease(self, model: str, **_pins: Any) -> Iterator[StandIn]:
        if model != "m":
            raise ModelNotFound(f"Servable not found for request: Latest({model})")
        yield self.servable


def client(service: PredictionService) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(service)), base_url="http://serve")


def test_a_full_batching_queue_answers_429_at_once_and_the_rest_are_scored() -> None:
    servable = StandIn()
    params = BatchingParameters(max_batch_size=1, max_enqueued_batches=1, num_batch_threads=1)
    service = PredictionService(OneModel(servable), batching=params)  # type: ignore[arg-type]

    async def scenario() -> list[httpx.Response]:
        async with client(service) as http:
            servable.gate.clear()
            body = {"instances": [1.0]}
            running = asyncio.create_task(http.post("/v1/models/m:predict", json=body))
            await asyncio.to_thread(servable.entered.wait, 10)  # one batch runs and holds the thread
            queued = asyncio.create_task(http.post("/v1/models/m:predict", json=body))  # fills the queue
            await asyncio.sleep(0.05)
            refused = await http.post("/v1/models/m:predict", json=body)  # no room: refused, not queued
            servable.gate.set()
            return [await running, await queued, refused]

    running, queued, refused = asyncio.run(scenario())
    assert (running.status_code, queued.status_code) == (200, 200)
    assert running.json() == {"predictions": [2.0]}
    assert refused.status_code == 429 and "queue" in refused.json()["error"]


def test_a_failing_model_is_a_500_and_the_service_answers_on() -> None:
    servable = StandIn()
    service = PredictionService(OneModel(servable))  # type: ignore[arg-type]

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with client(service) as http:
            servable.fail = True
            failed = await http.post("/v1/models/m:predict", json={"instances": [1.0]})
            servable.fail = False
            return failed, await http.post("/v1/models/m:predict", json={"instances": [3.0]})

    failed, fine = asyncio.run(scenario())
    assert failed.status_code == 500 and "the model broke" in failed.json()["error"]
    assert fine.status_code == 200 and fine.json() == {"predictions": [6.0]} and fine.headers["X-Model-Version"] == "1"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/v1/models/nope:predict", 404),
        ("POST", "/v1/models/m:explode", 400),  # TensorFlow Serving: "Malformed request"
        ("GET", "/v1/models/m/versions/x", 400),
        ("POST", "/v1/models/m:regress", 400),
        ("POST", "/v1/models/m:score", 400),  # no feature map: use :predict
    ],
)
def test_paths_answer_tensorflow_servings_errors(method: str, path: str, status: int) -> None:
    service = PredictionService(OneModel(StandIn()))  # type: ignore[arg-type]

    async def call() -> httpx.Response:
        async with client(service) as http:
            return await http.request(method, path, json={"instances": [{"a": 1}]})

    answer = asyncio.run(call())
    assert answer.status_code == status and set(answer.json()) == {"error"}, answer.text


def test_bodies_over_the_limit_are_413_declared_or_streamed() -> None:
    service = PredictionService(OneModel(StandIn()), max_request_bytes=1024)  # type: ignore[arg-type]

    async def chunks() -> Any:
        for _ in range(8):
            yield b" " * 512

    async def calls() -> tuple[httpx.Response, httpx.Response]:
        async with client(service) as http:
            declared = await http.post("/v1/models/m:predict", content=b" " * 4096)
            streamed = await http.post("/v1/models/m:predict", content=chunks())
            return declared, streamed

    declared, streamed = asyncio.run(calls())
    assert declared.status_code == 413 and streamed.status_code == 413


def test_made_up_model_names_do_not_grow_the_metrics() -> None:
    service = PredictionService(OneModel(StandIn()))  # type: ignore[arg-type]

    async def calls() -> bytes:
        async with client(service) as http:
            for i in range(50):
                await http.get(f"/v1/models/scan{i}")
            return (await http.get("/monitoring/prometheus/metrics")).content

    text = asyncio.run(calls()).decode()
    assert "scan" not in text and 'model="_unknown"' in text


def test_one_bad_request_in_a_batch_fails_alone() -> None:
    servable = StandIn()
    real_run = servable.run

    def picky(signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if (inputs["x"] < 0).any():
            raise ValueError("x must not be negative")  # one client's bad input
        return real_run(signature, inputs)

    servable.run = picky  # type: ignore[method-assign]
    params = BatchingParameters(max_batch_size=8, batch_timeout_micros=200_000, num_batch_threads=1)
    service = PredictionService(OneModel(servable), batching=params)  # type: ignore[arg-type]

    async def calls() -> list[httpx.Response]:
        async with client(service) as http:
            bodies = [{"instances": [1.0]}, {"instances": [-1.0]}, {"instances": [2.0]}]
            return list(await asyncio.gather(*(http.post("/v1/models/m:predict", json=b) for b in bodies)))

    good, bad, other = asyncio.run(calls())
    assert good.json() == {"predictions": [2.0]} and other.json() == {"predictions": [4.0]}
    assert bad.status_code == 500 and "negative" in bad.json()["error"]
