"""The feed-CTR example end to end, small: Spark features -> PS training -> evaluate -> gated gray release.

A twin of ``xml_specs/feed_ctr.xml``: the first run goes through every node and its model goes
fully live; a second run retrains on the same day's samples (its training and deploy nodes, to
keep the test short) and its model gets 10% beside the first; then promote and rollback move the
traffic as people on call would.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from weiflow.center.db import make_engine, make_sessionmaker, migrate
from weiflow.center.ingest import ingest_events
from weiflow.center.repository import list_models
from weiflow.config import load_settings
from weiflow.dag import compile_file
from weiflow.features.online import OnlineFeatures
from weiflow.modelrepo import FileRepository, promote, rollback
from weiflow.runtime import RunContext, run_node, run_pipeline
from weiflow.tracking import EventKind, MemoryTracker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPEC = """\
<pipeline xmlns="urn:weiflow:pipeline:1" name="feed_ctr" owner="ranking">
  <datasets>
    <dataset name="events"  uri="file://EVENTS" format="parquet" external="true"/>
    <dataset name="samples" uri="${storage}/feed_ctr/samples/${ds}" format="tfrecord"/>
    <dataset name="holdout" uri="${storage}/feed_ctr/holdout/${ds}" format="tfrecord"/>
    <dataset name="model"   uri="${storage}/feed_ctr/model/${run_id}" format="savedmodel"/>
  </datasets>
  <node id="features" engine="spark">
    <conf name="spark.sql.shuffle.partitions" value="2"/>
    <module id="read"  type="read" dataset="events"/>
    <module id="clean" type="filter" input="read" condition="label IS NOT NULL AND uid IS NOT NULL"/>
    <module id="feats" type="features" input="clean" label="label" keep="uid">
      <feature name="age_b"    fn="piecewise"   source="age" boundaries="18,25,35,50"/>
      <feature name="city"     fn="pickcat"     source="city" top="50" min-count="2"/>
      <feature name="ctr"      fn="normalize"   source="hist_ctr" method="zscore"/>
      <feature name="age_city" fn="descartes"   sources="age_b,city"/>
      <feature name="u_item"   fn="combinehash" sources="uid,item_id" buckets="1024"/>
    </module>
    <module id="parts"     type="split" input="feats" ratios="0.8,0.2" names="train,holdout" seed="7"/>
    <module id="w_train"   type="write" input="parts.train"   dataset="samples" files="1"/>
    <module id="w_holdout" type="write" input="parts.holdout" dataset="holdout" files="1"/>
  </node>
  <node id="train" engine="tensorflow">
    <cluster ps="1" workers="1" backend="local"/>
    <module id="fit"  type="train" dataset="samples" model="wide_deep" hidden-units="8"
            steps="40" batch-size="128" learning-rate="0.1"/>
    <module id="eval" type="evaluate" input="fit" dataset="holdout" metrics="auc,logloss"/>
    <module id="save" type="export" input="fit" dataset="model"/>
  </node>
  <node id="deploy" engine="deploy">
    <module id="pub" type="publish" dataset="model" model-name="feed_ctr" traffic="10" require="auc>=0.5"/>
  </node>
</pipeline>
"""


def write_events(path: Path, rows: int = 2000) -> None:
    """Raw impressions whose label depends on city, age and the historical CTR."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(5)
    cities = [f"c{i}" for i in range(8)]
    city = rng.choice(cities, rows)
    age = rng.uniform(12, 70, rows)
    ctr = rng.exponential(0.1, rows)
    signal = np.array([cities.index(c) for c in city]) / 2.0 - 2.0 + (age > 35) * 1.0 + 5 * ctr
    label = (rng.uniform(size=rows) < 1 / (1 + np.exp(-signal))).astype(np.int32)
    path.mkdir(parents=True)
    table = pa.table(
        {
            "uid": [f"u{i}" for i in range(rows)],  # unique: a sample row finds its raw row by uid
            "item_id": [f"i{i}" for i in rng.integers(200, size=rows)],
            "city": city.tolist(),
            "age": age,
            "hist_ctr": ctr,
            "label": label,
        }
    )
    pq.write_table(table, path / "part-0.parquet")


def spark_samples(directory: Path) -> dict[str, dict[str, float]]:
    """uid -> the ids and values the Spark features module wrote for that row (its TFRecord files)."""
    import tensorflow as tf

    rows = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith(("_", "."))):
        for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            features = tf.train.Example.FromString(record).features.feature
            row = {
                name: (f.int64_list.value or f.float_list.value or f.bytes_list.value)[0]
                for name, f in features.items()
            }
            rows[row.pop("uid").decode()] = row
    return rows


