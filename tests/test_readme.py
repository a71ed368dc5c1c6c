"""The README's Quickstart in a fresh clone: `./dev demo`, then `./dev test`.

The clone is ``git clone`` of this repository's HEAD. Its ``.venv/`` is this checkout's, linked, when
the two would install the same thing (same pyproject.toml, constraints and ./dev): building a venv
from scratch is what CI's own ``./dev test`` on a clean checkout does every time, and costs 2 to 3
minutes; otherwise the first command builds the clone its own, with pip (``PIP_NO_COMPILE=1``: Python
compiles what it imports). With the link, the clone runs this checkout's installed weiflow (the same
code, when nothing is uncommitted). The environment is this process's minus anything pointing at
this checkout's virtualenv or var/.

The first command runs as written, with ``--rows 100000 --steps 3000`` after it: a quarter of the
default size (about 70 s of the demo instead of 2 minutes, 0.974 of the Bayes-optimal AUC measured),
held to a floor of 0.93; the default size and its 98% target are bench/bench_demo.py's. The second
command runs with ``PYTEST_ADDOPTS`` narrowing it to a small, fast subset: what it proves is that the
venv serves it in the clone. The whole suite is what CI runs, through ``.ci/run`` on a clean checkout.

This is the test of the main job end to end: every step of the demo, its summary, its quality, and
that the engines' own output stays out of the demo's (the demo's parts have tests of their own, quiet
mode in tests/demo/test_progress.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.integration]

QUICKSTART = ["./dev demo", "./dev test"]
SETUP_AND_DEMO_TIMEOUT_S = 1500
ROWS, STEPS = 100_000, 3000  # a quarter of the demo's default size (400k rows, 8,000 steps)
# What decides what ./dev installs: when the clone's equal this checkout's, this checkout's venv is the clone's.
INSTALL_INPUTS = ("pyproject.toml", "requirements/constraints.txt", "dev")
# Fast, and cannot reach this module: the docs' checks.
TEST_SUBSET = "-q -p no:cacheprovider tests/test_docs.py"


def quickstart_commands(readme: str) -> list[str]:
    """The commands of the code block under ``## Quickstart``, comments after ``#`` removed."""
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"^```(?:bash|sh)?\n(.*?)^```", section, re.DOTALL | re.MULTILINE)
    assert block is not None, "README.md's Quickstart has no code block"
    return [line.split("#", 1)[0].strip() for line in block.group(1).splitlines() if line.split("#", 1)[0].strip()]


def clean_env() -> dict[str, str]:
    """This process's environment without this checkout's virtualenv, or a var/ directory of its own."""
    venv = str(REPO / ".venv")
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV" and venv not in v}
    env["PATH"] = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if not p.startswith(venv))
    # The autouse fixture points WEIFLOW_VAR_DIR at the test's tmp dir: the demo must write var/ in the clone.
    for name in ("WEIFLOW_VAR_DIR", "PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST", "PYTHONPATH", "PYTHONHOME"):
        env.pop(name, None)
    return env


def run(command: str, cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


# The served model's AUC over the Bayes-optimal AUC on the same rows: 0.974 at this size (99.1% at the default size,
# bench/bench_demo.py); the floor leaves room for asynchronous training's run-to-run spread.
AUC_RATIO_FLOOR = 0.93


def check_summary(summary: dict[str, Any]) -> None:
    """What the demo's summary.json must say after a run of ``ROWS`` rows and ``STEPS`` steps."""
    assert summary["auc_ratio"] >= AUC_RATIO_FLOOR, summary
    assert 0.70 <= summary["bayes_auc"] <= 0.85
    served = summary["served"]
    assert served["rows"] == ROWS // 10 and date.fromisoformat(served["day"])  # the next day's impressions
    assert served["auc_ratio"] == pytest.approx(served["auc"] / served["bayes_auc"], abs=1e-5)
    assert 0.70 <= served["bayes_auc"] <= 0.85 and served["logloss"] < 0.45
    # The pipeline's own holdout agrees with the served figure within the holdouts' sampling noise.
    assert abs(summary["auc"] - served["auc"]) < 0.03
    curve = Path(summary["training_curve"])
    assert curve.is_file() and curve.read_bytes().startswith(b"\x89PNG")
    assert summary["model"] == "feed_ctr" and summary["version"] == 1 and summary["traffic"] == {"1": 100}
    scores = summary["prediction"]["scores"]
    assert len(scores) == len(summary["prediction"]["instances"]) == 3 and all(0 < s < 1 for s in scores)
    assert summary["endpoint"].endswith("/v1/models/feed_ctr:score")
    assert set(summary["datasets"]) == {"events", "samples", "holdout", "model"}
    assert "ttl:7" in summary["datasets"]["holdout"]["retention"]


def test_readme_quickstart_is_two_commands() -> None:
    assert quickstart_commands((REPO / "README.md").read_text(encoding="utf-8")) == QUICKSTART


def test_quickstart_in_a_fresh_clone(tmp_path: Path) -> None:
    clone = tmp_path / "weiflow"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, capture_output=True, timeout=120)
    demo, test = quickstart_commands((clone / "README.md").read_text(encoding="utf-8"))
    assert [demo, test] == QUICKSTART
    venv = REPO / ".venv"
    if (venv / "bin" / "python").exists() and all(
        (clone / name).read_bytes() == (REPO / name).read_bytes() for name in INSTALL_INPUTS
    ):
        (clone / ".venv").symlink_to(venv)
    # pip need not byte-compile the 2.8 GB it installs (a minute of CPU here): Python compiles what it imports.
    env = {**clean_env(), "PIP_NO_COMPILE": "1"}

    done = run(f"{demo} --rows {ROWS} --steps {STEPS}", clone, env, SETUP_AND_DEMO_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-6000:]
    assert (clone / ".venv" / "bin" / "python").exists(), "the first command left no .venv/ in the clone"
    summary = json.loads((clone / "var" / "demo" / "summary.json").read_text())
    check_summary(summary)
    for node in ("features", "train", "deploy"):
        assert re.search(rf"\b{node}\b", done.stdout), f"no progress for node {node!r}:\n{done.stdout[-4000:]}"
    assert "Traceback" not in done.stdout, done.stdout[-6000:]
    # What Spark's JVM and TensorFlow print goes to engines.log, not between the demo's own lines (before them
    # come the venv's set-up and pip's own warnings).
    demo_output = done.stdout[done.stdout.index("1/4 generating") :]
    assert "WARN" not in demo_output and "oneDNN" not in demo_output, demo_output[:3000]
    assert Path(summary["engines_log"]).stat().st_size > 0

    tested = run(test, clone, {**env, "PYTEST_ADDOPTS": TEST_SUBSET}, 600)
    assert tested.returncode == 0, tested.stdout[-6000:]
    assert re.search(r"\b\d+ passed\b", tested.stdout), tested.stdout[-2000:]
