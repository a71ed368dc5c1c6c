"""The feed-CTR shape across engines: Spark maps raw events to TFRecord samples, TensorFlow trains on them.

The contract between the two engines is files: the TFRecord parts with their _schema.json and
the feature map beside them. This runs both sides for real.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from weiflow.config import load_settings
from weiflow.dag import compile_file
from weiflow.runtime import RunContext, run_pipeline
from weiflow.tracking import EventKind, MemoryTracker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPEC = """\
<pipeline xmlns="urn:weiflow:pipeline:1" name="ctr_e2e">
  <datasets>
    <dataset name="events"  uri="file://{events}" format="parquet" external="true"/>
    <dataset name="samples" uri="${{storage}}/samples/${{ds}}" format="tfrecord"/>
    <dataset name="holdout" uri="${{storage}}/holdout/${{ds}}" format="tfrecord"/>
    <dataset name="model"   uri="${{storage}}/model/${{run_id}}" format="savedmodel"/>
  </datasets>
  <node id="features" engine="spark">
    <module id="read"  type="read" dataset="events"/>
    <module id="feats" type="features" input="read" label="label" keep="uid">
      <feature name="age_b"    fn="piecewise"   source="age" boundaries="18,25,35,50"/>
      <feature name="city"     fn="pickcat"     source="city" top="50" min-count="2"/>
      <feature name="ctr"      fn="normalize"   source="hist_ctr" method="zscore"/>
      <feature name="age_city" fn="descartes"   sources="age_b,city"/>
      <feature name="u_item"   fn="combinehash" sources="uid,item" buckets="4096"/>
    </module>
    <module id="parts"   type="split" input="feats" ratios="0.8,0.2" names="train,holdout" seed="7"/>
    <module id="w_train" type="write" input="parts.train" dataset="samples" files="4"/>
    <module id="w_hold"  type="write" input="parts.holdout" dataset="holdout" files="1"/>
  </node>
  <node id="train" engine="tensorflow">
    <cluster ps="1" workers="2"/>
    <module id="fit"  type="train" dataset="samples" model="wide_deep" hidden-units="16"
            steps="300" batch-size="128" learning-rate="0.1"/>
    <module id="eval" type="evaluate" input="fit" dataset="holdout" metrics="auc"/>
    <module id="save" type="export" input="fit" dataset="model"/>
  </node>
</pipeline>
"""


def test_spark_features_feed_parameter_server_training(
    spark: Any, tmp_path: Path, make_spec: Callable[..., Path], isolated_var: Path
) -> None:
    rng = np.random.default_rng(3)
    rows = 20_000
    cities = [f"c{i}" for i in range(12)]
    city = rng.choice(cities, rows)
    age = rng.uniform(12, 70, rows)
    ctr = rng.exponential(0.1, rows)
    signal = np.array([cities.index(c) for c in city]) / 3.0 - 2.0 + (age > 35) * 1.0 + 5 * ctr
    label = (rng.uniform(size=rows) < 1 / (1 + np.exp(-signal))).astype(int)
    events = tmp_path / "events"
    spark.createDataFrame(
        [
            (f"u{rng.integers(500)}", f"i{rng.integers(300)}", c, float(a), float(h), int(y))
            for c, a, h, y in zip(city, age, ctr, label, strict=True)
        ],
        "uid string, item string, city string, age double, hist_ctr double, label int",
    ).write.parquet(str(events))

    tracker = MemoryTracker()
    spec = make_spec(textwrap.dedent(SPEC.format(events=events)))
    run = RunContext.create(compile_file(spec), settings=load_settings(), tracker=tracker, run_id="e2e")
    result = run_pipeline(run)
    assert result.succeeded, result.errors

    written = {e.dataset.name: e.dataset for e in tracker.events if e.kind is EventKind.DATASET_WRITTEN and e.dataset}
    assert written["samples"].format == "tfrecord" and written["samples"].files == 4
    assert (written["samples"].rows or 0) + (written["holdout"].rows or 0) == rows
    evaluated = next(e.detail for e in tracker.events if e.kind is EventKind.METRICS and e.module == "eval")
    assert evaluated["auc"] > 0.75 and evaluated["examples"] == written["holdout"].rows
    models = list((isolated_var / "storage" / "model" / "e2e" / "ctr_e2e").iterdir())
    assert len(models) == 1 and (models[0] / "assets.extra" / "featuremap.json").is_file()