def served_exactly_as_trained(repo: FileRepository, events: Path, samples: Path, work: Path) -> None:
    """Raw rows through `weiflow serve`'s :score score as the model scores the ids Spark wrote for them."""
    import httpx
    import pyarrow.parquet as pq

    from tests.serving.test_server import serving

    written = spark_samples(samples)
    raw = [row for row in pq.read_table(events).to_pylist() if row["uid"] in written][:40]
    features = repo.feature_map("feed_ctr", 1)
    online = OnlineFeatures(features)
    mapped = online.transform_columns({s: [row[s] for row in raw] for s in online.sources})
    names = [f.name for f in features.features]
    for name in names:  # the same ids (and normalized values) as Spark's, row by row
        assert mapped[name].tolist() == pytest.approx([written[row["uid"]][name] for row in raw], rel=1e-6), name
    with serving(work / "serve.log", f"--repository={repo.uri}") as url:
        model = f"{url}/v1/models/feed_ctr/versions/1"
        scored = httpx.post(f"{model}:score", json={"instances": raw}, timeout=30)
        assert scored.status_code == 200, scored.text
        ids = [{name: written[row["uid"]][name] for name in names} for row in raw]
        predicted = httpx.post(f"{model}:predict", json={"instances": ids}, timeout=30)
        assert predicted.status_code == 200, predicted.text
    probabilities = [p["probability"] for p in predicted.json()["predictions"]]
    assert scored.json()["scores"] == pytest.approx(probabilities, rel=1e-6, abs=1e-7)


def test_feed_ctr_twin_publishes_a_gray_release_then_promotes_and_rolls_back(
    tmp_path: Path, make_spec: Callable[..., Path], isolated_var: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPARK_LOCAL_IP", "127.0.0.1")
    monkeypatch.setenv("WEIFLOW_SPARK_MASTER", "local[2]")
    events = tmp_path / "events"
    write_events(events)
    dag = compile_file(make_spec(SPEC.replace("EVENTS", str(events))))
    repo = FileRepository(str(isolated_var / "storage" / "models"))  # ${storage}/models by default

    first = MemoryTracker()
    result = run_pipeline(RunContext.create(dag, settings=load_settings(), tracker=first, run_id="r1"))
    assert result.succeeded, result.errors
    assert repo.versions("feed_ctr") == [1] and repo.read_routing("feed_ctr").traffic == {1: 100}
    manifest = repo.manifest("feed_ctr", 1)
    assert (manifest.pipeline, manifest.run_id, manifest.publisher) == ("feed_ctr", "r1", "ranking")
    evaluated = next(e.detail for e in first.events if e.kind is EventKind.METRICS and e.module == "eval")
    assert set(manifest.metrics) >= {"auc", "logloss"} and manifest.metrics["auc"] == pytest.approx(evaluated["auc"])
    assert manifest.metrics["auc"] >= 0.5
    served_exactly_as_trained(repo, events, isolated_var / "storage" / "feed_ctr" / "samples", tmp_path)

    second = MemoryTracker()
    again = RunContext.create(dag, settings=load_settings(), tracker=second, run_id="r2")
    for node in ("train", "deploy"):
        run_node(again, node)
    routing = repo.read_routing("feed_ctr")
    assert repo.versions("feed_ctr") == [1, 2] and repo.manifest("feed_ctr", 2).run_id == "r2"
    assert routing.traffic == {1: 90, 2: 10} and routing.labels == {"stable": 1, "canary": 2}

    # The run's events carry each version whose share the publish touched (what the center mirrors).
    def models(tracker: MemoryTracker) -> list[dict[str, object]]:
        fields = ("name", "version", "uri", "deployed", "traffic")
        reports = [e.detail["model"] for e in tracker.events if e.kind is EventKind.METRICS and "model" in e.detail]
        return [{k: model[k] for k in fields} for model in reports]

    uri = {v: repo.version_uri("feed_ctr", v) for v in (1, 2)}
    assert models(first) == [{"name": "feed_ctr", "version": 1, "uri": uri[1], "deployed": True, "traffic": 100}]
    assert models(second) == [
        {"name": "feed_ctr", "version": 1, "uri": uri[1], "deployed": True, "traffic": 90},
        {"name": "feed_ctr", "version": 2, "uri": uri[2], "deployed": True, "traffic": 10},
    ]

    # The control center, fed the runs' events, mirrors the split and the metrics each version was gated on.
    engine = make_engine(f"sqlite:///{tmp_path / 'center.db'}")
    migrate(engine)
    center = make_sessionmaker(engine)
    with center() as session:
        ingest_events(session, [*first.events, *second.events])
        [mirrored] = list_models(session)
    assert mirrored["repository"] in (repo.uri, f"file://{repo.uri}")
    assert mirrored["traffic"] == {"1": 90.0, "2": 10.0}
    assert [v["metrics"] for v in mirrored["versions"]] == [dict(repo.manifest("feed_ctr", v).metrics) for v in (1, 2)]
    assert mirrored["versions"][1]["metrics"]["auc"] >= 0.5

    assert promote(repo, "feed_ctr", None, 100, who="ranking").traffic == {2: 100}
    assert repo.read_routing("feed_ctr").traffic == {2: 100}
    rollback(repo, "feed_ctr", who="ranking")
    routing = repo.read_routing("feed_ctr")
    assert routing.traffic == {1: 100} and routing.labels["stable"] == 1
    assert [c.action for c in routing.history] == ["publish", "publish", "promote", "rollback"]
