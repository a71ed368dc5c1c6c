"""Schemathesis against the center's OpenAPI (issue 11): a real ``weiflow center serve`` on SQLite
and PostgreSQL, every API operation fuzzed over HTTP as an admin and as a viewer.

Each generated request (valid and invalid ones alike) must get an answer within
``REQUEST_TIMEOUT_S``: never a 5xx, a declared status, content type and headers, a body matching
the schema of its status, a 4xx for a request the schema says is invalid, a non-error for one
it says is valid, and a 401 once the token is taken away. Afterwards the center still answers
every list and every run, and its log holds no traceback. A CI run is about half a minute for both
databases (``EXAMPLES``, 10, per operation and role, derandomized so a failure reproduces);
``WEIFLOW_FUZZ_EXAMPLES=200`` runs about 6 minutes (docs/center.md, Fuzzing).

The schema is the served one, event batches (``POST /api/v1/events``, whose body the center
describes from :mod:`weiflow.center.eventschema`) cut to 20 events so that examples stay quick.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import ignored_auth, negative_data_rejection

from tests.center.servers import add_users, database_url, running_center
from tests.fuzzing import CHECKS, REQUEST_TIMEOUT_S, examples_per_case, fuzz_operation
from weiflow.center.models import Role
from weiflow.tracking import DatasetInfo, Event, EventKind

pytestmark = pytest.mark.integration

EXAMPLES = examples_per_case(10)

# And a 401 once the token is taken away.
CENTER_CHECKS = [*CHECKS, ignored_auth]

OPERATIONS = [
    "GET /api/v1/me",
    "POST /api/v1/events",
    "GET /api/v1/runs",
    "GET /api/v1/runs/{run_pk}",
    "GET /api/v1/runs/{run_pk}/progress",
    "GET /api/v1/datasets",
    "GET /api/v1/datasets/{dataset_id}",
    "POST /api/v1/datasets/{dataset_id}/confirm-deletion",
    "POST /api/v1/datasets/{dataset_id}/reject-deletion",
    "POST /api/v1/datasets/{dataset_id}/pin",
    "POST /api/v1/datasets/{dataset_id}/unpin",
    "GET /api/v1/jobs",
    "GET /api/v1/models",
    "GET /api/v1/models/{name}",
    "POST /api/v1/models/{name}/promote",
    "POST /api/v1/models/{name}/rollback",
    "GET /api/v1/audit",
]

FORBIDDEN_TO_VIEWERS = {label for label in OPERATIONS if label.startswith("POST")} | {"GET /api/v1/audit"}
NO_INPUT = {"GET /api/v1/me", "GET /api/v1/jobs", "GET /api/v1/models"}

# A batch is applied event by event: an invalid event is rejected in a 200's ``problems``, the rest applied.
EXCLUDED: dict[str, list[schemathesis.CheckFunction]] = {"POST /api/v1/events": [negative_data_rejection]}


@dataclass
class Center:
    url: str
    tokens: dict[str, str]
    openapi: dict[str, Any]
    log: Path

    def headers(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}


def _seed_events() -> list[Event]:
    """Three runs, each writing a dataset, registering a model and drawing a training curve: ids the fuzzer's
    requests can hit."""
    ts = datetime.now(UTC).isoformat()
    events = []
    for i in range(3):
        run_id, pipeline, uri = f"seed{i}", f"fuzz_seed_{i}", f"file:///nonexistent/fuzz/seed{i}"
        writes = {f"out{i}": {"uri": uri, "retention": "ttl:7", "consumers": []}}
        model = {"name": f"fuzz_model_{i}", "version": "1", "deployed": True}
        events += [
            Event(EventKind.RUN_STARTED, run_id, pipeline, ts=ts, detail={"owner": "fuzz"}),
            Event(EventKind.NODE_STARTED, run_id, pipeline, node="make", ts=ts, detail={"writes": writes}),
            Event(
                EventKind.DATASET_WRITTEN,
                run_id,
                pipeline,
                node="make",
                ts=ts,
                dataset=DatasetInfo(f"out{i}", uri, "parquet", 10, 1, 1),
            ),
            Event(EventKind.METRICS, run_id, pipeline, node="make", ts=ts, detail={"model": model}),
            *(
                Event(EventKind.PROGRESS, run_id, pipeline, node="train", module="fit", attempt=1, ts=ts, detail=point)
                for point in (
                    {"step": 100 * (k + 1), "steps": 300, "worker": k % 2, "loss": 0.7 - 0.1 * k, "auc": 0.6 + 0.1 * k}
                    for k in range(3)
                )
            ),
            Event(EventKind.NODE_SUCCEEDED, run_id, pipeline, node="make", ts=ts),
            Event(EventKind.RUN_SUCCEEDED, run_id, pipeline, ts=ts),
        ]
    return events


def _with_event_body(openapi: dict[str, Any]) -> dict[str, Any]:
    """The served OpenAPI, its event batches kept small and their times often real ISO 8601 ones."""
    openapi = copy.deepcopy(openapi)
    body = openapi["paths"]["/api/v1/events"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    body["maxItems"] = 20
    # A real ISO 8601 time now and then, so that generated events get past the first check.
    body["items"]["properties"]["ts"]["format"] = "date-time"
    return openapi


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def center(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Center]:
    """A real center (1 worker, no sweeps) holding three runs; users root (admin) and vera (viewer)."""
    tmp = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    with database_url(request.param, tmp) as url:
        tokens = add_users(url, {"root": (Role.ADMIN, []), "vera": (Role.VIEWER, [])})
        with running_center(tmp, url, workers=1) as (base, _env):
            center = Center(base, tokens, httpx.get(f"{base}/api/openapi.json", timeout=10).json(), tmp / "center.log")
            events = _seed_events()
            content = "[" + ",".join(e.to_json() for e in events) + "]"
            answer = httpx.post(f"{base}/api/v1/events", content=content, headers=center.headers("root"), timeout=60)
            assert answer.status_code == 200, answer.text
            assert (answer.json()["applied"], answer.json()["rejected"]) == (len(events), 0), answer.text
            yield center


@pytest.fixture(scope="module")
def api(center: Center) -> schemathesis.BaseSchema:
    """The schema schemathesis generates requests from, sent to ``center``."""
    # The token goes with each call, never generated: a negative case leaving it out would get a 401 and no further.
    config = schemathesis.Config.from_dict({"base-url": center.url, "generation": {"with-security-parameters": False}})
    return schemathesis.openapi.from_dict(_with_event_body(center.openapi), config=config)


def test_every_operation_is_fuzzed(api: schemathesis.BaseSchema) -> None:
    results = list(api.get_all_operations())
    assert all(isinstance(result, Ok) for result in results), results
    served = {result.ok().label for result in results if isinstance(result, Ok)}
    assert served == set(OPERATIONS), "a new operation: add it to OPERATIONS (and NO_INPUT if it takes nothing)"


@pytest.mark.parametrize("user", ["root", "vera"])
@pytest.mark.parametrize(
    ("label", "mode"),
    [(label, GenerationMode.POSITIVE) for label in OPERATIONS]
    # An operation that takes nothing has no invalid request to make.
    + [(label, GenerationMode.NEGATIVE) for label in OPERATIONS if label not in NO_INPUT],
    ids=str,
)
def test_fuzz(api: schemathesis.BaseSchema, center: Center, label: str, user: str, mode: GenerationMode) -> None:
    method, path = label.split(" ", 1)
    operation = api[path][method]
    headers = center.headers(user)

    if label == "POST /api/v1/events" and user == "root":
        examples = 5 * EXAMPLES  # the widest input, and what every runtime sends
    elif label in FORBIDDEN_TO_VIEWERS and user == "vera":
        examples = max(1, EXAMPLES // 4)  # a 403 before the input is looked at
    else:
        examples = EXAMPLES

    fuzz_operation(
        operation, mode, examples=examples, checks=CENTER_CHECKS, excluded=EXCLUDED.get(label), headers=headers
    )


def test_the_center_still_answers_every_list_after_fuzzing(center: Center) -> None:
    for path in ("/api/v1/me", "/api/v1/runs", "/api/v1/datasets", "/api/v1/jobs", "/api/v1/models", "/api/v1/audit"):
        response = httpx.get(f"{center.url}{path}", headers=center.headers("root"), timeout=REQUEST_TIMEOUT_S)
        assert response.status_code == 200, (path, response.text[:500])
        json.loads(response.text)
    # Every record the fuzzing stored still loads (a page holds at most 500).
    for kind in ("runs", "datasets"):
        page = httpx.get(f"{center.url}/api/v1/{kind}?limit=500", headers=center.headers("vera"), timeout=30).json()
        for item in page["items"]:
            detail = httpx.get(
                f"{center.url}/api/v1/{kind}/{item['id']}", headers=center.headers("vera"), timeout=REQUEST_TIMEOUT_S
            )
            assert detail.status_code == 200, (item, detail.text[:500])
    tracebacks = re.findall(r"^Traceback.*?^\S.*?$", center.log.read_text(errors="replace"), re.MULTILINE | re.DOTALL)
    last_lines = sorted({traceback.splitlines()[-1] for traceback in tracebacks})
    assert not tracebacks, f"{len(tracebacks)} tracebacks in {center.log}, ending:\n" + "\n".join(last_lines)
