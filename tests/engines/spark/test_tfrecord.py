"""TFRecord datasets from and into Spark nodes: exact round trips, the _schema.json contract, clear errors."""

from __future__ import annotations

import json
import math
import struct
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
from weiflow.storage import SUCCESS_MARKER
from weiflow.tracking import EventKind, MemoryTracker

pytestmark = pytest.mark.integration

SCHEMA = (
    "id int, tiny tinyint, small smallint, big bigint, flag boolean, f float, d double, s string, raw binary, "
    "ids array<bigint>, scores array<double>, tags array<string>, bits array<boolean>"
)
ROWS = [
    (1, 1, 300, 2**63 - 1, True, 1.5, 0.1, "北京 🎉", b"\x00\xff", [1, 2**40], [0.25, -1e300], ["a", "é"], [True]),
    (2, -128, -32768, -(2**63), False, -0.0, math.inf, "", b"", [], [], [], []),
    (3, None, None, None, None, None, None, None, None, None, None, None, None),
    (4, 127, 32767, 0, True, 3.25, -2.5e-3, "line\nbreak", bytes(range(256)), [-1], [1.0], ["x" * 1000], [False, True]),
]
COLUMNS = [
    {"name": "id", "dtype": "int64", "shape": "scalar", "spark_type": "int"},
    {"name": "tiny", "dtype": "int64", "shape": "scalar", "spark_type": "tinyint"},
    {"name": "small", "dtype": "int64", "shape": "scalar", "spark_type": "smallint"},
    {"name": "big", "dtype": "int64", "shape": "scalar", "spark_type": "bigint"},
    {"name": "flag", "dtype": "int64", "shape": "scalar", "spark_type": "boolean"},
    {"name": "f", "dtype": "float", "shape": "scalar", "spark_type": "float"},
    {"name": "d", "dtype": "float", "shape": "scalar", "spark_type": "double"},
    {"name": "s", "dtype": "bytes", "shape": "scalar", "spark_type": "string"},
    {"name": "raw", "dtype": "bytes", "shape": "scalar", "spark_type": "binary"},
    {"name": "ids", "dtype": "int64", "shape": "list", "spark_type": "array<bigint>"},
    {"name": "scores", "dtype": "float", "shape": "list", "spark_type": "array<double>"},
    {"name": "tags", "dtype": "bytes", "shape": "list", "spark_type": "array<string>"},
    {"name": "bits", "dtype": "int64", "shape": "list", "spark_type": "array<boolean>"},
]


def float32(value: float) -> float:
    """What a double becomes in a tf.train.Example float_list."""
    return float(struct.unpack("f", struct.pack("f", value))[0])


@pytest.fixture
def raw(spark: Any, tmp_path: Path) -> Path:
    path = tmp_path / "raw" / "all_types"
    spark.createDataFrame(ROWS, SCHEMA).write.parquet(str(path))
    return path


def pipeline(raw: Path, nodes: str, datasets: str = "") -> str:
    return textwrap.dedent(f"""\
        <pipeline xmlns="urn:weiflow:pipeline:1" name="tfr">
          <datasets>
            <dataset name="raw" uri="file://{raw}" format="parquet" external="true"/>
            <dataset name="samples" uri="${{storage}}/samples/${{ds}}" format="tfrecord"/>
            <dataset name="copy" uri="${{storage}}/copy/${{ds}}" format="parquet"/>
            {datasets}
          </datasets>
        {nodes}
        </pipeline>
        """)


TO_TFRECORD_AND_BACK = """
  <node id="to_tf" engine="spark">
    <module id="read" type="read" dataset="raw"/>
    <module id="write" type="write" input="read" dataset="samples" files="2"/>
  </node>
  <node id="back" engine="spark">
    <module id="read" type="read" dataset="samples"/>
    <module id="write" type="write" input="read" dataset="copy"/>
  </node>
"""


def context(path: Path) -> tuple[RunContext, MemoryTracker]:
    tracker = MemoryTracker()
    ctx = RunContext.create(
        compile_file(path), settings=load_settings(), tracker=tracker, run_id="r1", ds=date(2026, 11, 20)
    )
    return ctx, tracker


@pytest.fixture
def round_trip(spark: Any, raw: Path, make_spec: Callable[..., Path], isolated_var: Path) -> tuple[Path, MemoryTracker]:
    """The all-types rows written as TFRecord by one node and read back into parquet by the next."""
    ctx, tracker = context(make_spec(pipeline(raw, TO_TFRECORD_AND_BACK)))
    assert run_pipeline(ctx).succeeded
    return isolated_var / "storage", tracker


