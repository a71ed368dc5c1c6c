"""The prediction service's OpenAPI 3.1 description, served at ``GET /v1/openapi.json``.

Written by hand as plain dicts, not derived from the code: the app is Starlette without a schema
layer (TensorFlow Serving's request bodies are free-form JSON), so there is nothing to derive it
from. ``tests/serving/test_openapi.py`` keeps the two from drifting (every route the app answers is
described, every described operation is answered), and ``tests/serving/test_fuzz.py`` fuzzes the
service from this description, checking its answers against it.

The three ways to name what serves (latest or routed, ``/versions/{version}``, ``/labels/{label}``)
are separate paths here, as OpenAPI has no optional path segments; their operations are the same.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson

__all__ = ["DESCRIPTION_PATH", "description", "description_bytes"]

DESCRIPTION_PATH = "/v1/openapi.json"

_JSON = "application/json"
_METRICS_TYPE = "text/plain"  # with a version= parameter that follows prometheus_client's


def _path_parameter(name: str, description: str, pattern: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "pattern": pattern},
    }


# Path parameters, with the patterns app.py's path regex accepts (anything else is a 400 "Malformed request");
# no newline either: Starlette's {path:path} does not match across one.
_SEGMENT = "^[^/:\\n]+$"
_NAME = _path_parameter("name", "the model's name", _SEGMENT)
_VERSION = _path_parameter("version", "a version number, pinning it", "^[0-9]{1,18}$")
_LABEL = _path_parameter(
    "label", "a version label (stable, canary, or one set by hand), pinning the version it names", _SEGMENT
)
# (path prefix, its parameters): latest or routed, a version, a label.
_PINS = (
    ("/v1/models/{name}", [_NAME]),
    ("/v1/models/{name}/versions/{version}", [_NAME, _VERSION]),
    ("/v1/models/{name}/labels/{label}", [_NAME, _LABEL]),
)

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "description": "TensorFlow Serving's error answer",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
        "additionalProperties": False,
    },
    "ModelStatus": {
        "type": "object",
        "required": ["model_version_status"],
        "properties": {
            "model_version_status": {
                "type": "array",
                "description": "the model's versions, newest first",
                "items": {
                    "type": "object",
                    "required": ["version", "state", "status"],
                    "properties": {
                        "version": {"type": "string", "pattern": "^[0-9]+$"},
                        "state": {"enum": ["START", "LOADING", "AVAILABLE", "UNLOADING", "END"]},
                        "status": {
                            "type": "object",
                            "required": ["error_code", "error_message"],
                            "properties": {"error_code": {"type": "string"}, "error_message": {"type": "string"}},
                        },
                    },
                },
            }
        },
    },
    "ModelMetadata": {
        "type": "object",
        "required": ["model_spec", "metadata"],
        "properties": {
            "model_spec": {
                "type": "object",
                "required": ["name", "signature_name", "version"],
                "properties": {
                    "name": {"type": "string"},
                    "signature_name": {"type": "string"},
                    "version": {"type": "string", "pattern": "^[0-9]+$"},
                },
            },
            "metadata": {
                "type": "object",
                "required": ["signature_def"],
                "properties": {
                    "signature_def": {
                        "type": "object",
                        "description": "the SavedModel's SignatureDefs, as TensorFlow Serving writes them",
                        "required": ["signature_def"],
                        "properties": {"signature_def": {"type": "object"}},
                    }
                },
            },
        },
    },
    "PredictRequest": {
        "type": "object",
        "description": (
            "TensorFlow Serving's :predict body: rows (instances: one item per example, objects keyed by input "
            "name, or bare values for a one-input signature) or columns (inputs: an object keyed by input name, "
            'or a bare value or list); values typed by the signature; {"b64": "..."} for bytes'
        ),
        "properties": {
            "signature_name": {"type": "string", "description": "absent or empty: serving_default"},
            "instances": {"type": "array", "minItems": 1},
            "inputs": {},
        },
        # Exactly one of the two formats; other keys are ignored, as TensorFlow Serving ignores them.
        "oneOf": [
            {"required": ["instances"], "not": {"required": ["inputs"]}},
            {"required": ["inputs"], "not": {"required": ["instances"]}},
        ],
    },
    "PredictResponse": {
        "type": "object",
        "description": (
            "predictions for a row request, outputs for a columnar one (one output: its values; several: one "
            "object per row, or keyed by output). NaN and infinities are written as the tokens NaN, Infinity "
            "and -Infinity, as TensorFlow Serving writes them"
        ),
        "oneOf": [
            {"required": ["predictions"], "properties": {"predictions": {"type": "array"}}},
            {"required": ["outputs"]},
        ],
    },
    "ScoreRequest": {
        "type": "object",
        "required": ["instances"],
        "properties": {
            "instances": {
                "type": "array",
                "description": "raw feature rows, mapped by the version's own feature map (a missing field is null)",
                "minItems": 1,
                "maxItems": 10_000,
                "items": {"type": "object"},
            },
            "key": {
                "type": ["string", "null"],
                "maxLength": 1024,
                "description": "picks the version of a split model by its stable hash (a user stays on one); "
                "null or absent: a weighted draw by the split",
            },
        },
        "additionalProperties": False,
    },
    "ScoreResponse": {
        "type": "object",
        "required": ["scores", "model_version"],
        "properties": {
            "scores": {
                "type": "array",
                "description": "the probability per row (null where it is not finite)",
                "items": {"type": ["number", "null"]},
            },
            "model_version": {"type": "string", "pattern": "^[0-9]+$"},
        },
        "additionalProperties": False,
    },
}


def _json(schema: str, description: str, *, version_header: bool = False) -> dict[str, Any]:
    """A response whose body is ``schema`` (a component), with ``X-Model-Version`` when a version answered."""
    response: dict[str, Any] = {
        "description": description,
        "content": {_JSON: {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }
    if version_header:
        response["headers"] = {
            "X-Model-Version": {
                "description": "the version that answered",
                "required": True,
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            }
        }
    return response


def _errors(*codes: int) -> dict[str, Any]:
    """The error answers ``codes``, each TensorFlow Serving's ``{"error": "..."}``."""
    meaning = {
        400: "a bad or malformed request (the path, the body, its values against the signature, an unknown label)",
        404: "no such model, or no such version loaded",
        408: "the body did not arrive within WEIFLOW_SERVE_BODY_TIMEOUT_S (the connection is closed)",
        413: "the body is larger than --max_request_bytes (the connection is closed)",
        429: "the version's batching queue is full: retry (TensorFlow Serving answers 503)",
        500: "the model failed",
        503: "the version was unloaded under the request: retry",
    }
    return {str(code): _json("Error", meaning[code]) for code in codes}


