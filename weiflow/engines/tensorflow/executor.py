"""Runs a TensorFlow node: ``train`` on a parameter-server cluster, then ``evaluate`` and ``export``.

This process is the launcher. It imports no TensorFlow: every TensorFlow process (the chief
that trains, evaluates or exports; the PS and worker servers) is a child it owns, started
through a cluster backend (cluster.py, kubernetes.py) or directly, and stopped on every
ending: success, failure, cancellation. Work files (the job, checkpoints, logs, results)
live in ``<var>/tensorflow/<pipeline>/<run id>/<node>/<module>/``, so a retry of the same
run id resumes training from its last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow.parquet as pq

from weiflow.curves import draw_curve, read_progress
from weiflow.dag.compiler import ModulePlan
from weiflow.engines.tensorflow import CANNED_MODELS, DC_LAMBDA_DEFAULTS, METRICS, dc_attrs_mistake
from weiflow.engines.tensorflow.cluster import (
    STOP_GRACE_S,
    ClusterBackend,
    ClusterFailed,
    ClusterJob,
    LocalCluster,
    exit_text,
    own_process,
)
from weiflow.engines.tensorflow.job import InputData, ModelInput, TrainJob
from weiflow.errors import DatasetError, ModuleFailed
from weiflow.features.featuremap import FeatureMap
from weiflow.modelrepo.contracts import (
    EXPORT_METRICS_PATH,
    FEATURE_MAP_PATH,
    SAMPLE_SCHEMA_FILE,
    SAMPLES_FEATURE_MAP_FILE,
    TRAINING_CURVE_PATH,
    TRAINING_PROGRESS_PATH,
)
from weiflow.processes import stop_groups
from weiflow.registry import default_registry
from weiflow.runtime import Executor, NodeContext
from weiflow.spec import did_you_mean
from weiflow.storage import atomic_output, local_path
from weiflow.tracking import EventKind

__all__ = ["TensorflowExecutor", "read_samples"]

_CHIEF = (sys.executable, "-m", "weiflow.engines.tensorflow.trainer")
# Embedding rows of all categorical features together: 2^27 rows of 8 floats is 4 GiB per table
# and its optimizer slots; beyond that a model belongs on sharded variables (not done yet).
_MAX_EMBEDDING_ROWS = 1 << 27
_CHILD_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
# How often the launcher looks for new progress points while the chief trains.
_PROGRESS_POLL_S = 0.5


@dataclass(frozen=True)
class Samples:
    """A dataset as the trainer reads it, and the feature map it was made with (if any)."""

    data: InputData
    feature_map: FeatureMap | None


@dataclass(frozen=True)
class TrainedModel:
    """The train module's output: the job (model, inputs, checkpoint dir) later modules restore."""

    job: TrainJob
    job_file: Path
    feature_map: FeatureMap | None
    progress_file: Path | None = None  # the chief's progress points (every attempt's)
    curve: Path | None = None  # the training curve drawn from them (PNG)


def read_samples(name: str, uri: str) -> Samples:
    """The files and numeric columns of a TFRecord or Parquet dataset on local storage."""
    path = local_path(uri)
    if path is None or not path.is_dir():
        raise DatasetError(f"dataset '{name}': {uri} is not a local directory (the local backend reads local storage)")
    feature_map = None
    if (path / SAMPLES_FEATURE_MAP_FILE).is_file():
        map_file = path / SAMPLES_FEATURE_MAP_FILE
        feature_map = FeatureMap.from_json(map_file.read_text(), source=str(map_file))
    files = sorted(str(p) for p in path.rglob("*") if p.is_file() and not p.name.startswith(("_", ".")))
    if not files:
        raise DatasetError(f"dataset '{name}' at {uri} has no data files")
    schema_file = path / SAMPLE_SCHEMA_FILE
    if schema_file.is_file():
        schema = json.loads(schema_file.read_text())
        columns = {c["name"]: c["dtype"] for c in schema["columns"] if c.get("shape", "scalar") == "scalar"}
        return Samples(InputData("tfrecord", files, columns, schema.get("rows")), feature_map)
    try:
        parquet = pq.ParquetDataset(files)
    except Exception as exc:  # pyarrow raises several types for "not parquet"
        raise DatasetError(
            f"dataset '{name}' at {uri}: neither TFRecord written by WeiFlow (no {SAMPLE_SCHEMA_FILE}) "
            f"nor Parquet ({exc})"
        ) from exc
    columns = {}
    for field in parquet.schema:
        kind = str(field.type)
        if kind.startswith(("int", "uint", "bool")):
            columns[field.name] = "int64"
        elif kind in ("float", "double", "halffloat"):
            columns[field.name] = "float"
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    return Samples(InputData("parquet", files, columns, rows), feature_map)


