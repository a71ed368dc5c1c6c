"""TFRecord datasets for the Spark engine: ``tf.train.Example`` files plus a ``_schema.json`` contract.

Written and read through a Spark Python data source (``weiflow_tfrecord``) whose tasks import
the ``tensorflow`` package, so there is no JVM connector to install. A dataset directory holds::

    part-00000.tfrecord ...   one file per non-empty Spark partition, one Example per row
    _schema.json              {"format": "weiflow.tfrecord/1", "rows", "files", "columns": [...]}

TFRecord files carry no schema; ``_schema.json`` is what the TensorFlow engine builds its
``tf.io.parse_example`` spec from, and what a Spark read rebuilds the DataFrame's types from.
Column types map onto the three Example lists:

=========================================== ========= ================================
Spark type                                  dtype     note
=========================================== ========= ================================
tinyint, smallint, int, bigint, boolean     int64     booleans as 0/1
float, double                               float     float32: doubles come back rounded
string, binary                              bytes     strings as UTF-8
array of one of the above                   (same)    shape "list"; no null elements
=========================================== ========= ================================

A null value is a missing feature (so it reads back as null); an empty array is a present,
empty list.
"""

from __future__ import annotations

import importlib
import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import fsspec
from fsspec.implementations.local import LocalFileSystem
from pyspark import TaskContext
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.datasource import (
    DataSource,
    DataSourceArrowWriter,
    DataSourceReader,
    InputPartition,
    WriterCommitMessage,
)
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    BooleanType,
    ByteType,
    DataType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    ShortType,
    StringType,
    StructField,
    StructType,
)

from weiflow.errors import DatasetError

__all__ = [
    "SCHEMA_FILE",
    "SCHEMA_FORMAT",
    "SOURCE_NAME",
    "TFColumn",
    "read_tfrecord",
    "tfrecord_columns",
    "write_tfrecord",
]

SCHEMA_FILE = "_schema.json"
SCHEMA_FORMAT = "weiflow.tfrecord/1"
SOURCE_NAME = "weiflow_tfrecord"
_BATCH_ROWS = 8192  # rows per Arrow batch handed back to Spark by a read task

DType = Literal["int64", "float", "bytes"]
Shape = Literal["scalar", "list"]

# Spark's own type names (DataType.simpleString()), with their type and their Example list.
_SCALARS: dict[str, tuple[DataType, DType]] = {
    "tinyint": (ByteType(), "int64"),
    "smallint": (ShortType(), "int64"),
    "int": (IntegerType(), "int64"),
    "bigint": (LongType(), "int64"),
    "boolean": (BooleanType(), "int64"),
    "float": (FloatType(), "float"),
    "double": (DoubleType(), "float"),
    "string": (StringType(), "bytes"),
    "binary": (BinaryType(), "bytes"),
}
_LIST_KIND: dict[DType, str] = {"int64": "int64_list", "float": "float_list", "bytes": "bytes_list"}


@dataclass(frozen=True)
class TFColumn:
    """One column of a TFRecord dataset, as ``_schema.json`` lists it."""

    name: str
    dtype: DType
    shape: Shape
    spark_type: str  # "bigint", "array<string>", ...: enough to rebuild the Spark type exactly

    @property
    def element_type(self) -> str:
        return self.spark_type[len("array<") : -1] if self.shape == "list" else self.spark_type

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "dtype": self.dtype, "shape": self.shape, "spark_type": self.spark_type}

    @classmethod
    def from_json(cls, data: Any, source: str) -> TFColumn:
        """A column entry of ``_schema.json``, checked: its parts must agree with each other."""
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise DatasetError(f"{source}: a column entry needs a name: {data!r}")
        spark_type = str(data.get("spark_type", ""))
        shape: Shape = "list" if spark_type.startswith("array<") and spark_type.endswith(">") else "scalar"
        element = spark_type[len("array<") : -1] if shape == "list" else spark_type
        if element not in _SCALARS:
            raise DatasetError(
                f"{source}: column '{data['name']}': spark_type '{spark_type}' is not one TFRecord datasets "
                f"hold ({', '.join(_SCALARS)}, or an array of one)"
            )
        column = cls(data["name"], _SCALARS[element][1], shape, spark_type)
        if (data.get("dtype"), data.get("shape")) != (column.dtype, column.shape):
            raise DatasetError(
                f"{source}: column '{column.name}': dtype/shape {data.get('dtype')}/{data.get('shape')} "
                f"do not match spark_type '{spark_type}' (expected {column.dtype}/{column.shape})"
            )
        return column

    def spark_field(self) -> StructField:
        element = _SCALARS[self.element_type][0]
        # Every column is nullable: any Example may leave any feature out.
        return StructField(self.name, ArrayType(element) if self.shape == "list" else element)


