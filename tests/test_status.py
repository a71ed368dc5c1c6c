"""``weiflow status`` against a real control center (uvicorn in a thread on 127.0.0.1, over a SQLite file):
the tables show its runs, datasets and models; ``--json`` is the API's answers; a missing setting, a
refused token and a center that is down or silent each say what to do, within the timeout."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.center.test_browser import serving
from weiflow.center.api import create_app
from weiflow.center.db import make_engine, make_sessionmaker, migrate
from weiflow.center.ingest import ingest_events
from weiflow.center.models import Role
from weiflow.center.repository import create_token, create_user
from weiflow.center.retention import sweep
from weiflow.cli import main
from weiflow.modelrepo import Routing
from weiflow.processes import free_port
from weiflow.status import labels_text, latest_metrics, live_split
from weiflow.tracking import DatasetInfo, Event, EventKind

REPO = Path(__file__).resolve().parent.parent
MODEL = "feed_ctr"


@dataclass(frozen=True)
class Center:
    url: str
    token: str  # a viewer's: reading needs no more


def _ago(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat()


def _now() -> str:
    return _ago(0)


def run_events(run_id: str, storage: Path, *, succeeded: bool) -> list[Event]:
    """A feed_ctr run started 95 s ago, as its nodes report it: samples (ttl:1) and a model (keep-last:5) written."""
    samples = DatasetInfo("samples", f"file://{storage}/feed_ctr/samples/{run_id}", "parquet", 3_500_000, 4, 1000)
    model = DatasetInfo("model", f"file://{storage}/feed_ctr/model/{run_id}", "savedmodel", 52_000, 3)
    events = [
        Event(EventKind.RUN_STARTED, run_id, "feed_ctr", ts=_ago(95), detail={"owner": "ranking"}),
        Event(
            EventKind.DATASET_WRITTEN, run_id, "feed_ctr", "features", "write", dataset=samples,
            ts=_now(), detail={"retention": "ttl:1"},
        ),
        Event(
            EventKind.DATASET_WRITTEN, run_id, "feed_ctr", "train", "save", dataset=model,
            ts=_now(), detail={"retention": "keep-last:5"},
        ),
    ]  # fmt: skip
    if succeeded:
        events.append(Event(EventKind.RUN_SUCCEEDED, run_id, "feed_ctr", ts=_now()))
    return events


def deploy_events(run_id: str, storage: Path) -> list[Event]:
    """v1 published at 100%, then v2 as a 10% canary, as the deploy node reports each change."""
    events = []
    routing = Routing(MODEL)
    for version, traffic in ((1, 100), (2, 10)):
        routing = routing.publish(version, traffic, existing=range(1, version + 1), who="alice")
        model = {
            "name": MODEL,
            "version": version,
            "uri": f"file://{storage}/models/{MODEL}/{version}",
            "deployed": True,
            "traffic": routing.traffic[version],
            "metrics": {"auc": 0.70 + version / 100, "logloss": 0.45},
            "publisher": "alice",
        }
        events.append(
            Event(
                EventKind.METRICS, run_id, "feed_ctr", "deploy", "publish", ts=_now(),
                detail={"model": model, "action": "publish", "routing": routing.snapshot()},
            )
        )  # fmt: skip
    return events


@pytest.fixture(scope="module")
def center(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Center]:
    """Two runs of feed_ctr (the older one's samples marked for deletion by a sweep) and a model at v2 10% · v1 90%."""
    tmp = tmp_path_factory.mktemp("center")
    storage = tmp / "storage"
    engine = make_engine(f"sqlite:///{tmp / 'center.db'}")
    migrate(engine)
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        create_user(session, "vera", Role.VIEWER)
        token = create_token(session, "vera")
        result = ingest_events(session, run_events("r1", storage, succeeded=True) + deploy_events("r1", storage))
        assert result.counts()["rejected"] == 0, result.problems
    # Past r1's ttl:1, before r2 exists: r1's samples become pending-deletion, its model stays (keep-last).
    sweep(sessions, roots=[f"file://{storage}"], now=datetime.now(UTC) + timedelta(days=2))
    with sessions() as session:
        ingest_events(session, run_events("r2", storage, succeeded=False))  # still running
    with serving(create_app(sessions)) as url:
        yield Center(url, token)
    engine.dispose()


@pytest.fixture
def configured(center: Center, monkeypatch: pytest.MonkeyPatch) -> Center:
    """The settings point at the center, as weiflow.toml or the environment would."""
    monkeypatch.setenv("WEIFLOW_CENTER_URL", center.url)
    monkeypatch.setenv("WEIFLOW_CENTER_TOKEN", center.token)
    for variable in ("FORCE_COLOR", "TTY_COMPATIBLE", "COLUMNS"):  # rich would obey them over the pipe
        monkeypatch.delenv(variable, raising=False)
    return center


def status(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["status", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_tables_show_the_runs_datasets_and_model_the_center_knows(
    configured: Center, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = status(capsys)
    assert code == 0, err
    assert f"Control center {configured.url} (as vera, viewer)" in out
    lines = out.splitlines()

    def rows(*cells: str, count: int = 1) -> list[str]:
        found = [line for line in lines if all(cell in line for cell in cells)]
        assert len(found) == count, f"{count} row(s) with {cells} expected in:\n{out}"
        return found

    def row(*cells: str) -> str:
        return rows(*cells)[0]

    # Newest run first; the running one has no duration yet, the finished one its 95 s.
    assert lines.index(row("feed_ctr", "r2", "running")) < lines.index(row("feed_ctr", "r1", "succeeded", "1m 35s"))
    # Pending deletion first (with when), then the live datasets; sizes and policies as people read them.
    pending = row("samples", "ranking", "pending-deletion after", "3.3 MiB", "ttl:1")
    assert lines.index(pending) < lines.index(row("samples", "live", "ttl:1", "never read"))
    assert len(rows("model", "live", "50.8 KiB", "keep-last:5", count=2)) == 2
    assert row(MODEL, "v2 10% · v1 90%", "stable v1 · canary v2", "v2: auc 0.72 · logloss 0.45")
    assert "\x1b[" not in out  # piped: no colour codes


def test_one_section_and_limits(configured: Center, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = status(capsys, "runs", "--runs", "1")
    assert code == 0, err
    assert "Recent runs" in out and "Datasets" not in out and "Models" not in out
    assert " r2 " in out and " r1 " not in out
    assert f"showing 1; more with --runs N, or in the console: {configured.url}/runs" in out
    code, out, err = status(capsys, "datasets", "--datasets", "1")
    assert code == 0, err
    assert "pending-deletion" in out and "keep-last:5" not in out


def test_json_is_the_apis_answers(configured: Center, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = status(capsys, "--json")
    assert code == 0, err
    answers = json.loads(out)
    assert list(answers) == ["runs", "datasets", "models"]
    headers = {"Authorization": f"Bearer {configured.token}"}

    def api(path: str) -> Any:
        return httpx.get(f"{configured.url}{path}", headers=headers, timeout=5).json()

    assert answers["runs"] == api("/api/v1/runs?limit=10")["items"]
    assert answers["models"] == api("/api/v1/models")
    by_state = [api(f"/api/v1/datasets?state={s}")["items"] for s in ("pending-deletion", "live")]
    assert answers["datasets"] == by_state[0] + by_state[1]
    assert [d["state"] for d in answers["datasets"]] == ["pending-deletion", "live", "live", "live"]
    code, out, err = status(capsys, "models", "--json")
    assert json.loads(out) == {"models": answers["models"]}


def test_flags_override_the_settings_and_the_piped_command_prints_plain_text(center: Center) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "COLUMNS")}
    env.update(WEIFLOW_CENTER_URL=f"http://127.0.0.1:{free_port()}", WEIFLOW_CENTER_TOKEN="wf_not_a_token")
    proc = subprocess.run(
        [sys.executable, "-m", "weiflow", "status", "models", "--center", center.url, "--token", center.token],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "v2 10% · v1 90%" in proc.stdout and "\x1b[" not in proc.stdout


def test_no_center_configured_says_which_setting(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = status(capsys)
    assert code == 2
    assert "no control center configured" in err and "center_url" in err and "WEIFLOW_CENTER_URL" in err
    assert "--center" in err and out == ""


@pytest.mark.parametrize(("token", "says"), [("wf_wrong", "refused the token"), (None, "no API token was sent")])
def test_a_refused_token_says_401_and_how_to_fix_it(
    center: Center, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, token: str | None, says: str
) -> None:
    monkeypatch.delenv("WEIFLOW_CENTER_TOKEN", raising=False)
    code, out, err = status(capsys, "--center", center.url, *(["--token", token] if token else []))
    assert code == 2
    assert "answered 401" in err and says in err
    assert "center_token" in err and "WEIFLOW_CENTER_TOKEN" in err and "--token" in err
    assert out == ""


def test_a_center_that_is_down_is_said_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    code, _, err = status(capsys, "--center", f"http://127.0.0.1:{free_port()}")
    assert code == 1 and time.monotonic() - started < 2
    assert "not reachable" in err and "weiflow center serve" in err and "center_url" in err


def test_an_address_that_is_not_the_center_says_so(center: Center, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = status(capsys, "--center", f"{center.url}/elsewhere", "--token", center.token)
    assert code == 1
    assert "answered 404" in err and "the control center's address" in err and "center_url" in err


def test_a_center_that_never_answers_is_given_up_after_the_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as silent:  # listens, so connections succeed; nobody ever accepts or answers them
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        started = time.monotonic()
        code, _, err = status(capsys, "--center", f"http://127.0.0.1:{silent.getsockname()[1]}", "--timeout", "0.5")
        elapsed = time.monotonic() - started
    assert code == 1 and 0.4 < elapsed < 2, elapsed
    assert "did not answer within 0.5 s" in err and "--timeout" in err


def test_cells_for_models() -> None:
    assert live_split({"9": 50.0, "10": 50.0}) == "v10 50% · v9 50%"  # versions compare as numbers
    assert live_split({"1": 12.5, "2": 87.5}) == "v2 87.5% · v1 12.5%"
    assert live_split({}) == "—"
    assert labels_text({"best": 1, "canary": 3, "stable": 2}) == "stable v2 · canary v3 · best v1"
    versions = [{"version": "10", "metrics": {"auc": 0.812345}}, {"version": "9", "metrics": {}}]
    assert latest_metrics(versions) == "v10: auc 0.8123"
    assert latest_metrics([{"version": "1", "metrics": {}}]) == "v1: no metrics"
