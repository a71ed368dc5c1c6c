"""Runs a Spark node: its whole inner DAG as one Spark application, DataFrames flowing in memory.

Only the node's declared datasets touch storage: ``read`` and ``sync`` read them, ``write``
and ``sync`` commit them atomically (staged, then renamed into place with a ``_SUCCESS``
marker). A ``features`` module fits its feature map and applies it; the map travels with the
DataFrames downstream of it and is written as ``_featuremap.json`` into every dataset they
become, next to the data (Spark readers skip files starting with ``_``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyspark.errors import PySparkException
from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F

from weiflow.dag.compiler import ModulePlan
from weiflow.engines.spark.features import apply_feature_map, fit_feature_map
from weiflow.errors import DatasetError, ModuleFailed
from weiflow.features.featuremap import FeatureError, FeatureMap
from weiflow.runtime import Executor, NodeContext
from weiflow.storage import atomic_output, local_path, sync_dataset

__all__ = ["DEFAULT_MASTER", "SparkExecutor", "spark_conf", "start_session"]

DEFAULT_MASTER = "local[*]"
FEATURE_MAP_FILE = "_featuremap.json"

# Settings WeiFlow applies unless the node's <conf> or WEIFLOW_SPARK_MASTER says otherwise:
# every server on 127.0.0.1, no web UI port, and no second (empty) _SUCCESS from Hadoop's
# committer: WeiFlow writes its own marker when the dataset is committed.
_DEFAULTS = {
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.ui.enabled": "false",
    "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
    "spark.sql.session.timeZone": "UTC",
}


def spark_conf(ctx: NodeContext) -> dict[str, str]:
    """The node's Spark settings: ``WEIFLOW_SPARK_MASTER`` (else local[*]), then the node's ``<conf>``.

    WeiFlow's defaults go under these when :func:`start_session` starts the application.
    """
    conf = {"spark.master": os.environ.get("WEIFLOW_SPARK_MASTER", DEFAULT_MASTER)}
    conf["spark.app.name"] = f"weiflow:{ctx.run.dag.name}:{ctx.node.id}:{ctx.run_id}"
    for element in ctx.node.spec.config:
        if element.tag == "conf":
            conf[ctx.run.resolve(element.get("name") or "")] = ctx.run.resolve(element.get("value") or "")
    return conf


def start_session(conf: dict[str, str]) -> SparkSession:
    """A Spark application with WeiFlow's defaults (127.0.0.1, no UI, UTC) under ``conf``."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # before the JVM starts
    builder = SparkSession.builder
    for key, value in {**_DEFAULTS, **conf}.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


@dataclass
class _Output:
    """A module's output: a DataFrame and the feature map that produced its columns, if any."""

    frame: DataFrame
    feature_map: FeatureMap | None = None


class SparkExecutor(Executor):
    def __init__(self) -> None:
        self._session: SparkSession | None = None
        self._lock = threading.Lock()

    def run_node(self, ctx: NodeContext) -> None:
        conf = spark_conf(ctx)
        # An application already running in this process (a notebook, a test) is reused and
        # left running; one WeiFlow starts is stopped when the node ends.
        existing = SparkSession.getActiveSession()
        if existing is not None:
            session = existing
            for key, value in conf.items():
                if key.startswith("spark.sql."):
                    session.conf.set(key, value)  # the node's SQL settings still apply
        else:
            session = start_session(conf)
        with self._lock:
            self._session = session
        try:
            session.sparkContext.setJobGroup(f"weiflow-{ctx.node.id}", conf["spark.app.name"], interruptOnCancel=True)
            ctx.run_modules(lambda module, inputs: self._run_module(ctx, module, inputs))
        finally:
            with self._lock:
                self._session = None
            if existing is None:
                session.stop()

    def cancel(self) -> None:
        with self._lock:
            session = self._session
        if session is not None:
            session.sparkContext.cancelAllJobs()

    def _run_module(self, ctx: NodeContext, module: ModulePlan, inputs: dict[str, Any]) -> Any:
        attrs = ctx.module_attrs(module)
        runner = _MODULES[module.type.name]
        try:
            return runner(self, ctx, module, attrs, inputs)
        except PySparkException as exc:
            raise ModuleFailed(ctx.node.id, module.id, _spark_message(exc)) from exc
        except FeatureError as exc:
            raise ModuleFailed(ctx.node.id, module.id, str(exc)) from exc

    @property
    def session(self) -> SparkSession:
        assert self._session is not None, "no Spark application is running"
        return self._session