def model_inputs(samples: Samples, label: str) -> list[ModelInput]:
    """The feature map's features (categorical with cardinalities); without one, every numeric column."""
    if samples.feature_map is not None:
        cards = samples.feature_map.cardinalities()
        return [ModelInput(f.name, cards.get(f.name)) for f in samples.feature_map.features]
    return [ModelInput(name) for name in samples.data.columns if name != label]


class _Call(NamedTuple):
    """One module run: what every module function gets."""

    ex: TensorflowExecutor
    ctx: NodeContext
    module: ModulePlan
    attrs: dict[str, Any]
    inputs: dict[str, Any]
    work: Path


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", text)


def _dns_name(*parts: str) -> str:
    """A pod-name-safe job name: lowercase, [a-z0-9-], at most 40 characters, with a hash for uniqueness."""
    raw = "-".join(parts)
    slug = re.sub(r"[^a-z0-9-]+", "-", raw.lower()).strip("-")[:30].strip("-")
    return f"{slug}-{hashlib.sha1(raw.encode()).hexdigest()[:8]}"


class TensorflowExecutor(Executor):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._backend: ClusterBackend | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._cancelled = threading.Event()
        self.measured: dict[str, float] = {}  # evaluate metrics so far in this node, for export to carry

    def run_node(self, ctx: NodeContext) -> None:
        ctx.run_modules(lambda module, inputs: self._run_module(ctx, module, inputs))

    def cancel(self) -> None:
        self._cancelled.set()
        with self._lock:
            backend, child = self._backend, self._child
        if backend is not None:
            backend.stop()
        if child is not None:
            stop_groups([child], STOP_GRACE_S)

    def _run_module(self, ctx: NodeContext, module: ModulePlan, inputs: dict[str, Any]) -> Any:
        attrs = ctx.module_attrs(module)
        work = ctx.run.settings.var_dir / "tensorflow" / _safe(ctx.run.dag.name) / _safe(ctx.run_id)
        work = work / ctx.node.id / module.id
        work.mkdir(parents=True, exist_ok=True)
        runner = _MODULES[module.type.name]
        try:
            return runner(_Call(self, ctx, module, attrs, inputs, work))
        except ClusterFailed as exc:
            raise ModuleFailed(ctx.node.id, module.id, str(exc)) from exc

    # --- children ---------------------------------------------------------------------------

    def _run_cluster(self, backend: ClusterBackend, job: ClusterJob) -> None:
        with self._lock:
            if self._cancelled.is_set():
                raise ClusterFailed("the node was cancelled")
            self._backend = backend
        try:
            backend.run(job)
        finally:
            with self._lock:
                self._backend = None

    def _run_chief(self, command: str, args: list[str], log: Path) -> None:
        """Run ``trainer.py command args`` to its end (evaluate, export), owned like a cluster's processes."""
        argv = [*_CHIEF, command, *args]
        with self._lock:
            if self._cancelled.is_set():
                raise ClusterFailed("the node was cancelled")
            self._child = proc = own_process(argv, env=_child_env(), log=log)
        try:
            code = proc.wait()
        finally:
            stop_groups([proc], STOP_GRACE_S)
            with self._lock:
                self._child = None
        if code != 0:
            lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
            raise ClusterFailed(f"{command} {exit_text(code)}; last lines of {log}:\n" + "\n".join(lines[-15:]))


