"""The model repository unreadable while ``weiflow serve`` serves from it.

A real server process over a WeiFlow model repository, a client loop scoring throughout: the routing
file replaced with garbage, then the model's whole directory moved away (an unmounted share, an
operator's mistake), then put back. The loaded version answers every request meanwhile, the server
says what is wrong in its log, and once the repository is back it picks up a new version.
The manager's rule is also checked alone, with a fake loader.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.serving.clients import ScoreLoop
from tests.serving.test_manager import FakeLoader
from tests.serving.test_server import MODEL, ROWS, publish, serving
from weiflow.modelrepo import ROUTING_FILE, FileRepository
from weiflow.modelrepo.contracts import MANIFEST_PATH
from weiflow.serving.config import AllVersions
from weiflow.serving.manager import AVAILABLE, ModelManager, ServedModel

ROUTING_GARBAGE = "keeping the last good routing"
UNREADABLE = "keep serving until it is readable again"


def _until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def readable_metric(url: str) -> float:
    """``weiflow_serving_repository_readable`` for the model, as Prometheus would scrape it."""
    text = httpx.get(f"{url}/monitoring/prometheus/metrics").text
    [value] = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(f'weiflow_serving_repository_readable{{model="{MODEL}"')
    ]
    return value


@pytest.mark.integration
@pytest.mark.reliability(
    area="dependency",
    component="prediction service (weiflow serve)",
    fault="model repository unreadable while serving: routing file garbage, then the model directory moved away "
    "and back",
    proves="0 failed requests under a client loop, all from the loaded version; each fault logged, the "
    "unreadable directory also as weiflow_serving_repository_readable 0; a version published after the "
    "repository is back is picked up and served",
)
def test_an_unreadable_repository_costs_no_request(built_models: Path, tmp_path: Path) -> None:
    repository = FileRepository(str(tmp_path / "models"))
    (tmp_path / "sources").mkdir()
    publish(repository, built_models, tmp_path / "sources", 100)
    model_dir = tmp_path / "models" / MODEL
    log = tmp_path / "serve.log"
    with (
        serving(log, f"--repository={repository.uri}", "--file_system_poll_wait_seconds=1") as url,
        ScoreLoop(url, MODEL, ROWS[0], workers=2) as clients,
    ):
        served = clients.served

        def serves_on(version: str) -> None:
            before = served[version]
            _until(lambda: served[version] > before + 10, f"version {version} serves on: {dict(served)}")

        serves_on("1")
        routing = model_dir / ROUTING_FILE
        good = routing.read_bytes()
        routing.write_bytes(b"\x00{not a routing file")
        _until(lambda: ROUTING_GARBAGE in log.read_text(), "the damaged routing file is reported")
        serves_on("1")
        routing.write_bytes(good)

        assert readable_metric(url) == 1.0
        model_dir.rename(tmp_path / "moved-away")
        _until(lambda: UNREADABLE in log.read_text(), "the unreadable model directory is reported")
        serves_on("1")
        status = httpx.get(f"{url}/v1/models/{MODEL}").json()["model_version_status"]
        assert [(s["version"], s["state"]) for s in status] == [("1", AVAILABLE)]
        assert readable_metric(url) == 0.0  # what an alert watches: the status above still says all is well

        (tmp_path / "moved-away").rename(model_dir)
        publish(repository, built_models, tmp_path / "sources", 100)
        _until(lambda: served["2"] > 10, f"the restored repository's new version serves: {dict(served)}")
        assert readable_metric(url) == 1.0
    assert clients.failures == []
    assert set(served) == {"1", "2"}


@pytest.mark.reliability(
    area="dependency",
    component="prediction service (model manager)",
    fault="a routed model's base path unreadable for a poll, then back",
    proves="the loaded version is neither unloaded nor closed and keeps answering; an error is logged and "
    "reported (on_readable) once; "
    "the next readable poll loads what was published meanwhile",
)
def test_the_manager_keeps_serving_through_an_unreadable_base_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = tmp_path / "models" / MODEL
    away = tmp_path / "away"

    def add_version(root: Path, version: int) -> None:
        (root / str(version) / MANIFEST_PATH).parent.mkdir(parents=True)
        (root / str(version) / "saved_model.pb").write_bytes(b"fake")
        (root / str(version) / MANIFEST_PATH).write_text("{}")

    add_version(base, 1)
    loader = FakeLoader()
    readable: list[tuple[str, bool]] = []
    manager = ModelManager(
        [ServedModel(MODEL, str(base), AllVersions(), routed=True)],
        loader=loader,
        on_readable=lambda name, ok: readable.append((name, ok)),
    )
    manager.poll_once()
    assert manager.loaded() == {MODEL: [1]}
    base.rename(away)
    manager.poll_once()
    manager.poll_once()
    assert manager.loaded() == {MODEL: [1]} and loader.closed == []
    with manager.lease(MODEL) as servable:
        assert servable.version == 1
    assert sum(UNREADABLE in r.getMessage() for r in caplog.records) == 1
    assert readable == [(MODEL, True), (MODEL, False)]  # each change once
    add_version(away, 2)  # published while the share was away
    away.rename(base)
    manager.poll_once()
    assert manager.loaded() == {MODEL: [2]}  # the newest version (nothing routed) serves again
    assert readable == [(MODEL, True), (MODEL, False), (MODEL, True)]