def _spark_message(exc: PySparkException) -> str:
    """The headline of a Spark error: its first line, without the query plan or a JVM stack trace."""
    return " ".join(str(exc).strip().split("\n", 1)[0].split())[:1000]


def _frame(value: Any) -> _Output:
    if isinstance(value, _Output):
        return value
    raise TypeError(f"expected a DataFrame output, got {type(value).__name__}")


def _only_input(inputs: dict[str, Any]) -> _Output:
    return _frame(next(iter(inputs.values())))


def _columns_hint(frame: DataFrame) -> str:
    return "columns in the input: " + ", ".join(frame.columns)


# --- module types ---------------------------------------------------------------------------


def _read(
    ex: SparkExecutor, ctx: NodeContext, module: ModulePlan, attrs: dict[str, Any], inputs: dict[str, Any]
) -> _Output:
    dataset = ctx.dataset(attrs["dataset"])
    reader = ex.session.read.format(dataset.format)
    if dataset.format == "csv":
        reader = reader.option("header", "true").option("inferSchema", "true")
    if dataset.format == "tfrecord":
        raise DatasetError(f"dataset '{dataset.name}': reading tfrecord with Spark is not supported; use parquet")
    frame = reader.load(dataset.uri)
    columns = attrs.get("columns")
    if columns:
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ModuleFailed(
                ctx.node.id,
                module.id,
                f"columns {', '.join(missing)} are not in dataset '{dataset.name}'; {_columns_hint(frame)}",
            )
        frame = frame.select(*columns)
    feature_map = None
    path = local_path(dataset.uri)
    if path is not None and (path / FEATURE_MAP_FILE).is_file():
        feature_map = FeatureMap.from_json((path / FEATURE_MAP_FILE).read_text(), source=str(path / FEATURE_MAP_FILE))
    return _Output(frame, feature_map)


def _write(
    ex: SparkExecutor, ctx: NodeContext, module: ModulePlan, attrs: dict[str, Any], inputs: dict[str, Any]
) -> _Output:
    source = _only_input(inputs)
    dataset = ctx.dataset(attrs["dataset"])
    if dataset.format == "tfrecord":
        raise DatasetError(f"dataset '{dataset.name}': writing tfrecord from Spark is not supported yet; use parquet")
    frame = source.frame
    if attrs.get("files"):
        frame = frame.repartition(attrs["files"])
    rows = Observation(f"rows-{module.id}")
    frame = frame.observe(rows, F.count(F.lit(1)).alias("rows"))
    with atomic_output(dataset.uri, run_id=ctx.run_id) as out:
        writer = frame.write.mode("overwrite").format(dataset.format)
        if dataset.format == "csv":
            writer = writer.option("header", "true")
        if attrs.get("partition-by"):
            writer = writer.partitionBy(*attrs["partition-by"])
        writer.save(f"file://{out.path}")
        out.rows = int(rows.get["rows"])
        out.schema = {field.name: field.dataType.simpleString() for field in source.frame.schema.fields}
        if source.feature_map is not None:
            (out.path / FEATURE_MAP_FILE).write_text(source.feature_map.to_json())
    ctx.record_dataset(module, dataset.name, rows=out.rows, schema=out.schema)
    return source


def _filter(
    ex: SparkExecutor, ctx: NodeContext, module: ModulePlan, attrs: dict[str, Any], inputs: dict[str, Any]
) -> _Output:
    source = _only_input(inputs)
    return _Output(source.frame.where(F.expr(attrs["condition"])), source.feature_map)


def _select(
    ex: SparkExecutor, ctx: NodeContext, module: ModulePlan, attrs: dict[str, Any], inputs: dict[str, Any]
) -> _Output:
    source = _only_input(inputs)
    return _Output(source.frame.selectExpr(*attrs["columns"]), source.feature_map)


