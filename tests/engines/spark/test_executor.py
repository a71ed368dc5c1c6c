"""Spark nodes end to end on local Spark: modules, atomic outputs, tracking, clear errors."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from weiflow.config import load_settings
from weiflow.dag import compile_file
from weiflow.errors import ModuleFailed
from weiflow.runtime import RunContext, run_node, run_pipeline
from weiflow.storage import SUCCESS_MARKER, is_complete
from weiflow.tracking import EventKind, MemoryTracker

pytestmark = pytest.mark.integration


@pytest.fixture
def events(spark: Any, tmp_path: Path) -> Path:
    """An external parquet dataset of raw events."""
    rows = [
        (1, "u1", "beijing", 23.0, 0.10, "i1", 1),
        (2, "u2", "shanghai", 31.0, 0.20, "i2", 0),
        (3, "u3", "beijing", None, 0.30, "i1", 1),
        (4, "u1", "beijing", 45.0, None, "i3", None),
        (5, "u4", "shenzhen", 17.0, 0.05, "i2", 0),
        (5, "u4", "shenzhen", 17.0, 0.05, "i2", 0),
    ]
    path = tmp_path / "raw" / "events"
    frame = spark.createDataFrame(
        rows, "id long, uid string, city string, age double, ctr double, item string, label int"
    )
    frame.write.parquet(str(path))
    return path


def spec(events: Path, nodes: str, datasets: str = "") -> str:
    return textwrap.dedent(f"""\
        <pipeline xmlns="urn:weiflow:pipeline:1" name="sp">
          <datasets>
            <dataset name="events" uri="file://{events}" format="parquet" external="true"/>
            <dataset name="clean" uri="${{storage}}/clean/${{ds}}" format="parquet"/>
            {datasets}
          </datasets>
        {nodes}
        </pipeline>
        """)


def run(path: Path, tracker: MemoryTracker | None = None) -> tuple[RunContext, MemoryTracker]:
    tracker = tracker or MemoryTracker()
    ctx = RunContext.create(
        compile_file(path), settings=load_settings(), tracker=tracker, run_id="r1", ds=date(2026, 11, 20)
    )
    return ctx, tracker


THREE_MODULES = """
  <node id="prep" engine="spark">
    <module id="read" type="read" dataset="events"/>
    <module id="keep" type="filter" input="read" condition="label IS NOT NULL AND age &gt; 18"/>
    <module id="write" type="write" input="keep" dataset="clean" files="1"/>
  </node>
"""


def test_three_module_node_writes_atomically_and_reports_the_dataset(
    spark: Any, events: Path, make_spec: Callable[..., Path], isolated_var: Path
) -> None:
    ctx, tracker = run(make_spec(spec(events, THREE_MODULES)))
    assert run_pipeline(ctx).succeeded
    out = isolated_var / "storage" / "clean" / "2026-11-20"
    assert is_complete(f"file://{out}")
    assert json.loads((out / SUCCESS_MARKER).read_text())["rows"] == 2
    assert sorted(r.id for r in spark.read.parquet(str(out)).collect()) == [1, 2]  # age > 18, label known
    written = next(e for e in tracker.events if e.kind is EventKind.DATASET_WRITTEN)
    assert written.dataset is not None
    assert written.dataset.rows == 2
    assert written.dataset.schema == {
        "id": "bigint",
        "uid": "string",
        "city": "string",
        "age": "double",
        "ctr": "double",
        "item": "string",
        "label": "int",
    }
    assert written.dataset.files == 1 and written.dataset.size_bytes > 0


def test_modules_flow_in_memory_through_sql_join_union_dedup_split(
    spark: Any, events: Path, make_spec: Callable[..., Path], isolated_var: Path
) -> None:
    nodes = """
  <node id="prep" engine="spark">
    <conf name="spark.sql.shuffle.partitions" value="2"/>
    <module id="read" type="read" dataset="events"/>
    <module id="once" type="dedup" input="read"/>
    <module id="cities" type="sql" input="once">
      <query>SELECT city, count(*) AS n FROM once GROUP BY city</query>
    </module>
    <module id="joined" type="join" input="once,cities" on="city" how="left"/>
    <module id="both" type="union" input="joined,joined"/>
    <module id="again" type="dedup" input="both" columns="id"/>
    <module id="parts" type="split" input="again" ratios="0.5,0.5" names="a,b" seed="3"/>
    <module id="wa" type="write" input="parts.a" dataset="clean"/>
    <module id="wb" type="write" input="parts.b" dataset="other"/>
  </node>
"""
    extra = '<dataset name="other" uri="${storage}/other/${ds}" format="json"/>'
    ctx, tracker = run(make_spec(spec(events, nodes, extra)))
    assert run_pipeline(ctx).succeeded
    storage = isolated_var / "storage"
    a = spark.read.parquet(str(storage / "clean" / "2026-11-20")).collect()
    b = spark.read.json(str(storage / "other" / "2026-11-20")).collect()
    assert sorted(r.id for r in a + b) == [1, 2, 3, 4, 5]  # split is a partition of the deduplicated rows
    assert {r.city: r.n for r in a + b} == {"beijing": 3, "shanghai": 1, "shenzhen": 1}
    rows = {e.dataset.name: e.dataset.rows for e in tracker.events if e.dataset is not None}
    assert rows["clean"] + rows["other"] == 5


def test_split_is_deterministic(spark: Any, events: Path, make_spec: Callable[..., Path], isolated_var: Path) -> None:
    nodes = """
  <node id="prep" engine="spark">
    <module id="read" type="read" dataset="events"/>
    <module id="parts" type="split" input="read" ratios="0.5,0.5" names="a,b" seed="11"/>
    <module id="w" type="write" input="parts.a" dataset="clean"/>
  </node>
