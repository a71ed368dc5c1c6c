"""What the fuzzing of both HTTP servers shares (tests/center/test_fuzz.py, tests/serving/test_fuzz.py).

Every response schemathesis provokes must pass :data:`CHECKS`: no 5xx, a status, content type, headers
and body that the server's own OpenAPI description allows, invalid input refused and valid input
accepted. Runs are derandomized (a failure reproduces) and bounded per request.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

__all__ = ["CHECKS", "REQUEST_TIMEOUT_S", "examples_per_case", "fuzz_operation"]

REQUEST_TIMEOUT_S = 10.0

CHECKS: list[Callable[..., Any]] = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    negative_data_rejection,
    positive_data_acceptance,
]


def examples_per_case(default: int) -> int:
    """How many requests each (operation, mode) case makes: ``WEIFLOW_FUZZ_EXAMPLES``, or ``default``."""
    return int(os.environ.get("WEIFLOW_FUZZ_EXAMPLES", str(default)))


def fuzz_operation(
    operation: Any,
    mode: GenerationMode,
    *,
    examples: int,
    checks: list[Callable[..., Any]] = CHECKS,
    excluded: list[Callable[..., Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> None:
    """``examples`` requests generated for ``operation`` (valid ones, or invalid ones), each response checked."""

    @settings(
        max_examples=examples, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(
            headers=dict(headers) if headers else None,
            checks=checks,
            excluded_checks=excluded or [],
            timeout=REQUEST_TIMEOUT_S,
        )

    fuzz()