def _sql(
    ex: SparkExecutor, ctx: NodeContext, module: ModulePlan, attrs: dict[str, Any], inputs: dict[str, Any]
) -> _Output:
    # query= is resolved with the other attributes; a <query> element's text is resolved here.
    query = attrs.get("query") or ctx.run.resolve(next(c.text for c in module.spec.children if c.tag == "query"))
    feature_map = None
    for name, value in inputs.items():
        output = _frame(value)
        output.frame.createOrReplaceTempView(name.replace(".", "_"))
        feature_map = feature_map or output.feature_map
    return _Output(ex.session.sql(query), feature_map)


def _join(
    ex: SparkExecutor, ctx: NodeContext, module: ModulePlan, attrs: dict[str, Any], inputs: dict[str, Any]
) -> _Output:
    left, right = (_frame(v) for v in inputs.values())
    for side, output in (("left", left), ("right", right)):
        missing = [c for c in attrs["on"] if c not in output.frame.columns]
        if missing:
            raise ModuleFailed(
                ctx.node.id,
                module.id,
                f"join column(s) {', '.join(missing)} not in the {side} input; {_columns_hint(output.frame)}",
            )
    return _Output(
        left.frame.join(right.frame, on=attrs["on"], how=attrs["how"]), left.feature_map or right.feature_map
    )


def _union(
    ex: SparkExecutor, ctx: NodeContext, module: ModulePlan, attrs: dict[str, Any], inputs: dict[str, Any]
) -> _Output:
    outputs = [_frame(v) for v in inputs.values()]
    frame = outputs[0].frame
    for other in outputs[1:]:
        frame = frame.unionByName(other.frame) if attrs["by-name"] else frame.union(other.frame)
    return _Output(frame, outputs[0].feature_map)


def _sample(
    ex: SparkExecutor, ctx: NodeContext, module: ModulePlan, attrs: dict[str, Any], inputs: dict[str, Any]
) -> _Output:
    source = _only_input(inputs)
    frame = source.frame.sample(withReplacement=attrs["with-replacement"], fraction=attrs["rate"], seed=attrs["seed"])
    return _Output(frame, source.feature_map)


def _split(
    ex: SparkExecutor, ctx: NodeContext, module: ModulePlan, attrs: dict[str, Any], inputs: dict[str, Any]
) -> dict[str, _Output]:
    source = _only_input(inputs)
    parts = source.frame.randomSplit(attrs["ratios"], seed=attrs["seed"])
    return {name: _Output(part, source.feature_map) for name, part in zip(attrs["names"], parts, strict=True)}


def _dedup(
    ex: SparkExecutor, ctx: NodeContext, module: ModulePlan, attrs: dict[str, Any], inputs: dict[str, Any]
) -> _Output:
    source = _only_input(inputs)
    columns = attrs.get("columns")
    if columns:
        missing = [c for c in columns if c not in source.frame.columns]
        if missing:
            raise ModuleFailed(
                ctx.node.id,
                module.id,
                f"column(s) {', '.join(missing)} not in the input; {_columns_hint(source.frame)}",
            )
    return _Output(source.frame.dropDuplicates(columns or None), source.feature_map)


def _sync(
    ex: SparkExecutor, ctx: NodeContext, module: ModulePlan, attrs: dict[str, Any], inputs: dict[str, Any]
) -> None:
    source, target = ctx.dataset(attrs["source"]), ctx.dataset(attrs["dataset"])
    stats = sync_dataset(source.uri, target.uri, run_id=ctx.run_id, checksum=attrs["checksum"])
    ctx.record_dataset(module, target.name, detail=stats)


def _features(
    ex: SparkExecutor, ctx: NodeContext, module: ModulePlan, attrs: dict[str, Any], inputs: dict[str, Any]
) -> _Output:

    source = _only_input(inputs)
    declared = FeatureMap.declare(
        [ctx.run.resolve_element(child) for child in module.spec.children if child.tag == "feature"],
        label=attrs.get("label"),
        keep=list(attrs.get("keep") or []),
    )
    fitted = fit_feature_map(source.frame, declared)
    return _Output(apply_feature_map(source.frame, fitted), fitted)


_MODULES: dict[str, Callable[..., Any]] = {
    "read": _read,
    "write": _write,
    "filter": _filter,
    "select": _select,
    "sql": _sql,
    "join": _join,
    "union": _union,
    "sample": _sample,
    "split": _split,
    "dedup": _dedup,
    "sync": _sync,
    "features": _features,
}
