"""The prediction service under hostile input, over a real uvicorn on 127.0.0.1 and a stand-in model.

Injection and traversal strings in every path part (model name, version, label, verb) are 4xx, never a
5xx, never a file read; a body trickled byte by byte gets 408 once its deadline passes, and a head trickled
(or never sent) gets 408 from :mod:`weiflow.httpserver`, while other clients are answered throughout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import uvicorn

from tests.serving.test_app import OneModel, StandIn
from tests.slow_clients import assert_408_and_closed, trickling
from weiflow.httpserver import HEAD_TIMEOUT_ENV
from weiflow.processes import HTTP_PROTOCOL, free_port
from weiflow.serving.app import PredictionService, create_app
from weiflow.serving.manager import ModelManager

TIMEOUT_S = 1.0
SECRET = "root:x:0:0:not to be served"  # the test server's head and body deadlines

# What an attacker puts where a name, a number or a label goes.
HOSTILE = [
    "' OR 1=1 --",
    '"; DROP TABLE runs; --',
    "../../etc/passwd",
    "..%2f..%2fetc%2fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/etc/passwd",
    "..\\..\\windows\\win.ini",
    "m\x00.json",
    "a" * 5000,
    "١٢٣",  # Arabic-Indic digits: int() would take them
    "m/../../../etc/passwd",
    "../passwd",
    "..",
]


class Repository(OneModel):
    """Model ``m`` is the stand-in; every other name goes to a real ModelManager over a model repository
    (empty, beside a file that traversal would reach): its lookups are the ones hostile names meet."""

    def __init__(self, root: Path) -> None:
        super().__init__(StandIn())
        self.real = ModelManager.for_repository(str(root))

    def status(self, model: str, version: int | None = None) -> dict[str, Any]:
        if model == "m":
            return {"model_version_status": [{"version": "1", "state": "AVAILABLE"}]}
        return self.real.status(model, version)

    @contextmanager
    def lease(self, model: str, **pins: Any) -> Iterator[Any]:
        if model == "m":
            yield self.servable
            return
        with self.real.lease(model, **pins) as servable:
            yield servable


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("serving")
    (tmp / "models").mkdir()
    (tmp / "passwd").write_text(SECRET)  # ../passwd from the repository
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(HEAD_TIMEOUT_ENV, str(TIMEOUT_S))  # read by each connection's protocol
        manager = Repository(tmp / "models")
        service = PredictionService(manager, body_timeout_s=TIMEOUT_S)  # type: ignore[arg-type]
        port = free_port()
        config = uvicorn.Config(
            create_app(service), host="127.0.0.1", port=port, http=HTTP_PROTOCOL, log_level="warning"
        )
        runner = uvicorn.Server(config)
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while not runner.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the service did not start"
            time.sleep(0.05)
        try:
            yield base
        finally:
            runner.should_exit = True
            thread.join(10)


def paths(value: str) -> list[str]:
    part = quote(value, safe="")
    raw = value.replace("\x00", "%00")  # unquoted, as a client that does not escape sends it
    return [
        f"/v1/models/{part}",
        f"/v1/models/{part}/metadata",
        f"/v1/models/other/versions/{part}",
        f"/v1/models/other/labels/{part}",
        f"/v1/models/other/labels/{part}/metadata",
        f"/v1/models/{raw}",
        f"/v1/models/other/labels/{raw}",
    ]


@pytest.mark.reliability(
    area="input",
    component="prediction service",
    fault="SQL-injection and path-traversal strings in the model name, version and label",
    proves="4xx with TensorFlow Serving's error body, never 5xx, no file read; the service answers on",
)
@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_names_versions_and_labels_are_4xx(server: str, value: str) -> None:
    with httpx.Client(base_url=server, timeout=10) as http:
        for path in paths(value):
            for method, suffix in (("GET", ""), ("POST", ":predict"), ("POST", ":score")):
                answer = http.request(method, path + suffix, json={"instances": [1.0]})
                assert 400 <= answer.status_code < 500, (method, path, answer.status_code, answer.text[:200])
                assert "root:" not in answer.text and "[fonts]" not in answer.text  # no file's content
        ok = http.post("/v1/models/m:predict", json={"instances": [1.0]})
        assert ok.status_code == 200 and ok.json() == {"predictions": [2.0]}


@pytest.mark.reliability(
    area="input",
    component="prediction service",
    fault="slow clients: a body or a head trickled a byte a second, a connection that sends nothing",
    proves="408 and the connection closed once the deadline passes; other clients answered meanwhile",
)
@pytest.mark.parametrize(
    "head",
    [
        b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{",
        b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\nX-Slow: ",
        b"",
    ],
    ids=["body", "head", "silent"],
)
def test_slow_clients_get_408_and_hold_nothing(server: str, head: bytes) -> None:
    port = int(server.rsplit(":", 1)[1])
    with trickling(port, head, count=5) as slow, httpx.Client(base_url=server, timeout=5) as http:
        for _ in range(3):
            started = time.monotonic()
            assert http.post("/v1/models/m:predict", json={"instances": [1.0]}).status_code == 200
            assert time.monotonic() - started < 0.5
        time.sleep(TIMEOUT_S + 0.5)
        assert_408_and_closed(slow)


def test_a_kept_alive_connection_idles_past_the_head_deadline_and_serves_the_next_request(server: str) -> None:
    # The head deadline starts at a request's first byte, not at the end of the previous one: an idle
    # kept-alive connection is uvicorn's timeout_keep_alive's to close, not the head deadline's.
    with httpx.Client(base_url=server, timeout=5) as http:
        assert http.post("/v1/models/m:predict", json={"instances": [1.0]}).status_code == 200
        time.sleep(TIMEOUT_S + 0.5)
        assert http.post("/v1/models/m:predict", json={"instances": [2.0]}).json() == {"predictions": [4.0]}


# (NaN and Infinity are TensorFlow Serving's JSON, accepted; a signature name is the servable's to check.)
MALFORMED = [
    b"{",
    b"[" * 100_000,
    b'{"instances": ' + b"[" * 5_000 + b"1" + b"]" * 5_000 + b"}",
    b"\xff\xfe\x00\x00",
    b'{"instances": "x"}',
    b'{"instances": [{"x": {"b64": "!!!"}}]}',
    b'{"instances": [], "inputs": []}',
    b'{"instances": [{"age": "' + b"9" * 100_000 + b'"}], "key": 7}',
    b"null",
]


@pytest.mark.reliability(
    area="input",
    component="prediction service",
    fault="malformed bodies: broken or deeply nested JSON, bad bytes, wrong shapes and types",
    proves="400 with TensorFlow Serving's error body, never a 5xx; the service answers on",
)
@pytest.mark.parametrize("body", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_bodies_are_400(server: str, body: bytes) -> None:
    with httpx.Client(base_url=server, timeout=10) as http:
        for verb in ("predict", "score"):
            answer = http.post(f"/v1/models/m:{verb}", content=body, headers={"Content-Type": "application/json"})
            assert answer.status_code == 400 and set(answer.json()) == {"error"}, (verb, answer.text[:200])
        assert http.post("/v1/models/m:predict", json={"instances": [1.0]}).status_code == 200