def tfrecord_columns(schema: StructType, dataset: str) -> list[TFColumn]:
    """How each column of ``schema`` is stored; a DatasetError names the first column that cannot be."""
    columns = []
    for field in schema.fields:
        is_list = isinstance(field.dataType, ArrayType)
        element = field.dataType.elementType if isinstance(field.dataType, ArrayType) else field.dataType
        # Collated strings are still strings (Spark 4 spells them "string collate ...").
        name = "string" if isinstance(element, StringType) else element.simpleString()
        if name not in _SCALARS:
            raise DatasetError(
                f"dataset '{dataset}': column '{field.name}' has type {field.dataType.simpleString()}, which a "
                "tf.train.Example cannot hold (it has int64, float and bytes lists only); cast or drop it first, "
                f'e.g. a select module with columns="CAST({field.name} AS string) AS {field.name}" '
                "(dates, timestamps and decimals as strings or numbers; maps and structs as separate columns)"
            )
        if is_list:
            columns.append(TFColumn(field.name, _SCALARS[name][1], "list", f"array<{name}>"))
        else:
            columns.append(TFColumn(field.name, _SCALARS[name][1], "scalar", name))
    return columns


def write_tfrecord(session: SparkSession, frame: DataFrame, directory: Path, *, dataset: str) -> int:
    """Write ``frame`` into the empty local ``directory``; returns the row count.

    The column types are checked before any Spark job starts. The data source's commit (on
    the driver, once every task succeeded) writes ``_schema.json`` with the row counts the
    tasks reported, so counting rows costs no second job.
    """
    tfrecord_columns(frame.schema, dataset)
    session.dataSource.register(TFRecordDataSource)
    frame.write.format(SOURCE_NAME).mode("overwrite").save(str(directory))
    return int(json.loads((directory / SCHEMA_FILE).read_text())["rows"])


def read_tfrecord(session: SparkSession, uri: str, dataset: str) -> DataFrame:
    """A DataFrame over the TFRecord dataset at ``uri``, typed by its ``_schema.json``."""
    fs, root = fsspec.core.url_to_fs(uri)
    root = str(root).rstrip("/")
    schema_path = f"{root}/{SCHEMA_FILE}"
    if not fs.exists(schema_path):
        raise DatasetError(
            f"dataset '{dataset}': {uri} has no {SCHEMA_FILE}, so it was not written by WeiFlow: TFRecord files "
            f"do not say which features they hold or their types; write it with a WeiFlow Spark write module, or "
            f'add a {SCHEMA_FILE} ({{"format": "{SCHEMA_FORMAT}", "columns": [...]}}, see docs/spark.md)'
        )
    source = f"{uri}/{SCHEMA_FILE}"
    try:
        with fs.open(schema_path, "r", encoding="utf-8") as handle:
            document = json.load(handle)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{source}: cannot read it: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != SCHEMA_FORMAT:
        found = document.get("format") if isinstance(document, dict) else None
        raise DatasetError(f"{source}: format is {found!r}, expected '{SCHEMA_FORMAT}'")
    columns = [TFColumn.from_json(entry, source) for entry in document.get("columns") or []]
    local = isinstance(fs, LocalFileSystem)
    files = sorted(
        name if local else fs.unstrip_protocol(name)
        for name in fs.find(root)
        if not name.rpartition("/")[2].startswith(("_", "."))  # as Spark's own readers: no markers, no temp files
    )
    schema = StructType([c.spark_field() for c in columns])
    if not files:
        return session.createDataFrame([], schema)  # a data source without partitions still runs one read
    session.dataSource.register(TFRecordDataSource)
    return session.read.format(SOURCE_NAME).schema(schema).option("files", json.dumps(files)).load()


# --- the Spark data source: everything below runs in Spark's Python workers ---------------------


def _tensorflow() -> Any:
    """The ``tensorflow`` module, imported in the task that needs it (seconds, once per Python worker)."""
    return importlib.import_module("tensorflow")


class TFRecordDataSource(DataSource):
    """``weiflow_tfrecord``: reached only through :func:`write_tfrecord` and :func:`read_tfrecord`."""

    @classmethod
    def name(cls) -> str:
        return SOURCE_NAME

    def writer(self, schema: StructType, overwrite: bool) -> DataSourceArrowWriter:
        return _Writer(Path(self.options["path"]), tfrecord_columns(schema, self.options["path"]))

    def reader(self, schema: StructType) -> DataSourceReader:
        return _Reader(tfrecord_columns(schema, "read"), json.loads(self.options["files"]))


@dataclass
class _Written(WriterCommitMessage):
    partition: int
    rows: int


def _encoder(element: str) -> Callable[[Any], Any]:
    """Arrow's Python value of one element to what the Example list takes."""
    if element == "string":
        return lambda value: value.encode("utf-8")
    if element == "boolean":
        return int  # protobuf's int64 lists refuse bools
    return lambda value: value