def test_every_supported_type_round_trips_exactly_doubles_as_float32(
    spark: Any, round_trip: tuple[Path, MemoryTracker]
) -> None:
    storage, _ = round_trip
    back = spark.read.parquet(str(storage / "copy" / "2026-11-20"))
    assert back.schema.simpleString() == spark.createDataFrame([], SCHEMA).schema.simpleString()
    rows = {row.id: row.asDict() for row in back.collect()}
    assert sorted(rows) == [1, 2, 3, 4]
    for original in ROWS:
        expected = dict(zip(back.columns, original, strict=True))
        if expected["d"] is not None:
            expected["d"] = float32(expected["d"])
            expected["scores"] = [float32(v) for v in expected["scores"]]
        assert rows[original[0]] == expected, original[0]
    assert rows[1]["d"] != 0.1 and abs(rows[1]["d"] - 0.1) < 1e-8  # rounded, still typed double
    assert rows[1]["scores"][1] == -math.inf  # -1e300 overflows float32
    assert math.copysign(1.0, rows[2]["f"]) == -1.0  # -0.0 keeps its sign
    assert rows[2]["ids"] == [] and rows[3]["ids"] is None  # an empty list is not a null


def test_schema_file_markers_and_events_describe_the_dataset(round_trip: tuple[Path, MemoryTracker]) -> None:
    storage, tracker = round_trip
    samples = storage / "samples" / "2026-11-20"
    assert json.loads((samples / "_schema.json").read_text()) == {
        "format": "weiflow.tfrecord/1",
        "rows": 4,
        "files": 2,
        "columns": COLUMNS,
    }
    assert sorted(p.name for p in samples.iterdir()) == [
        "_SUCCESS",
        "_schema.json",
        "part-00000.tfrecord",
        "part-00001.tfrecord",
    ]
    assert json.loads((samples / SUCCESS_MARKER).read_text())["rows"] == 4
    written = {e.dataset.name: e.dataset for e in tracker.events if e.dataset is not None}
    assert written["samples"].format == "tfrecord"
    assert (written["samples"].rows, written["samples"].files) == (4, 2)
    assert written["samples"].size_bytes == sum(p.stat().st_size for p in samples.glob("part-*"))
    assert written["samples"].schema == {c["name"]: c["spark_type"] for c in COLUMNS}
    assert written["copy"].rows == 4


def test_written_files_parse_with_tf_data_and_the_schema_file(round_trip: tuple[Path, MemoryTracker]) -> None:
    """How the TensorFlow engine reads them: a parse_example spec built from _schema.json alone."""
    import tensorflow as tf

    samples = round_trip[0] / "samples" / "2026-11-20"
    schema = json.loads((samples / "_schema.json").read_text())
    dtypes = {"int64": tf.int64, "float": tf.float32, "bytes": tf.string}
    defaults = {"int64": -7, "float": -7.0, "bytes": b"<null>"}
    spec = {
        c["name"]: tf.io.FixedLenFeature([], dtypes[c["dtype"]], default_value=defaults[c["dtype"]])
        if c["shape"] == "scalar"
        else tf.io.VarLenFeature(dtypes[c["dtype"]])
        for c in schema["columns"]
    }
    files = sorted(str(p) for p in samples.glob("part-*.tfrecord"))
    batch = next(iter(tf.data.TFRecordDataset(files).batch(10).map(lambda x: tf.io.parse_example(x, spec))))
    order = [int(i) for i in batch["id"].numpy()]
    assert sorted(order) == [1, 2, 3, 4]
    one, two, null = order.index(1), order.index(2), order.index(3)
    assert batch["big"].numpy()[one] == 2**63 - 1 and batch["big"].numpy()[two] == -(2**63)
    assert batch["flag"].numpy()[one] == 1 and batch["tiny"].numpy()[two] == -128
    assert batch["s"].numpy()[one].decode("utf-8") == "北京 🎉"
    assert batch["raw"].numpy()[one] == b"\x00\xff"
    assert batch["d"].numpy()[one] == pytest.approx(0.1)
    for name, default in (("big", -7), ("d", -7.0), ("s", b"<null>")):
        assert batch[name].numpy()[null] == default  # a null is a missing feature: the default fills it
    ids = tf.sparse.to_dense(batch["ids"]).numpy()
    assert list(ids[one][:2]) == [1, 2**40]
    lengths = {int(row): n for row, n in zip(*tf.unique_with_counts(batch["tags"].indices[:, 0])[::2], strict=True)}
    assert lengths == {one: 2, order.index(4): 1}  # empty and null lists hold no values
    assert tf.sparse.to_dense(batch["tags"], default_value=b"").numpy()[one][1].decode() == "é"