def _child_env() -> dict[str, str]:
    return {**os.environ, **_CHILD_ENV}


def _cluster_attrs(ctx: NodeContext) -> dict[str, Any]:
    for element in ctx.node.spec.config:
        if element.tag == "cluster":
            values = ctx.run.resolve_element(element)
            return {
                "ps": int(values.get("ps", 0)),
                "workers": int(values.get("workers", 1)),
                "backend": values.get("backend", "local"),
                "image": values.get("image"),
                "namespace": values.get("namespace", "default"),
                "volume-claim": values.get("volume-claim"),
            }
    return {"ps": 0, "workers": 1, "backend": "local", "image": None, "namespace": "default", "volume-claim": None}


def _backend(ctx: NodeContext, module: ModulePlan, cluster: dict[str, Any], work: Path) -> ClusterBackend:
    if cluster["backend"] == "kubernetes":
        from weiflow.engines.tensorflow.kubernetes import KubernetesCluster

        if not cluster["image"]:
            raise ModuleFailed(
                ctx.node.id, module.id, '<cluster backend="kubernetes"> needs image="..." (an image with weiflow)'
            )
        # The pods read the job and write checkpoints and results in the launcher's work directory:
        # with a claim, they mount it at the same path (see docs/tensorflow-kubernetes.md).
        claim = cluster["volume-claim"]
        volumes = {claim: str(ctx.run.settings.var_dir.resolve())} if claim else None
        return KubernetesCluster(image=cluster["image"], namespace=cluster["namespace"], volumes=volumes)
    return LocalCluster(work / "logs")


# --- module types ---------------------------------------------------------------------------


