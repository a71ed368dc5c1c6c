"""The control center down for a whole run: the run succeeds, its events wait in the spool, and
``weiflow center push`` delivers them, once, when the center is back.

Everything as users run it: ``weiflow run`` of a real pipeline (python engine) with
WEIFLOW_CENTER_URL naming a port nothing listens on, then ``weiflow center serve`` started on that
port, then ``weiflow center push``. tests/center/test_spool.py proves the spool's parts in process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from tests.center.servers import add_users, database_url
from weiflow.center.db import make_engine, make_sessionmaker
from weiflow.center.models import IngestedEvent, Role
from weiflow.processes import free_port, running_server

pytestmark = pytest.mark.integration

SPEC = Path(__file__).resolve().parents[2] / "xml_specs" / "user_activity_report.xml"
RUN_ID = "down-1"


def weiflow(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "weiflow", *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.reliability(
    area="dependency",
    component="control center",
    fault="down for a whole run (weiflow run), started afterwards",
    proves="the run succeeds with every event spooled; `weiflow center push` delivers them all; the center shows "
    "the run succeeded with exactly the run log's events, per kind; a second push sends nothing",
)
def test_a_run_with_the_center_down_is_delivered_whole_by_push(tmp_path: Path) -> None:
    with database_url("sqlite", tmp_path) as url:
        token = add_users(url, {"runtime": (Role.ADMIN, [])})["runtime"]
        center = f"http://127.0.0.1:{free_port()}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("WEIFLOW_")}
        env.update(
            WEIFLOW_VAR_DIR=str(tmp_path / "var"),
            WEIFLOW_DATABASE_URL=url,
            WEIFLOW_CENTER_URL=center,
            WEIFLOW_CENTER_TOKEN=token,
        )

        ran = weiflow("run", str(SPEC), "--ds", "2026-11-02", "--run-id", RUN_ID, env=env)
        assert ran.returncode == 0, ran.stderr[-3000:]
        assert "control center not reachable" in ran.stderr and "weiflow center push" in ran.stderr
        run_log = tmp_path / "var" / "runs" / "user_activity_report" / f"{RUN_ID}.jsonl"
        logged = [json.loads(line) for line in run_log.read_text().splitlines()]
        spool = tmp_path / "var" / "center-spool"
        spooled = sorted(spool.glob("*.json"))
        assert len(spooled) == len(logged) > 5  # every event of the run, each once
        assert {json.loads(p.read_text())["id"] for p in spooled} == {e["id"] for e in logged}

        port = center.rsplit(":", 1)[1]
        argv = [sys.executable, "-m", "weiflow", "center", "serve", "--port", port, "--workers", "1", "--sweep-every=0"]
        log = tmp_path / "center.log"
        with running_server(argv, ready_url=f"{center}/api/openapi.json", log=log, env=env, timeout_s=60):
            pushed = weiflow("center", "push", env=env)
            assert pushed.returncode == 0, pushed.stderr
            assert f"{len(logged)} event(s) delivered" in pushed.stderr
            assert list(spool.glob("*.json")) == []
            again = weiflow("center", "push", env=env)
            assert again.returncode == 0 and "0 event(s) delivered" in again.stderr, again.stderr
            runs = httpx.get(
                f"{center}/api/v1/runs", params={"pipeline": "user_activity_report"}, headers=_auth(token)
            ).json()["items"]
            assert [(r["run_id"], r["state"]) for r in runs] == [(RUN_ID, "succeeded")]
            detail = httpx.get(f"{center}/api/v1/runs/{runs[0]['id']}", headers=_auth(token)).json()
            assert detail["state"] == "succeeded"
        assert "Traceback" not in log.read_text()

        engine = make_engine(url)
        with make_sessionmaker(engine)() as session:
            kinds = dict(session.execute(select(IngestedEvent.kind, func.count()).group_by(IngestedEvent.kind)).all())
        engine.dispose()
    assert kinds == dict(Counter(e["kind"] for e in logged))  # nothing lost, nothing counted twice


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