def _example_builder(tf: Any, columns: Sequence[TFColumn]) -> Callable[[Sequence[Any]], bytes]:
    """A function from one row's values (Arrow's Python values, in column order) to a serialized Example."""
    plan = [(c.name, _LIST_KIND[c.dtype], c.shape == "list", _encoder(c.element_type)) for c in columns]

    def build(row: Sequence[Any]) -> bytes:
        example = tf.train.Example()
        features = example.features.feature
        for (name, kind, is_list, encode), value in zip(plan, row, strict=True):
            if value is None:
                continue  # a null is a missing feature
            values = getattr(features[name], kind)
            if not is_list:
                values.value.append(encode(value))
                continue
            if None in value:
                raise ValueError(
                    f"column '{name}' holds an array with a null element, which a tf.train.Example list cannot "
                    f"hold; drop them first, e.g. in a sql module: SELECT filter({name}, x -> x IS NOT NULL) AS {name}"
                )
            values.SetInParent()  # an empty array stays a present, empty list, not a missing feature
            values.value.extend([encode(v) for v in value])
        return bytes(example.SerializeToString())

    return build


class _Writer(DataSourceArrowWriter):
    def __init__(self, directory: Path, columns: list[TFColumn]) -> None:
        self.directory = directory
        self.columns = columns

    def write(self, iterator: Iterator[Any]) -> _Written:
        task = TaskContext.get()
        partition = task.partitionId() if task is not None else 0
        final = self.directory / f"part-{partition:05d}.tfrecord"
        # Each attempt writes its own hidden file and renames it into place, so a retried or
        # speculative attempt replaces a dead one's output whole, never appends to it.
        temporary = self.directory / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
        rows, writer = 0, None
        try:
            for batch in iterator:
                if batch.num_rows == 0:
                    continue
                if writer is None:
                    tf = _tensorflow()
                    build = _example_builder(tf, self.columns)
                    writer = tf.io.TFRecordWriter(str(temporary))
                values = [batch.column(c.name).to_pylist() for c in self.columns]
                for row in zip(*values, strict=True):
                    writer.write(build(row))
                rows += batch.num_rows
            if writer is None:
                return _Written(partition, 0)  # no file for an empty partition
            writer.close()
            writer = None
            temporary.replace(final)
        finally:
            if writer is not None:
                writer.close()
            temporary.unlink(missing_ok=True)
        return _Written(partition, rows)

    def commit(self, messages: list[WriterCommitMessage | None]) -> None:
        written = {m.partition: m for m in messages if isinstance(m, _Written)}
        for leftover in self.directory.glob(".part-*.tmp"):
            leftover.unlink(missing_ok=True)  # from attempts killed before they could clean up
        document = {
            "format": SCHEMA_FORMAT,
            "rows": sum(m.rows for m in written.values()),
            "files": sum(1 for m in written.values() if m.rows),
            "columns": [c.to_json() for c in self.columns],
        }
        (self.directory / SCHEMA_FILE).write_text(json.dumps(document, indent=2) + "\n")

    def abort(self, messages: list[WriterCommitMessage | None]) -> None:
        """Nothing to undo: the files are in a staging directory that is removed unless committed."""


class _Reader(DataSourceReader):
    def __init__(self, columns: list[TFColumn], files: list[str]) -> None:
        self.columns = columns
        self.files = files

    def partitions(self) -> Sequence[InputPartition]:
        return [InputPartition(path) for path in self.files]

    def read(self, partition: InputPartition) -> Iterator[Any]:
        tf = _tensorflow()
        pa: Any = importlib.import_module("pyarrow")
        path = str(partition.value)
        arrow_schema = to_arrow_schema(StructType([c.spark_field() for c in self.columns]))
        decode = [_decoder(c, path) for c in self.columns]
        # Batched: tf.data costs tens of microseconds per element it hands to Python.
        for records in tf.data.TFRecordDataset(path).batch(_BATCH_ROWS).as_numpy_iterator():
            columns: list[list[Any]] = [[] for _ in self.columns]
            for record in records:
                features = tf.train.Example.FromString(record).features.feature
                for column, convert, values in zip(self.columns, decode, columns, strict=True):
                    values.append(convert(features[column.name]) if column.name in features else None)
            yield pa.RecordBatch.from_arrays(
                [pa.array(values, type=field.type) for values, field in zip(columns, arrow_schema, strict=True)],
                schema=arrow_schema,
            )


def _decoder(column: TFColumn, path: str) -> Callable[[Any], Any]:
    """How one present feature becomes a Python value of the column's Spark type."""
    kind = _LIST_KIND[column.dtype]
    element = column.element_type
    convert: Callable[[Any], Any] = (
        bool if element == "boolean" else (lambda b: b.decode("utf-8")) if element == "string" else (lambda v: v)
    )

    def decode(feature: Any) -> Any:
        found = feature.WhichOneof("kind")
        if found != kind:
            raise ValueError(f"{path}: feature '{column.name}' is a {found}, expected a {kind}")
        values = getattr(feature, kind).value
        if column.shape == "list":
            return [convert(v) for v in values]
        if len(values) != 1:
            raise ValueError(
                f"{path}: feature '{column.name}' has {len(values)} values; _schema.json says it is a scalar"
            )
        return convert(values[0])

    return decode