@pytest.mark.parametrize(
    ("select", "message"),
    [
        ("DATE'2026-11-20' AS day", r"column 'day' has type date, which a tf.train.Example cannot hold.*CAST\(day"),
        ("map('k', id) AS m", r"column 'm' has type map<string,int>"),
        ("named_struct('a', id) AS st", r"column 'st' has type struct<a:int>"),
        ("CAST(id AS decimal(10,2)) AS amount", r"column 'amount' has type decimal\(10,2\)"),
        ("array(array(id)) AS nested", r"column 'nested' has type array<array<int>>"),
    ],
)
def test_a_type_examples_cannot_hold_is_named_before_spark_writes(
    raw: Path, make_spec: Callable[..., Path], isolated_var: Path, select: str, message: str
) -> None:
    nodes = f"""
  <node id="to_tf" engine="spark">
    <module id="read" type="read" dataset="raw"/>
    <module id="pick" type="sql" input="read" query="SELECT id, {select} FROM read"/>
    <module id="write" type="write" input="pick" dataset="samples"/>
  </node>
"""
    ctx, tracker = context(make_spec(pipeline(raw, nodes)))
    with pytest.raises(ModuleFailed, match="module 'write': dataset 'samples': " + message):
        run_node(ctx, "to_tf")
    assert not (isolated_var / "storage" / "samples").exists()  # refused before even staging the output
    assert not any(e.kind is EventKind.DATASET_WRITTEN for e in tracker.events)


def test_an_array_with_a_null_element_fails_with_the_column_named(
    raw: Path, make_spec: Callable[..., Path], isolated_var: Path
) -> None:
    nodes = """
  <node id="to_tf" engine="spark">
    <module id="read" type="read" dataset="raw"/>
    <module id="pick" type="select" input="read" columns="id,array(tiny) AS maybe"/>
    <module id="write" type="write" input="pick" dataset="samples"/>
  </node>
"""
    ctx, _ = context(make_spec(pipeline(raw, nodes)))
    with pytest.raises(ModuleFailed, match=r"module 'write': ValueError: column 'maybe' holds an array with a null"):
        run_node(ctx, "to_tf")
    samples = isolated_var / "storage" / "samples"
    assert not (samples / "2026-11-20").exists()
    assert not list(samples.iterdir())  # the staging directory is gone too


def test_partition_by_is_refused_for_tfrecord(raw: Path, make_spec: Callable[..., Path]) -> None:
    nodes = """
  <node id="to_tf" engine="spark">
    <module id="read" type="read" dataset="raw"/>
    <module id="write" type="write" input="read" dataset="samples" partition-by="flag"/>
  </node>
"""
    ctx, _ = context(make_spec(pipeline(raw, nodes)))
    with pytest.raises(ModuleFailed, match="partition-by is not supported for tfrecord"):
        run_node(ctx, "to_tf")


def test_tfrecord_files_without_a_schema_file_are_explained(
    raw: Path, make_spec: Callable[..., Path], tmp_path: Path
) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "part-0.tfrecord").write_bytes(b"")
    nodes = """
  <node id="back" engine="spark">
    <module id="read" type="read" dataset="foreign"/>
    <module id="write" type="write" input="read" dataset="copy"/>
  </node>
"""
    extra = f'<dataset name="foreign" uri="file://{foreign}" format="tfrecord" external="true"/>'
    ctx, _ = context(make_spec(pipeline(raw, nodes, extra)))
    with pytest.raises(ModuleFailed, match=r"module 'read': dataset 'foreign': .* has no _schema.json, so it was not"):
        run_node(ctx, "back")


def test_an_empty_frame_writes_no_files_and_reads_back_empty_with_its_types(
    spark: Any, raw: Path, make_spec: Callable[..., Path], isolated_var: Path
) -> None:
    nodes = """
  <node id="to_tf" engine="spark">
    <module id="read" type="read" dataset="raw"/>
    <module id="none" type="filter" input="read" condition="id &lt; 0"/>
    <module id="write" type="write" input="none" dataset="samples"/>
  </node>
  <node id="back" engine="spark">
    <module id="read" type="read" dataset="samples"/>
    <module id="write" type="write" input="read" dataset="copy"/>
  </node>
"""
    ctx, tracker = context(make_spec(pipeline(raw, nodes)))
    assert run_pipeline(ctx).succeeded
    schema = json.loads((isolated_var / "storage" / "samples" / "2026-11-20" / "_schema.json").read_text())
    assert (schema["rows"], schema["files"]) == (0, 0)
    back = spark.read.parquet(str(isolated_var / "storage" / "copy" / "2026-11-20"))
    assert back.count() == 0 and back.schema.simpleString() == spark.createDataFrame([], SCHEMA).schema.simpleString()
    assert [e.dataset.rows for e in tracker.events if e.dataset is not None] == [0, 0]