def _call(parameters: list[dict[str, Any]], summary: str, schemas: str, answer: str) -> dict[str, Any]:
    """A POST that runs the model: its body is the ``{schemas}Request`` component, its answer ``{schemas}Response``."""
    body = {"$ref": f"#/components/schemas/{schemas}Request"}
    return {
        "parameters": parameters,
        "post": {
            "summary": summary,
            "requestBody": {"required": True, "content": {_JSON: {"schema": body}}},
            "responses": {
                "200": _json(f"{schemas}Response", answer, version_header=True),
                **_errors(400, 404, 408, 413, 429, 500, 503),
            },
        },
    }


def _model_paths(prefix: str, parameters: list[dict[str, Any]]) -> dict[str, Any]:
    pinned = "" if prefix == "/v1/models/{name}" else " (pinned)"
    refused = {"400": _json("Error", "always: this service has no such API; use :predict, or :score for raw features")}
    return {
        prefix: {
            "parameters": parameters,
            "get": {
                "summary": f"the model's status{pinned}: every version (by label: every version, as TensorFlow "
                "Serving answers)",
                "responses": {"200": _json("ModelStatus", "the status"), **_errors(400, 404)},
            },
        },
        f"{prefix}/metadata": {
            "parameters": parameters,
            "get": {
                "summary": f"the signatures of the version that serves{pinned}",
                "responses": {
                    "200": _json("ModelMetadata", "its SignatureDefs", version_header=True),
                    **_errors(400, 404),
                },
            },
        },
        f"{prefix}:predict": _call(
            parameters, f"run a signature on tensors{pinned}, as TensorFlow Serving does", "Predict", "the outputs"
        ),
        f"{prefix}:score": _call(
            parameters,
            f"score raw feature rows{pinned}, mapped by the version's feature map (WeiFlow's own)",
            "Score",
            "a score per row",
        ),
        f"{prefix}:classify": {
            "parameters": parameters,
            "post": {"summary": "TensorFlow Serving's Classify API: not supported", "responses": refused},
        },
        f"{prefix}:regress": {
            "parameters": parameters,
            "post": {"summary": "TensorFlow Serving's Regress API: not supported", "responses": refused},
        },
    }


@functools.cache
def description() -> dict[str, Any]:
    """The OpenAPI 3.1 document (shared: callers must not change it)."""
    paths: dict[str, Any] = {}
    for prefix, parameters in _PINS:
        paths.update(_model_paths(prefix, parameters))
    paths["/v2/health/live"] = {
        "get": {
            "summary": "the process answers",
            "responses": {
                "200": {
                    "description": "live",
                    "content": {
                        _JSON: {
                            "schema": {"type": "object", "required": ["live"], "properties": {"live": {"const": True}}}
                        }
                    },
                }
            },
        }
    }
    ready_schema = {"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"}}}
    paths["/v2/health/ready"] = {
        "get": {
            "summary": "every model it started with has a warm version",
            "responses": {
                "200": {"description": "ready", "content": {_JSON: {"schema": ready_schema}}},
                "503": {"description": "not yet ready", "content": {_JSON: {"schema": ready_schema}}},
            },
        }
    }
    paths["/monitoring/prometheus/metrics"] = {
        "get": {
            "summary": "the metrics, in Prometheus' text format",
            "responses": {
                "200": {"description": "the metrics", "content": {_METRICS_TYPE: {"schema": {"type": "string"}}}}
            },
        }
    }
    paths[DESCRIPTION_PATH] = {
        "get": {
            "summary": "this description",
            "responses": {"200": {"description": "OpenAPI 3.1", "content": {_JSON: {"schema": {"type": "object"}}}}},
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "weiflow serve",
            "version": "1",
            "description": (
                "TensorFlow Serving's REST API (https://www.tensorflow.org/tfx/serving/api_rest) and WeiFlow's "
                ":score of raw feature rows; docs/serving.md"
            ),
        },
        "paths": paths,
        "components": {"schemas": _SCHEMAS},
    }


@functools.cache
def description_bytes() -> bytes:
    """The document as the JSON the service answers with, built once."""
    return orjson.dumps(description())
