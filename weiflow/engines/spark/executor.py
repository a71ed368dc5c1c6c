"""Runs a Spark node: its whole inner DAG as one Spark application, DataFrames flowing in memory.

Only the node's declared datasets touch storage: ``read`` and ``sync`` read them, ``write``
and ``sync`` commit them atomically (staged, then renamed into place with a ``_SUCCESS``
marker). A ``features`` module fits its feature map and applies it; the map travels with the
DataFrames downstream of it and is written as ``_featuremap.json`` into every dataset they
become, next to the data (Spark readers skip files starting with ``_``).
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
from pyspark.errors import PySparkException, PythonException
from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F

from weiflow.dag.compiler import ModulePlan
from weiflow.engines.spark.driver import driver_arguments
from weiflow.engines.spark.features import apply_feature_map, fit_feature_map
from weiflow.engines.spark.submit import (
    SubmittedApplication,
    cluster_mode_problem,
    deploy_mode,
    submit_command,
    submit_environment,
    wants_submit,
)
from weiflow.engines.spark.tfrecord import read_tfrecord, tfrecord_columns, write_tfrecord
from weiflow.errors import ConfigError, DatasetError, ModuleFailed, WeiflowError
from weiflow.features.featuremap import FeatureError, FeatureMap
from weiflow.modelrepo.contracts import SAMPLES_FEATURE_MAP_FILE
from weiflow.runtime import Executor, NodeContext
from weiflow.storage import SUCCESS_MARKER, atomic_output, local_path, sync_dataset
from weiflow.tracking import Event, EventKind

__all__ = ["DEFAULT_MASTER", "SparkExecutor", "spark_conf", "start_session"]

DEFAULT_MASTER = "local[*]"

# Settings WeiFlow applies unless the node's <conf> or WEIFLOW_SPARK_MASTER says otherwise:
# no web UI port, UTC, and no second (empty) _SUCCESS from Hadoop's committer: WeiFlow writes
# its own marker when the dataset is committed.
_DEFAULTS = {
    "spark.ui.enabled": "false",
    "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
    "spark.sql.session.timeZone": "UTC",
}
# And for a driver on this machine: every server on 127.0.0.1. Not for a driver that runs in
# the cluster (deploy mode cluster), which executors on other hosts must reach.
_LOOPBACK = {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}


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
    # Python tasks (the TFRecord data source) need this interpreter's packages, not whatever
    # "python3" is first on PATH, which is what Spark runs otherwise.
    os.environ.setdefault("PYSPARK_PYTHON", conf.get("spark.pyspark.python", sys.executable))
    builder = SparkSession.builder
    for key, value in {**_DEFAULTS, **_LOOPBACK, **conf}.items():
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
        self._app: SubmittedApplication | None = None
        self._lock = threading.Lock()

    def run_node(self, ctx: NodeContext) -> None:
        conf = spark_conf(ctx)
        if wants_submit(conf):
            self._run_submitted(ctx, conf)
        else:
            self.run_in_process(ctx, conf)

    def run_in_process(self, ctx: NodeContext, conf: dict[str, str] | None = None) -> None:
        """Run the node's modules on a Spark application in this process (what the submit path's driver does)."""
        conf = conf or spark_conf(ctx)
        # An application already running in this process (a notebook, a test, spark-submit's
        # driver) is reused and left running; one WeiFlow starts is stopped when the node ends.
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
        except BaseException:
            with self._lock:
                self._session = None
            if existing is None:
                # The node failed or was cancelled: stop the application, but never let stopping replace
                # the error in flight. SIGTERM to run-node's group (Airflow's on_kill) reaches the JVM too,
                # so stopping a session whose JVM is gone fails, and a cancellation (exit 130) would turn
                # into that failure (exit 1).
                try:
                    session.stop()
                except Exception as exc:
                    print(f"weiflow: stopping the Spark session: {exc}", file=sys.stderr)
            raise
        with self._lock:
            self._session = None
        if existing is None:
            session.stop()

    def _run_submitted(self, ctx: NodeContext, conf: dict[str, str]) -> None:
        """Run the node as a spark-submit application, relaying its events; see submit.py."""
        problem = cluster_mode_problem(conf)
        if problem is not None:
            raise ConfigError(f"node '{ctx.node.id}': {problem}")
        cluster = deploy_mode(conf) == "cluster"
        spec = Path(ctx.run.dag.spec.file).resolve()
        run = ctx.run
        args = driver_arguments(
            # In cluster mode the spec travels with --files into the driver's working directory.
            spec=spec.name if cluster else str(spec),
            node=ctx.node.id,
            run_id=ctx.run_id,
            ds=run.ds,
            attempt=ctx.attempt,
            storage=run.settings.storage,
            spec_sha256=run.dag.spec.sha256,
            params={p.name: run.values[p.name] for p in run.dag.spec.params},
        )
        command = submit_command(
            {**_DEFAULTS, **({} if cluster else _LOOPBACK), **conf}, args, files=[str(spec)] if cluster else ()
        )
        failed: list[Event] = []

        def relay(event: Event) -> None:
            if event.kind is EventKind.DATASET_WRITTEN and event.dataset is not None:
                ctx.committed.add(event.dataset.name)
            if event.kind is EventKind.MODULE_FAILED:
                failed.append(event)
            run.tracker.emit(event)

        app = SubmittedApplication(command, env=submit_environment(conf, os.environ), on_event=relay)
        with self._lock:
            self._app = app
        try:
            app.start()
            status = app.wait()
        finally:
            with self._lock:
                self._app = None
            app.stop()
        if app.cancelled:
            raise WeiflowError(f"node '{ctx.node.id}': cancelled; the spark-submit application was stopped")
        if status != 0:
            if failed and failed[-1].module is not None:
                prefix = f"node '{ctx.node.id}', module '{failed[-1].module}': "
                raise ModuleFailed(ctx.node.id, failed[-1].module, (failed[-1].error or "").removeprefix(prefix))
            raise WeiflowError(
                f"node '{ctx.node.id}': spark-submit exited with status {status}; the end of its output:\n"
                + app.error_tail()
            )
        _record_unreported_outputs(ctx)

    def cancel(self) -> None:
        with self._lock:
            session, app = self._session, self._app
        if session is not None:
            # cancel() runs in a signal handler, on a thread that may be inside a py4j call: PySpark pins
            # one JVM connection per Python thread, so calling from here would re-enter that connection
            # ("reentrant call"), fail, and turn the cancellation into a failure. Another thread has its own.
            canceller = threading.Thread(target=_cancel_jobs, args=(session,), name="weiflow-spark-cancel", daemon=True)
            canceller.start()
            canceller.join(_CANCEL_WAIT_S)
        if app is not None:
            app.terminate()

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


_CANCEL_WAIT_S = 10.0  # for the JVM to take the cancellation; the process group's SIGKILL follows anyway


def _cancel_jobs(session: SparkSession) -> None:
    try:
        session.sparkContext.cancelAllJobs()
    except Exception as exc:  # the JVM may be going down already: nothing left to cancel
        print(f"weiflow: cancelling the Spark jobs: {exc}", file=sys.stderr)


_RAISED = re.compile(r"[A-Za-z_][\w.]*(Error|Exception): ")  # a Python traceback's last line


def _spark_message(exc: PySparkException) -> str:
    """The headline of a Spark error: its first line, without the query plan or a JVM stack trace.

    For an error raised in a Python task, the first line only says so; the exception's own
    last line ("ValueError: ...") is what names the problem.
    """
    lines = str(exc).strip().splitlines()
    headline = lines[0] if lines else ""
    if isinstance(exc, PythonException):
        raised = [line for line in lines if _RAISED.match(line)]
        headline = raised[-1] if raised else headline
    return " ".join(headline.split())[:1000]


def _record_unreported_outputs(ctx: NodeContext) -> None:
    """Report the datasets a submitted node committed whose events did not come back.

    In cluster mode the driver's output stays in the cluster (the YARN container's log, the
    driver pod's); the dataset's _SUCCESS marker still says this run committed it and how
    many rows it holds.
    """
    for module in ctx.node.modules:
        for name in module.writes:
            if name in ctx.committed:
                continue
            marker = _success_marker(ctx.dataset(name).uri)
            if marker.get("run_id") == ctx.run_id:
                rows = marker.get("rows")
                ctx.record_dataset(module, name, rows=rows if isinstance(rows, int) else None)


def _success_marker(uri: str) -> dict[str, Any]:
    fs, path = fsspec.core.url_to_fs(uri)
    try:
        with fs.open(f"{str(path).rstrip('/')}/{SUCCESS_MARKER}", "r", encoding="utf-8") as handle:
            marker = json.load(handle)
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


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
    if dataset.format == "tfrecord":
        frame = read_tfrecord(ex.session, dataset.uri, dataset.name)
    else:
        reader = ex.session.read.format(dataset.format)
        if dataset.format == "csv":
            reader = reader.option("header", "true").option("inferSchema", "true")
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
    if path is not None and (path / SAMPLES_FEATURE_MAP_FILE).is_file():
        map_file = path / SAMPLES_FEATURE_MAP_FILE
        feature_map = FeatureMap.from_json(map_file.read_text(), source=str(map_file))
    return _Output(frame, feature_map)


def _write(
    ex: SparkExecutor, ctx: NodeContext, module: ModulePlan, attrs: dict[str, Any], inputs: dict[str, Any]
) -> _Output:
    source = _only_input(inputs)
    dataset = ctx.dataset(attrs["dataset"])
    frame = source.frame
    if dataset.format == "tfrecord":
        if attrs.get("partition-by"):
            raise DatasetError(
                f"dataset '{dataset.name}': partition-by is not supported for tfrecord (TFRecord files have no "
                "partition directories); drop it, or write parquet"
            )
        tfrecord_columns(frame.schema, dataset.name)  # a type Examples cannot hold fails before any Spark job
    if attrs.get("files"):
        frame = frame.repartition(attrs["files"])
    remote = local_path(dataset.uri) is None
    if remote and dataset.format == "tfrecord":
        raise DatasetError(
            f"dataset '{dataset.name}': tfrecord is written through local files (the tensorflow package's "
            f"writer), so {dataset.uri} cannot take it yet; write it to a local or mounted path, or write parquet"
        )
    # Remote storage is staged on the storage itself: executors on other hosts write there directly.
    with atomic_output(dataset.uri, run_id=ctx.run_id, stage_on_storage=remote) as out:
        if dataset.format == "tfrecord":
            out.rows = write_tfrecord(ex.session, frame, out.path, dataset=dataset.name)
        else:
            out.rows = _write_with_spark(
                frame, dataset.format, out.target, attrs.get("partition-by"), observation=f"rows-{module.id}"
            )
        out.schema = {field.name: field.dataType.simpleString() for field in source.frame.schema.fields}
        if source.feature_map is not None:
            with fsspec.open(f"{out.target}/{SAMPLES_FEATURE_MAP_FILE}", "w") as handle:
                handle.write(source.feature_map.to_json())
    ctx.record_dataset(module, dataset.name, rows=out.rows, schema=out.schema)
    return source


def _write_with_spark(
    frame: DataFrame, fmt: str, target: str, partition_by: list[str] | None, *, observation: str
) -> int:
    """Write with one of Spark's own formats; returns the rows written, counted by the write job itself."""
    rows = Observation(observation)
    writer = frame.observe(rows, F.count(F.lit(1)).alias("rows")).write.mode("overwrite").format(fmt)
    if fmt == "csv":
        writer = writer.option("header", "true")
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    writer.save(target)
    return int(rows.get["rows"])


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