"""
    path = make_spec(spec(events, nodes))
    seen = []
    for _ in range(2):
        ctx, _ = run(path)
        assert run_pipeline(ctx).succeeded
        seen.append(
            sorted(r.id for r in spark.read.parquet(str(isolated_var / "storage" / "clean" / "2026-11-20")).collect())
        )
    assert seen[0] == seen[1]


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (
            '<module id="keep" type="filter" input="read" condition="agee &gt; 18"/>',
            r"node 'prep', module 'keep': \[UNRESOLVED_COLUMN.*`agee`.*",
        ),
        (
            '<module id="keep" type="filter" input="read" condition="age &gt;= AND 18"/>',
            r"module 'keep': \[PARSE_SYNTAX_ERROR\]",
        ),
        (
            '<module id="keep" type="dedup" input="read" columns="uid,cty"/>',
            r"module 'keep': column\(s\) cty not in the input; columns in the input: id, uid, city",
        ),
        ('<module id="keep" type="select" input="read" columns="uid,nope"/>', r"module 'keep': \[UNRESOLVED_COLUMN"),
    ],
)
def test_data_errors_name_the_module_and_the_columns(
    spark: Any, events: Path, make_spec: Callable[..., Path], module: str, message: str
) -> None:
    nodes = f"""
  <node id="prep" engine="spark">
    <module id="read" type="read" dataset="events"/>
    {module}
    <module id="write" type="write" input="keep" dataset="clean"/>
  </node>
"""
    ctx, tracker = run(make_spec(spec(events, nodes)))
    with pytest.raises(ModuleFailed, match=message) as caught:
        run_node(ctx, "prep")
    assert "\tat " not in str(caught.value) and "JVM" not in str(caught.value)  # no Java stack as the headline
    assert not any(e.kind is EventKind.DATASET_WRITTEN for e in tracker.events)


def test_sync_copies_once_then_skips(make_spec: Callable[..., Path], tmp_path: Path, isolated_var: Path) -> None:
    landing = tmp_path / "landing" / "clicks"
    (landing / "part=1").mkdir(parents=True)
    (landing / "part=1" / "a.json").write_text('{"q": "x"}\n')
    (landing / "b.json").write_text('{"q": "y"}\n')
    nodes = """
  <node id="sync" engine="spark">
    <module id="copy" type="sync" source="landed" dataset="clicks"/>
  </node>
"""
    datasets = (
        f'<dataset name="landed" uri="file://{landing}" format="json" external="true"/>'
        '<dataset name="clicks" uri="${storage}/warehouse/clicks" format="json"/>'
    )
    path = make_spec(spec(tmp_path / "unused", nodes, datasets))
    details = []
    for change in (False, True):
        if change:
            (landing / "b.json").write_text('{"q": "changed"}\n')
        ctx, tracker = run(path)
        assert run_pipeline(ctx).succeeded
        details.append(next(e.detail for e in tracker.events if e.kind is EventKind.DATASET_WRITTEN))
    assert details[0] == {"files": 2, "copied": 2, "skipped": 0, "bytes_copied": 22}
    assert details[1] == {"files": 2, "copied": 1, "skipped": 1, "bytes_copied": 17}
    target = isolated_var / "storage" / "warehouse" / "clicks"
    assert (target / "b.json").read_text() == '{"q": "changed"}\n'
    assert (target / "part=1" / "a.json").read_text() == '{"q": "x"}\n'


def test_features_module_writes_its_feature_map_next_to_the_samples(
    spark: Any, events: Path, make_spec: Callable[..., Path], isolated_var: Path
) -> None:
    from weiflow.features import FeatureMap, OnlineFeatures

    nodes = """
  <node id="prep" engine="spark">
    <module id="read" type="read" dataset="events"/>
    <module id="feats" type="features" input="read" label="label" keep="id">
      <feature name="age_b" fn="piecewise" source="age" boundaries="18,30"/>
      <feature name="city_id" fn="pickcat" source="city" top="2"/>
      <feature name="ctr_z" fn="normalize" source="ctr" method="zscore"/>
      <feature name="age_city" fn="descartes" sources="age_b,city_id"/>
      <feature name="u_item" fn="combinehash" sources="uid,item" buckets="1000"/>
    </module>
    <module id="write" type="write" input="feats" dataset="clean"/>
  </node>
"""
    ctx, _ = run(make_spec(spec(events, nodes)))
    assert run_pipeline(ctx).succeeded
    out = isolated_var / "storage" / "clean" / "2026-11-20"
    fmap = FeatureMap.from_json((out / "_featuremap.json").read_text())
    written = {r.id: r.asDict() for r in spark.read.parquet(str(out)).collect()}
    raw = {r.id: r.asDict() for r in spark.read.parquet(str(events)).collect()}
    online = OnlineFeatures(fmap).transform_rows(raw[i] for i in sorted(written))
    for row, expected in zip(online, (written[i] for i in sorted(written)), strict=True):
        for name in ("age_b", "city_id", "age_city", "u_item"):
            assert row[name] == expected[name], name
        assert abs(row["ctr_z"] - expected["ctr_z"]) < 1e-12
