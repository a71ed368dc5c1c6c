"""The prediction service's OpenAPI description and its app cannot drift apart: every route the app
answers is described, with its methods, and every described operation is answered (not a "Malformed
request", the router's 404 or 405), over a stand-in model (no TensorFlow); the document itself is valid
OpenAPI 3.1 and is what ``GET /v1/openapi.json`` answers."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import jsonschema
import schemathesis
from schemathesis.core.result import Ok
from starlette.routing import Route

from tests.serving.test_app import OneModel, StandIn
from weiflow.serving.app import REFUSED_VERBS, SERVED_VERBS, PredictionService, create_app
from weiflow.serving.manager import ModelNotFound, UnknownVersionLabel
from weiflow.serving.openapi import DESCRIPTION_PATH, description

MODELS_ROUTE = "/v1/models/{path:path}"  # the app's one route for every model path; it dispatches by regex
PINS = ("/v1/models/{name}", "/v1/models/{name}/versions/{version}", "/v1/models/{name}/labels/{label}")
# What may follow a model path: TensorFlow Serving's APIs, and some it does not have, so that a new branch in
# PredictionService.models answering one of them shows up here.
SUFFIXES = ("", "/metadata", ":predict", ":score", ":classify", ":regress", ":multiinference", ":explain", ":status")


class Labelled(OneModel):
    """Model ``m``, version 1, labelled ``stable``: every pin of the description finds it."""

    def status(self, model: str, version: int | None = None) -> dict[str, Any]:
        if model != "m" or version not in (None, 1):
            raise ModelNotFound(f"Could not find any versions of model {model}")
        return {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {}}]}

    @contextmanager
    def lease(self, model: str, **pins: Any) -> Iterator[StandIn]:
        if pins.get("label") not in (None, "stable"):
            raise UnknownVersionLabel(f"Unrecognized servable version label: {pins['label']}")
        with super().lease(model) as servable:
            yield servable


def _answers(requests: list[tuple[str, str]]) -> list[httpx.Response]:
    service = PredictionService(Labelled(StandIn()))  # type: ignore[arg-type]

    async def send() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as http:
            return [
                await http.request(method, path, json={"instances": [1.0]} if method == "POST" else None)
                for method, path in requests
            ]

    return asyncio.run(send())


def _filled(template: str) -> str:
    return template.replace("{name}", "m").replace("{version}", "1").replace("{label}", "stable")


def _recognized(response: httpx.Response) -> bool:
    """Whether the app has an operation there: not the router's 404 or 405, not models()' "Malformed request"."""
    assert response.headers.get("content-type") == "application/json", response.text  # even the router's errors
    return response.status_code not in (404, 405) and not response.json().get("error", "").startswith("Malformed")


def _described() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in description()["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete", "head", "options")
    }


def test_the_description_is_valid_openapi_3_1_and_schemathesis_reads_every_operation() -> None:
    document = description()
    assert document["openapi"] == "3.1.0"
    for schema in document["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)  # raises, naming the fault
    results = list(schemathesis.openapi.from_dict(document).get_all_operations())
    assert results and all(isinstance(result, Ok) for result in results), results
    assert {tuple(r.ok().label.split(" ", 1)) for r in results if isinstance(r, Ok)} == _described()


def test_every_route_of_the_app_is_described_and_every_described_operation_is_answered() -> None:
    app = create_app(PredictionService(Labelled(StandIn())))  # type: ignore[arg-type]
    routes = {route.path: route for route in app.routes if isinstance(route, Route)}
    assert len(routes) == len(app.routes), "a route that is not a plain Route: describe it and extend this test"
    described = _described()
    # The plain routes: each described with exactly its methods (Starlette adds HEAD to every GET route).
    plain = {(method, path) for path, route in routes.items() if path != MODELS_ROUTE for method in route.methods or ()}
    assert {item for item in plain if item[0] != "HEAD"} == {item for item in described if "/v1/models/" not in item[1]}
    # The model paths behind the catch-all: probed, every pin with every suffix and both methods.
    assert MODELS_ROUTE in routes
    probes = [(method, f"{pin}{suffix}") for pin in PINS for suffix in SUFFIXES for method in ("GET", "POST")]
    answers = _answers([(method, _filled(template)) for method, template in probes])
    answered = {probe for probe, answer in zip(probes, answers, strict=True) if _recognized(answer)}
    assert answered == {item for item in described if "/v1/models/" in item[1]}
    verbs = {match[1] for _, path in described if (match := re.search(r":([a-z]+)$", path))}
    assert verbs == {*SERVED_VERBS, *REFUSED_VERBS}
    # And the plain routes answer too.
    for (method, path), answer in zip(
        sorted(plain - {(m, p) for m, p in plain if m == "HEAD"}),
        _answers(sorted((m, p) for m, p in plain if m != "HEAD")),
        strict=True,
    ):
        assert answer.status_code == 200, (method, path, answer.text)


def test_the_app_serves_the_description() -> None:
    [answer] = _answers([("GET", DESCRIPTION_PATH)])
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    assert answer.json() == description()


def test_the_routers_own_errors_are_json_errors_too() -> None:
    newline, unknown, wrong_method = _answers(
        [("GET", "/v1/models/m%0Ax"), ("GET", "/v1/nothing"), ("POST", "/v2/health/live")]
    )
    # {path:path} does not match across a newline: such a model path is malformed, as models() says of others.
    assert newline.status_code == 400 and newline.json()["error"].startswith("Malformed request"), newline.text
    assert unknown.status_code == 404 and unknown.json() == {"error": "Not Found"}
    assert wrong_method.status_code == 405 and wrong_method.json() == {"error": "Method Not Allowed"}
    # Starlette lists the allowed methods from a set: their order changes from run to run.
    assert {m.strip() for m in wrong_method.headers["allow"].split(",")} == {"GET", "HEAD"}
