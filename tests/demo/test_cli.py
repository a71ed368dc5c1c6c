"""``weiflow demo data`` as users call it: exit codes, messages that name the flag, where the data lands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from weiflow.cli import main
from weiflow.demo.data import GENERATOR_REPORT
from weiflow.storage import is_complete


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        code = main(["demo", *args])
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_data_writes_under_storage_by_default(capsys: pytest.CaptureFixture[str], isolated_var: Path) -> None:
    code, out, err = run(capsys, "data", "--rows", "3000", "--day", "2026-11-03", "--seed", "5")
    assert code == 0, err
    target = isolated_var / "storage" / "feed" / "impressions" / "2026-11-03"
    assert is_complete(str(target)) and pq.read_table(target).num_rows == 3000
    assert out == ""
    assert "3,000 impressions of 2026-11-03 (seed 5)" in err and str(target) in err and "Bayes-optimal AUC 0." in err
    report = json.loads((target / GENERATOR_REPORT).read_text())
    assert report["seed"] == 5 and report["day"] == "2026-11-03" and report["uri"].endswith("2026-11-03")


def test_data_json_and_out(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_uri = f"file://{tmp_path}/events"
    code, out, _ = run(
        capsys, "data", "--rows", "2000", "--day", "2026-11-01", "--out", out_uri, "--holdout-fraction", "0.5", "--json"
    )
    assert code == 0
    report = json.loads(out)
    assert report["rows"] == 2000 and report["uri"] == out_uri and report["holdout"]["fraction"] == 0.5
    assert report == json.loads((tmp_path / "events" / GENERATOR_REPORT).read_text())
    code, again, _ = run(capsys, "data", "--rows", "2000", "--day", "2026-11-01", "--out", out_uri, "--json")
    assert code == 0 and json.loads(again)["bayes_auc"] == report["bayes_auc"]  # rewritten in place, same rows


@pytest.mark.parametrize(
    ("args", "flag", "why"),
    [
        (["--rows", "0"], "--rows", "give at least 1 row"),
        (["--rows", "-5"], "--rows", "give at least 1 row"),
        (["--rows", "many"], "--rows", "not a whole number"),
        (["--day", "2026-13-01"], "--day", "expected YYYY-MM-DD"),
        (["--day", "yesterday"], "--day", "expected YYYY-MM-DD"),
        (["--seed", "-1"], "--seed", "0 or more"),
        (["--holdout-fraction", "0"], "--holdout-fraction", "not in (0, 1]"),
        (["--holdout-fraction", "1.5"], "--holdout-fraction", "not in (0, 1]"),
        (["--holdout-fraction", "a tenth"], "--holdout-fraction", "not a number"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(
    capsys: pytest.CaptureFixture[str], isolated_var: Path, args: list[str], flag: str, why: str
) -> None:
    code, _out, err = run(capsys, "data", *args)
    assert code == 2
    assert f"argument {flag}:" in err and why in err
    assert not (isolated_var / "storage").exists()  # nothing written


def test_demo_without_action_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys)
    assert code == 0 and "usage: weiflow demo" in out and "data" in out


def test_unknown_action_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "dta")
    assert code == 2 and "invalid choice: 'dta'" in err


def test_a_foreign_directory_fails_with_exit_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "data.csv").write_text("a,b\n")
    code, _, err = run(capsys, "data", "--rows", "10", "--out", str(tmp_path / "theirs"))
    assert code == 1 and "not a WeiFlow dataset" in err


@pytest.mark.integration
def test_the_installed_command(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "weiflow", "demo", "data", "--rows", "0"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "argument --rows" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "weiflow", "demo", "data", "--rows", "500", "--out", str(tmp_path / "d"), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["rows"] == 500
