"""Schemathesis against the prediction service's OpenAPI description (issue 15): a real ``weiflow serve``
on 127.0.0.1 over a model repository holding a real SavedModel with its feature map, every operation
fuzzed over HTTP, valid and invalid requests alike.

Each generated request must get an answer within ``REQUEST_TIMEOUT_S``: never a 5xx, a declared status,
content type and headers (``X-Model-Version`` on every answer a model gave), a body matching the schema of
its status, a 4xx for a request the description says is invalid, a non-error for one it says is valid.
Afterwards the service still scores, and its log holds no traceback. About 15 s here, server start included
(``EXAMPLES`` per operation and mode, derandomized so that a failure reproduces); ``WEIFLOW_FUZZ_EXAMPLES=300``
runs about 2.5 minutes.

The description is the served one, narrowed to the model served (as the center's fuzz test narrows event
batches): its name, its label, its versions, and bodies of its signature (``age_b`` and ``city`` ids) and
feature map (``age`` a number, ``city`` a string), so that valid requests reach the model and must be
scored, not merely refused.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.fuzzing import REQUEST_TIMEOUT_S, examples_per_case, fuzz_operation
from tests.serving.test_server import MODEL, serving_version_1
from weiflow.serving.openapi import DESCRIPTION_PATH, description

pytestmark = pytest.mark.integration

EXAMPLES = examples_per_case(10)
# The ids the test model's embeddings take (8 each). An enum, not an integer range: JSON Schema counts 5.0 as an
# integer, and TensorFlow Serving refuses it for an int64 input.
IDS = {"enum": list(range(8))}

NO_INPUT = {
    "GET /v2/health/live",
    "GET /v2/health/ready",
    "GET /monitoring/prometheus/metrics",
    f"GET {DESCRIPTION_PATH}",
}


@dataclass
class Service:
    url: str
    openapi: dict[str, Any]
    log: Path


def _for_the_model(openapi: dict[str, Any], *, bodies: bool) -> dict[str, Any]:
    """The served description, its path parameters (and with ``bodies``, its bodies) narrowed to what the
    served model takes."""
    openapi = copy.deepcopy(openapi)
    narrowed = {
        "name": {"type": "string", "enum": [MODEL]},
        "version": {"type": "string", "enum": ["1", "2"]},  # 2 is not there: a 404, as valid a request
        "label": {"type": "string", "enum": ["stable"]},
    }
    for path, item in openapi["paths"].items():
        for parameter in item.get("parameters", []):
            # A status by label lists every version whatever the label (as TensorFlow Serving's): any label.
            if path != "/v1/models/{name}/labels/{label}" or parameter["name"] != "label":
                parameter["schema"] = narrowed[parameter["name"]]
    if not bodies:
        return openapi
    schemas = openapi["components"]["schemas"]
    row = {
        "type": "object",
        "required": ["age_b", "city"],
        "properties": {"age_b": IDS, "city": IDS},
        "additionalProperties": False,
    }
    column = {"type": "array", "items": IDS, "minItems": 1, "maxItems": 1}  # both the same length
    schemas["PredictRequest"]["properties"] = {
        "signature_name": {"enum": ["", "serving_default"]},
        "instances": {"type": "array", "minItems": 1, "items": row},
        "inputs": {"type": "object", "required": ["age_b", "city"], "properties": {"age_b": column, "city": column}},
    }
    raw = schemas["ScoreRequest"]["properties"]["instances"]["items"]
    raw["properties"] = {"age": {"type": ["number", "null"]}, "city": {"type": ["string", "null"]}}
    return openapi


@pytest.fixture(scope="module")
def service(built_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """``weiflow serve`` over a repository holding version 1 of the model at 100%, batching on, bodies up to
    64 KiB (so that 413 is within reach of generated bodies)."""
    root = tmp_path_factory.mktemp("fuzz-serving")
    with serving_version_1(built_models, root) as url:
        openapi = httpx.get(f"{url}{DESCRIPTION_PATH}", timeout=REQUEST_TIMEOUT_S).json()
        yield Service(url, openapi, root / "serve.log")


@pytest.fixture(scope="module")
def apis(service: Service) -> dict[GenerationMode, schemathesis.BaseSchema]:
    """Per mode, the description schemathesis generates from. Valid requests are the model's own (narrowed
    bodies), so that they must be scored; invalid ones are invalid by the description itself, which is what
    it promises to refuse (only the path parameters name the model, so that bodies are looked at)."""
    # A body over --max_request_bytes is refused too, before it is looked at.
    rejections = ["400", "404", "405", "413"]
    config = schemathesis.Config.from_dict(
        {"base-url": service.url, "checks": {"negative_data_rejection": {"expected-statuses": rejections}}}
    )
    return {
        mode: schemathesis.openapi.from_dict(
            _for_the_model(service.openapi, bodies=mode is GenerationMode.POSITIVE), config=config
        )
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    }


def _operations() -> list[str]:
    return [
        f"{method.upper()} {path}"
        for path, item in description()["paths"].items()
        for method in item
        if method in ("get", "post")
    ]


OPERATIONS = _operations()
# Refused by design, whatever the body (400): valid data cannot be accepted there.
EXCLUDED: dict[str, list[schemathesis.CheckFunction]] = {
    label: [positive_data_acceptance] for label in OPERATIONS if label.endswith((":classify", ":regress"))
}


def test_every_operation_is_fuzzed(apis: dict[GenerationMode, schemathesis.BaseSchema]) -> None:
    for api in apis.values():
        results = list(api.get_all_operations())
        assert all(isinstance(result, Ok) for result in results), results
        assert {result.ok().label for result in results if isinstance(result, Ok)} == set(OPERATIONS)


@pytest.mark.reliability(
    area="input",
    component="prediction service API",
    fault="schemathesis fuzzing from its OpenAPI description",
    proves=(
        "every generated request, valid or invalid, answered within 10 s: never a 5xx; a declared status, content "
        "type and headers; a body matching its schema; invalid requests 4xx, valid ones accepted; afterwards the "
        "service still scores and its log holds no traceback"
    ),
)
@pytest.mark.parametrize(
    ("label", "mode"),
    [(label, GenerationMode.POSITIVE) for label in OPERATIONS]
    + [(label, GenerationMode.NEGATIVE) for label in OPERATIONS if label not in NO_INPUT],
    ids=str,
)
def test_fuzz(apis: dict[GenerationMode, schemathesis.BaseSchema], label: str, mode: GenerationMode) -> None:
    method, path = label.split(" ", 1)
    operation = apis[mode][path][method]
    # Operations that take nothing, or refuse everything, say all they can in a few examples.
    examples = max(2, EXAMPLES // 4) if label in NO_INPUT or label in EXCLUDED else EXAMPLES
    fuzz_operation(operation, mode, examples=examples, excluded=EXCLUDED.get(label))


def test_the_service_still_scores_after_fuzzing(service: Service) -> None:
    answer = httpx.post(
        f"{service.url}/v1/models/{MODEL}:score",
        json={"instances": [{"age": 30, "city": "sh"}]},
        timeout=REQUEST_TIMEOUT_S,
    )
    assert answer.status_code == 200 and len(answer.json()["scores"]) == 1, answer.text
    assert httpx.get(f"{service.url}/v2/health/ready", timeout=REQUEST_TIMEOUT_S).status_code == 200
    assert "Traceback" not in service.log.read_text(errors="replace"), service.log.read_text()[-3000:]