def _train(call: _Call) -> TrainedModel:
    ex, ctx, module, attrs, _, work = call
    dataset = ctx.dataset(attrs["dataset"])
    samples = read_samples(dataset.name, dataset.uri)
    label = attrs["label"]
    if "label" not in module.spec.attrs and samples.feature_map is not None and samples.feature_map.label:
        label = samples.feature_map.label
    features = model_inputs(samples, label)
    wanted = [f.name for f in features] + [label]
    missing = [name for name in wanted if name not in samples.data.columns]
    if missing:
        found = ", ".join(f"{k} ({v})" for k, v in samples.data.columns.items())
        raise ModuleFailed(
            ctx.node.id,
            module.id,
            f"dataset '{dataset.name}' has no numeric column {', '.join(missing)}; numeric columns: {found}",
        )
    ids = sum(f.cardinality or 0 for f in features)
    if ids > _MAX_EMBEDDING_ROWS:
        widest = max(features, key=lambda f: f.cardinality or 0)
        raise ModuleFailed(
            ctx.node.id,
            module.id,
            f"the categorical features have {ids:,} ids in all, more than {_MAX_EMBEDDING_ROWS:,} embedding rows; "
            f"'{widest.name}' alone has {widest.cardinality:,}: hash it into fewer ids (combinehash buckets=)",
        )
    custom = default_registry().engines["tensorflow"].models
    if attrs["model"] not in CANNED_MODELS and attrs["model"] not in custom:
        known = [*CANNED_MODELS, *custom]
        hint = did_you_mean(attrs["model"], known) or f"models: {', '.join(known)}"
        raise ModuleFailed(ctx.node.id, module.id, f"unknown model '{attrs['model']}' ({hint})")
    # Validation reports this for literal attributes; templated ones are only known now.
    mistake = dc_attrs_mistake(attrs["optimizer"], module.spec.attrs, attrs["dc-variant"])
    if mistake is not None:
        _, why, fix = mistake
        raise ModuleFailed(ctx.node.id, module.id, f"{why}: {fix}")
    dc_lambda = attrs.get("dc-lambda")
    steps = attrs.get("steps")
    if steps is None:
        if samples.data.rows is None:
            raise ModuleFailed(ctx.node.id, module.id, "give steps=: the dataset's row count is unknown")
        steps = max(1, -(-samples.data.rows * attrs.get("epochs", 1) // attrs["batch-size"]))
    job = TrainJob(
        model=attrs["model"],
        inputs=features,
        label=label,
        train=samples.data,
        checkpoint_dir=str(work / "checkpoints"),
        result_file=str(work / "result.json"),
        model_attrs={k: attrs[k] for k in ("hidden-units", "embedding-dim") if attrs.get(k) is not None},
        custom_models={name: custom[name] for name in custom},
        optimizer=attrs["optimizer"],
        learning_rate=attrs["learning-rate"],
        dc_variant=attrs["dc-variant"],
        dc_lambda=DC_LAMBDA_DEFAULTS[attrs["dc-variant"]] if dc_lambda is None else dc_lambda,
        dc_mean_square_decay=attrs["dc-mean-square-decay"],
        batch_size=attrs["batch-size"],
        steps=steps,
        checkpoint_every=attrs["checkpoint-every"],
        seed=attrs["seed"],
        cache_dir=str(work.parent / "cache"),
        progress_file=str(work / "progress.jsonl"),
    )
    job_file = work / "job.json"
    job_file.write_text(job.to_json())
    result_file = Path(job.result_file)
    result_file.unlink(missing_ok=True)
    cluster = _cluster_attrs(ctx)
    backend = _backend(ctx, module, cluster, work)
    cluster_job = ClusterJob(
        name=_dns_name("wf", ctx.run.dag.name, ctx.node.id, ctx.run_id),
        ps=cluster["ps"],
        workers=cluster["workers"],
        chief_argv=(*_CHIEF, "train", str(job_file)),
        env=_CHILD_ENV,
        labels={"weiflow.io/pipeline": _safe(ctx.run.dag.name)[:63], "weiflow.io/node": ctx.node.id},
    )
    started = time.monotonic()
    expected = len(cluster_job.servers) + 1 if cluster_job.ps else 1
    reporter = threading.Thread(target=_report_processes, args=(ctx, module, backend, ex, expected), daemon=True)
    reporter.start()
    progress = _ProgressFollower(ctx, module, Path(str(job.progress_file)))
    try:
        ex._run_cluster(backend, cluster_job)
    finally:
        progress.stop()
    result = json.loads(result_file.read_text())
    result["wall_s"] = round(time.monotonic() - started, 3)
    ctx.run.event(EventKind.METRICS, node=ctx.node.id, module=module.id, attempt=ctx.attempt, detail=result)
    curve = _draw_curve(progress.path, work / "training-curve.png", f"{ctx.run.dag.name}: {ctx.node.id}/{module.id}")
    return TrainedModel(job, job_file, samples.feature_map, progress.path, curve)


class _ProgressFollower:
    """Follows the chief's progress file while it trains and reports each new point as module.progress.

    Starts at the file's end: the points of an earlier attempt of this run (a retry resumes training)
    were reported by that attempt. A line is reported once it is complete.
    """

    def __init__(self, ctx: NodeContext, module: ModulePlan, path: Path) -> None:
        self.ctx, self.module, self.path = ctx, module, path
        self._offset = path.stat().st_size if path.is_file() else 0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="weiflow-progress", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while not self._stopped.wait(_PROGRESS_POLL_S):
            self._read()
        self._read()  # the last points, written just before the chief exited

    def _read(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.splitlines():
            try:
                point = json.loads(line)
            except ValueError:
                continue  # not ours to judge: the curve skips it too
            self.ctx.run.event(
                EventKind.PROGRESS,
                node=self.ctx.node.id,
                module=self.module.id,
                attempt=self.ctx.attempt,
                detail=point,
            )

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


def _draw_curve(progress: Path, target: Path, title: str) -> Path | None:
    """The training curve of ``progress`` as a PNG at ``target`` (written atomically); None without points."""
    points = read_progress(progress)
    if not points:
        return None
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(draw_curve(points, title=title))
    tmp.replace(target)
    return target


def _report_processes(
    ctx: NodeContext, module: ModulePlan, backend: ClusterBackend, ex: TensorflowExecutor, expected: int
) -> None:
    """Tell the run log which processes the cluster is made of, once all ``expected`` have started."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not ex._cancelled.is_set():
        processes = backend.processes()
        if len(processes) >= expected and ex._backend is backend:
            ctx.run.event(
                EventKind.CLUSTER_STARTED,
                node=ctx.node.id,
                module=module.id,
                attempt=ctx.attempt,
                detail={"processes": processes},
            )
            return
        time.sleep(0.05)


def _trained(module: ModulePlan, inputs: dict[str, Any]) -> TrainedModel:
    value = next(iter(inputs.values()))
    if not isinstance(value, TrainedModel):
        raise TypeError(f"module '{module.id}' needs a train module as its input")
    return value


def _evaluate(call: _Call) -> TrainedModel:
    ex, ctx, module, attrs, inputs, work = call
    trained = _trained(module, inputs)
    unknown = [m for m in attrs["metrics"] if m not in METRICS]
    if unknown:
        raise ModuleFailed(ctx.node.id, module.id, f"unknown metric '{unknown[0]}'; metrics: {', '.join(METRICS)}")
    name = attrs.get("dataset")
    data = read_samples(name, ctx.dataset(name).uri).data if name else trained.job.train
    spec_file, out_file = work / "evaluate.json", work / "metrics.json"
    spec_file.write_text(json.dumps({"data": asdict(data), "metrics": attrs["metrics"]}))
    out_file.unlink(missing_ok=True)
    ex._run_chief("evaluate", [str(trained.job_file), str(spec_file), str(out_file)], work / "evaluate.log")
    metrics = json.loads(out_file.read_text())
    ctx.run.event(
        EventKind.METRICS,
        node=ctx.node.id,
        module=module.id,
        attempt=ctx.attempt,
        detail={"dataset": name or "(training data)", **metrics},
    )
    # Kept for an export later in this node (its sibling, usually): a deploy gate reads them there.
    ex.measured.update({k: float(v) for k, v in metrics.items() if k in METRICS and math.isfinite(v)})
    return trained


def _export(call: _Call) -> TrainedModel:
    ex, ctx, module, attrs, inputs, work = call
    trained = _trained(module, inputs)
    dataset = ctx.dataset(attrs["dataset"])
    model_name = attrs.get("model-name") or ctx.run.dag.name
    # TF Serving loads the highest numeric version; seconds keep later exports on top.
    version = attrs.get("version") or int(time.time())
    with atomic_output(dataset.uri, run_id=ctx.run_id) as out:
        version_dir = out.path / model_name / str(version)
        version_dir.parent.mkdir(parents=True, exist_ok=True)
        ex._run_chief("export", [str(trained.job_file), str(version_dir)], work / "export.log")
        if trained.feature_map is not None:
            featuremap = version_dir / FEATURE_MAP_PATH  # where the repository and serving look for it
            featuremap.parent.mkdir(exist_ok=True)
            featuremap.write_text(trained.feature_map.to_json())
        # The metrics evaluate modules measured before it in this node, for a publish gate
        # (require=) in a later node: another process, perhaps another machine.
        carried = {"pipeline": ctx.run.dag.name, "run_id": ctx.run_id, "metrics": dict(ex.measured)}
        metrics_file = version_dir / EXPORT_METRICS_PATH
        metrics_file.parent.mkdir(exist_ok=True)
        metrics_file.write_text(json.dumps(carried, indent=1, sort_keys=True) + "\n")
        # The training curve beside the model, and the points it was drawn from.
        if trained.curve is not None and trained.progress_file is not None:
            shutil.copyfile(trained.curve, version_dir / TRAINING_CURVE_PATH)
            shutil.copyfile(trained.progress_file, version_dir / TRAINING_PROGRESS_PATH)
    ctx.record_dataset(module, dataset.name, detail={"model": model_name, "version": version})
    return trained


_MODULES: dict[str, Callable[[_Call], TrainedModel]] = {"train": _train, "evaluate": _evaluate, "export": _export}
