"""The feed-CTR generator: its columns, determinism, atomic output and the Bayes-optimal AUC it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from weiflow.demo import data
from weiflow.demo.data import COMPONENT_FEATURES, GENERATOR_REPORT, FeedModel, generate, report, write_impressions
from weiflow.demo.metrics import roc_auc
from weiflow.errors import DatasetError
from weiflow.storage import SUCCESS_MARKER, is_complete

DAY = date(2026, 11, 1)
# What xml_specs/feed_ctr.xml reads (uid, item_id, ts, label and its features' sources), and device.
SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("item_id", pa.string()),
        ("age", pa.int32()),
        ("gender", pa.string()),
        ("city", pa.string()),
        ("device", pa.string()),
        ("hist_ctr", pa.float64()),
        ("page_views", pa.int64()),
        ("ts", pa.timestamp("ms", tz="UTC")),
        ("label", pa.int32()),
    ]
)


@pytest.fixture(scope="module")
def large() -> data.Impressions:
    return generate(100_000, DAY, seed=0)


@pytest.fixture(scope="module")
def large_report(large: data.Impressions) -> dict[str, Any]:
    return report(large)


def test_schema_values_and_report_on_storage(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/impressions/{DAY}"
    summary = write_impressions(generate(20_000, DAY, seed=4), uri, run_id="r1")
    directory = tmp_path / "impressions" / str(DAY)
    assert {p.name for p in directory.iterdir()} == {GENERATOR_REPORT, SUCCESS_MARKER, "part-00000.parquet"}
    assert json.loads((directory / SUCCESS_MARKER).read_text())["rows"] == 20_000
    assert json.loads((directory / GENERATOR_REPORT).read_text()) == json.loads(json.dumps(summary))
    table = pq.read_table(directory / "part-00000.parquet")
    assert table.schema.remove_metadata() == SCHEMA
    assert table.num_rows == summary["rows"] == 20_000
    columns = table.to_pydict()
    assert set(columns["label"]) == {0, 1}
    assert sum(columns["label"]) / 20_000 == summary["positive_rate"]
    # Missing where real profiles are: some ages and genders; ids, cities and devices always there.
    assert 0 < table["age"].null_count < 1_000 and 0 < table["gender"].null_count < 2_000
    for name in ("uid", "item_id", "city", "device", "hist_ctr", "page_views", "ts", "label"):
        assert table[name].null_count == 0, name
    ages = [a for a in columns["age"] if a is not None]
    assert min(ages) >= 13 and max(ages) <= 80 and min(ages) < 18 and max(ages) >= 50  # every piecewise bucket
    assert set(columns["gender"]) == {"f", "m", None}
    assert set(columns["device"]) == {"android", "ios", "web"}
    assert len(set(columns["city"])) == 40 and len(set(columns["uid"])) > 1_500
    assert min(columns["hist_ctr"]) > 0 and max(columns["hist_ctr"]) < 1
    assert min(columns["page_views"]) >= 0 and max(columns["page_views"]) > 50 * np.median(columns["page_views"])
    stamps = columns["ts"]
    assert stamps == sorted(stamps)
    assert datetime(2026, 11, 1, tzinfo=UTC) <= stamps[0] and stamps[-1] < datetime(2026, 11, 2, tzinfo=UTC)
    assert is_complete(uri)


def test_same_seed_same_rows_other_seed_other_rows() -> None:
    first, again = generate(5_000, DAY, seed=7), generate(5_000, DAY, seed=7)
    for name in ("age", "hist_ctr", "page_views", "ts_ms", "label", "logit", "click_probability", "holdout"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name), err_msg=name)
    assert first.uid.values() == again.uid.values() and first.city.values() == again.city.values()
    other = generate(5_000, DAY, seed=8)
    assert not np.array_equal(first.label, other.label) and not np.array_equal(first.hist_ctr, other.hist_ctr)


def test_another_day_is_the_same_world() -> None:
    """Users keep their age, city and effect from day to day: yesterday's model is right today."""
    monday, tuesday = generate(5_000, DAY, seed=7), generate(5_000, date(2026, 11, 2), seed=7)
    assert not np.array_equal(monday.hist_ctr, tuesday.hist_ctr)
    for day in (monday, tuesday):
        assert (day.ts_ms // 86_400_000 == (day.day - date(1970, 1, 1)).days).all()
    profile = {}
    for day in (monday, tuesday):
        for uid, age, city, effect in zip(day.uid.codes, day.age, day.city.codes, day.components["user"], strict=True):
            assert profile.setdefault(int(uid), (int(age), int(city), float(effect))) == (age, city, effect)


def test_the_logit_is_its_parts_and_the_probability_integrates_the_noise(large: data.Impressions) -> None:
    assert large.components.keys() == COMPONENT_FEATURES.keys()
    np.testing.assert_allclose(large.logit, large.model.intercept + sum(large.components.values()))
    # E[sigmoid(logit + noise)]: between sigmoid(logit) and 1/2, by Monte Carlo within its error.
    rng = np.random.default_rng(1)
    rows = rng.choice(large.rows, 200, replace=False)
    draws = large.logit[rows, None] + rng.normal(0, large.model.noise_sd, (200, 20_000))
    np.testing.assert_allclose(large.click_probability[rows], (1 / (1 + np.exp(-draws))).mean(axis=1), atol=3e-3)
    # The labels follow it: observed and expected clicks agree within sampling error.
    expected = large.click_probability.sum()
    assert abs(large.label.sum() - expected) < 4 * np.sqrt(
        (large.click_probability * (1 - large.click_probability)).sum()
    )


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_bayes_auc_between_070_and_085(seed: int) -> None:
    summary = report(generate(100_000, DAY, seed=seed))
    assert 0.70 <= summary["bayes_auc"] <= 0.85
    assert 0.70 <= summary["holdout"]["bayes_auc"] <= 0.85
    assert abs(summary["holdout"]["bayes_auc"] - summary["bayes_auc"]) < 4 * summary["holdout"]["bayes_auc_se"]
    assert 0.08 < summary["positive_rate"] < 0.16
    assert summary["bayes_logloss"] < 0.36  # a constant at the positive rate scores about 0.37


def test_holdout_is_the_requested_share(large: data.Impressions, large_report: dict[str, Any]) -> None:
    holdout = large_report["holdout"]
    assert holdout["rows"] == int(large.holdout.sum())
    assert abs(holdout["rows"] - 10_000) < 400
    assert holdout["bayes_auc"] == pytest.approx(roc_auc(large.label[large.holdout], large.logit[large.holdout]))
    half = generate(10_000, DAY, seed=0, holdout_fraction=0.5)
    assert 4_700 < half.holdout.sum() < 5_300


def test_every_part_of_the_logit_matters(large_report: dict[str, Any]) -> None:
    """Without any one part (a model lacking that feature function) the best AUC drops visibly."""
    bayes = large_report["bayes_auc"]
    drops = {name: bayes - part["auc_without"] for name, part in large_report["components"].items()}
    assert set(drops) == set(COMPONENT_FEATURES)
    for name, drop in drops.items():
        assert drop > 0.004, f"without {name} the Bayes AUC drops by only {drop:.4f}"
    for name, part in large_report["components"].items():
        assert part["logit_variance"] > 0.05, name


def test_the_non_linear_parts_are_not_linear(large: data.Impressions) -> None:
    """Age steps up and down (no slope fits it); the age x city cells carry nothing of age or city alone."""
    present = large.age >= 0
    age, effect = large.age[present].astype(float), large.components["age"][present]
    slope_fit = np.polyval(np.polyfit(age, effect, 1), age)
    assert np.var(effect - slope_fit) > 0.8 * np.var(effect)
    interaction = large.components["age_city"]
    for codes in (large.city.codes, np.searchsorted([18, 25, 35, 50], np.where(present, large.age, 999), "right")):
        for code in np.unique(codes):
            assert abs(interaction[codes == code].mean()) < 0.1


def test_hist_ctr_and_page_views_are_heavy_tailed(large: data.Impressions) -> None:
    for values in (large.hist_ctr, large.page_views.astype(float)):
        assert np.mean(values > np.mean(values) + 3 * np.std(values)) > 0.005  # a normal has 0.0013 there


def test_a_failed_write_leaves_nothing_and_keeps_the_old_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = str(tmp_path / "impressions")
    write_impressions(generate(1_000, DAY, seed=1), uri, run_id="first")
    before = pq.read_table(uri).to_pydict()

    def write_half_then_fail(table: Any, where: Path, **kwargs: Any) -> None:
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_impressions(generate(2_000, DAY, seed=2), uri, run_id="second")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["impressions"]  # no staging directory left behind
    assert pq.read_table(uri).to_pydict() == before
    assert json.loads((tmp_path / "impressions" / SUCCESS_MARKER).read_text())["run_id"] == "first"

    fresh = tmp_path / "fresh"
    monkeypatch.setattr(pq, "write_table", write_half_then_fail)
    with pytest.raises(OSError):
        write_impressions(generate(1_000, DAY, seed=2), str(fresh), run_id="third")
    assert not fresh.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["impressions"]


def test_someone_elses_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not a WeiFlow dataset"):
        write_impressions(generate(100, DAY), str(tmp_path / "theirs"), run_id="r")
    assert (tmp_path / "theirs" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rows": 0}, "rows must be positive"),
        ({"holdout_fraction": 0.0}, "holdout fraction"),
        ({"holdout_fraction": 1.5}, "holdout fraction"),
        ({"model": FeedModel(age_effects=(0.1, 0.2))}, "one effect per age bucket"),
        ({"model": FeedModel(devices=("ios",))}, "device"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate(**{"rows": 100, **kwargs})


def test_a_few_rows_report_no_auc_rather_than_fail() -> None:
    summary = report(generate(3, DAY, seed=0))  # three rows, none clicked
    assert summary["rows"] == 3 and summary["positive_rate"] == 0.0
    assert summary["bayes_auc"] is None and summary["holdout"]["bayes_auc_se"] is None
    assert all(part["auc_without"] is None for part in summary["components"].values())


def test_generating_imports_no_engine_and_no_pyarrow() -> None:
    code = (
        "import sys; from weiflow.demo import generate, report; report(generate(1000));"
        "print(sorted(m for m in sys.modules if m.startswith(('pyarrow', 'pyspark', 'tensorflow', 'sklearn'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
