"""The search for secrets in the run's logs (tests/secrets_plugin.py) finds what it must, and fails the run."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.secrets_plugin import find_leaks, log_files


def token() -> str:
    return "wf_" + secrets.token_urlsafe(32)  # as create_token makes them


@pytest.fixture
def outside_this_run() -> Iterator[Path]:
    """A folder outside pytest's temporary directory: the leaks planted here are not this run's own."""
    with tempfile.TemporaryDirectory(prefix="weiflow-planted-leaks-") as folder:
        yield Path(folder)


def test_tokens_and_registered_secrets_are_found_in_log_files_only(outside_this_run: Path) -> None:
    tmp_path = outside_this_run
    leaked = token()
    (tmp_path / "server.log").write_text(f"started\nGET /api/v1/me Authorization: Bearer {leaked}\n")
    (tmp_path / "airflow" / "logs" / "dag_id=x").mkdir(parents=True)
    (tmp_path / "airflow" / "logs" / "dag_id=x" / "attempt=1").write_text("password=hunter2-but-long\n")
    (tmp_path / "events.jsonl").write_text('{"kind": "run.started"}\n')
    (tmp_path / "weiflow.toml").write_text(f'center_token = "{token()}"\n')  # a config file: where a token belongs
    (tmp_path / "elsewhere.log").write_text(f"{leaked}\n")
    (tmp_path / "linked.log").symlink_to(tmp_path / "elsewhere.log")  # not followed: searched once, as itself
    files = sorted(log_files([tmp_path]))
    assert [p.relative_to(tmp_path).as_posix() for p in files] == [
        "airflow/logs/dag_id=x/attempt=1",
        "elsewhere.log",
        "events.jsonl",
        "server.log",
    ]
    leaks = find_leaks(files, [("test_x (Captured log call)", f"token={leaked}")], ["hunter2-but-long"])
    assert [(Path(leak.where).name, leak.line, leak.what) for leak in leaks] == [
        ("attempt=1", 1, "registered secret #1"),
        ("elsewhere.log", 1, "a WeiFlow token"),
        ("server.log", 2, "a WeiFlow token"),
        ("test_x (Captured log call)", 1, "a WeiFlow token"),
    ]
    # Not a token: part of a longer word, or too short.
    words = [("x", f"x{leaked} {leaked}x wf_{'a' * 42} ")]
    assert find_leaks([], words, []) == []


def test_a_run_whose_test_logs_a_token_fails_and_says_where(outside_this_run: Path) -> None:
    tmp_path = outside_this_run / "project"
    tmp_path.mkdir()
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["tests.secrets_plugin"]\n')
    (tmp_path / "test_leaky.py").write_text(
        "import logging, secrets\n"
        "def test_writes_a_log(tmp_path):\n"
        "    (tmp_path / 'server.log').write_text('auth wf_' + secrets.token_urlsafe(32))\n"
        "def test_logs_a_record():\n"
        "    logging.getLogger('x').warning('auth wf_%s', secrets.token_urlsafe(32))\n"
        "def test_prints_the_new_token():\n"
        "    print('wf_' + secrets.token_urlsafe(32))  # stdout: what `center user` does, by design\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(outside_this_run / "tmp")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "3 passed" in result.stdout
    assert "found: 2. log files: 1 (0.0 MiB), captured sections: 1;" in result.stdout, result.stdout
    assert "test_leaky.py::test_logs_a_record (Captured log call):1: a WeiFlow token" in result.stdout
    assert "server.log:1: a WeiFlow token" in result.stdout
    assert "wf_" not in result.stdout.split("secrets in logs")[1]  # the report names no secret
