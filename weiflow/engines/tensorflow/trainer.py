"""The chief: trains a :class:`TrainJob`, evaluates a checkpoint, exports a SavedModel.

Run by the launcher as a child process (``python -m weiflow.engines.tensorflow.trainer``)::

    train JOB.json
    evaluate JOB.json DATA.json OUT.json
    export JOB.json OUT_DIR

``train`` reads ``TF_CONFIG``: with parameter servers in the cluster it is the coordinator
of ``ParameterServerStrategy`` + ``ClusterCoordinator`` (variables on the PS, steps
scheduled on the workers); without, it trains in this process. Either way it resumes from
the job's last checkpoint, so a retried node continues where the killed one stopped.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf

from weiflow.curves import binned_auc
from weiflow.engines.tensorflow import DC_LAMBDA_DEFAULTS
from weiflow.engines.tensorflow.dcasgd import DelayCompensatedSGD, require_reads
from weiflow.engines.tensorflow.job import InputData, TrainJob
from weiflow.engines.tensorflow.models import FeatureInput, build_model

__all__ = ["Progress", "load_trained", "main", "make_dataset"]

_DTYPES = {"int64": tf.int64, "float": tf.float32}
_SHUFFLE_BUFFER = 10_000
# Steps per scheduled function: one coordinator round trip per call, not per step.
_STEPS_PER_CALL = 100
# Steps per iteration of the in-graph loop. A tf.while_loop whose body spans the worker and
# the PS trades loop-control messages between them on every iteration; unrolling four steps
# into each quarters those round trips at a small tracing cost (bench_training: 1 PS + 1
# worker went from 0.55x to about 0.77x single-process; 2 and 8 measured lower or no better).
_UNROLL = 4
# Predicted probabilities are counted into this many equal bins per call, by class, for the
# training AUC of the call's batches: exact but for ties inside a bin (1/1000 wide).
_AUC_BINS = 1000


def _write_json(path: str | Path, data: Mapping[str, Any]) -> None:
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(target)


# --- input ----------------------------------------------------------------------------------


def _parse_spec(data: InputData, wanted: list[str]) -> dict[str, tf.io.FixedLenFeature]:
    spec = {}
    for name in wanted:
        dtype = data.columns.get(name)
        if dtype not in _DTYPES:
            found = ", ".join(f"{k} ({v})" for k, v in sorted(data.columns.items()))
            raise ValueError(f"column '{name}' is not a numeric column of the samples; columns: {found}")
        spec[name] = tf.io.FixedLenFeature([], _DTYPES[dtype], default_value=tf.zeros([], _DTYPES[dtype]))
    return spec


def make_dataset(
    data: InputData,
    job: TrainJob,
    *,
    shards: tuple[int, Any] | None = None,
    training: bool = True,
) -> tf.data.Dataset:
    """Batches of ``(features, label)`` from TFRecord files; ``shards=(n, i)`` keeps the i-th of n parts.

    Files are split between shards when there are enough of them, records otherwise, so
    workers always read disjoint parts.
    """
    spec = _parse_spec(data, [i.name for i in job.inputs] + [job.label])
    files = tf.data.Dataset.from_tensor_slices(sorted(data.files))
    by_file = shards is not None and len(data.files) >= shards[0]
    if shards is not None and by_file:
        files = files.shard(shards[0], shards[1])
    if training:
        files = files.shuffle(len(data.files), seed=job.seed, reshuffle_each_iteration=True)
    records = files.interleave(
        tf.data.TFRecordDataset, cycle_length=4, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training
    )
    if shards is not None and not by_file:
        records = records.shard(shards[0], shards[1])
    if training:
        records = records.shuffle(_SHUFFLE_BUFFER, seed=job.seed).repeat()
    batches = records.batch(job.batch_size, drop_remainder=training)

    def parse(serialized: tf.Tensor) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        parsed = tf.io.parse_example(serialized, spec)
        label = tf.cast(parsed.pop(job.label), tf.float32)
        return parsed, label

    return batches.map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def as_tfrecord(data: InputData, cache_dir: str | None) -> InputData:
    """Parquet samples converted once into TFRecord shards (one per file), which every worker reads natively.

    tf.data has no Parquet reader that runs on a remote worker, so the chief converts; the
    cache is keyed by the files' names and sizes, so a retried node converts nothing.
    """
    if data.format == "tfrecord":
        return data
    import pyarrow.parquet as pq

    if cache_dir is None:
        raise ValueError("Parquet input needs a cache directory for its TFRecord conversion")
    key = hashlib.sha256(json.dumps([(f, Path(f).stat().st_size) for f in sorted(data.files)]).encode()).hexdigest()
    target = Path(cache_dir) / key[:16]
    if not (target / "_DONE").is_file():
        target.mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(sorted(data.files)):
            table = pq.read_table(name, columns=list(data.columns))
            tmp = target / f".part-{i:05d}.tmp"
            with tf.io.TFRecordWriter(str(tmp)) as writer:
                columns = {c: table.column(c).to_pylist() for c in data.columns}
                for row in range(table.num_rows):
                    writer.write(_example(columns, data.columns, row))
            tmp.replace(target / f"part-{i:05d}.tfrecord")
        (target / "_DONE").write_text("")
    files = sorted(str(p) for p in target.glob("part-*.tfrecord"))
    return InputData("tfrecord", files, data.columns, data.rows)


def _example(columns: Mapping[str, list[Any]], dtypes: Mapping[str, str], row: int) -> bytes:
    feature = {}
    for name, values in columns.items():
        value = values[row]
        if value is None:
            continue  # a missing feature parses as its default, like Spark's TFRecord writer's nulls
        if dtypes[name] == "int64":
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))
        elif dtypes[name] == "float":
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[float(value)]))
    return bytes(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


# --- model ----------------------------------------------------------------------------------


def _custom_builders(job: TrainJob) -> dict[str, Callable[..., Any]]:
    builders = {}
    for name, target in job.custom_models.items():
        module, _, attr = target.partition(":")
        builders[name] = getattr(importlib.import_module(module), attr)
    return builders


def new_model(job: TrainJob) -> tf.Module:
    inputs = [FeatureInput(i.name, i.cardinality) for i in job.inputs]
    return build_model(job.model, inputs, {**job.model_attrs, "seed": job.seed}, _custom_builders(job))


def _optimizer(job: TrainJob) -> Any:
    # TensorFlow's own optimizers, not Keras's (Keras 3 does not run under ParameterServerStrategy).
    # Their update ops run on the PS that holds each variable and update embeddings sparsely.
    v1 = tf.compat.v1.train
    if job.optimizer == "sgd":
        return v1.GradientDescentOptimizer(job.learning_rate)
    if job.optimizer == "adagrad":
        return v1.AdagradOptimizer(job.learning_rate)
    if job.optimizer == "adam":
        return v1.AdamOptimizer(job.learning_rate)
    if job.optimizer == "dc-asgd":
        dc_lambda = DC_LAMBDA_DEFAULTS[job.dc_variant] if job.dc_lambda is None else job.dc_lambda
        return DelayCompensatedSGD(
            job.learning_rate,
            dc_lambda,
            adaptive=job.dc_variant == "adaptive",
            decay=job.dc_mean_square_decay,
        )
    raise ValueError(f"unknown optimizer '{job.optimizer}'")


def _checkpoint(model: tf.Module, step: tf.Variable, optimizer: Any = None) -> tf.train.Checkpoint:
    if optimizer is None:
        return tf.train.Checkpoint(model=model, step=step)
    return tf.train.Checkpoint(model=model, step=step, optimizer=optimizer)


def load_trained(job: TrainJob) -> tf.Module:
    """The model as the last checkpoint left it, in this process (no cluster needed)."""
    model = new_model(job)
    step = tf.Variable(0, dtype=tf.int64)
    latest = tf.train.latest_checkpoint(job.checkpoint_dir)
    if latest is None:
        raise FileNotFoundError(f"no checkpoint in {job.checkpoint_dir}: the train module has not finished a step")
    _checkpoint(model, step).restore(latest).expect_partial()  # optimizer slots are not needed here
    return model


# --- commands -------------------------------------------------------------------------------


def train(job: TrainJob) -> dict[str, Any]:
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    distributed = bool(cluster.get("ps"))
    data = as_tfrecord(job.train, job.cache_dir)
    coordinator = None
    if distributed:
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver(rpc_layer="grpc")
        strategy = tf.distribute.ParameterServerStrategy(resolver)
        coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    else:
        strategy = tf.distribute.get_strategy()

    with strategy.scope():
        model = new_model(job)
        optimizer = _optimizer(job)
        step = tf.Variable(0, dtype=tf.int64, name="global_step")
    checkpoint = _checkpoint(model, step, optimizer)
    manager = tf.train.CheckpointManager(checkpoint, job.checkpoint_dir, max_to_keep=2)
    restored = manager.restore_or_initialize()
    start = int(step.numpy())
    variables = model.trainable_variables
    compensated = isinstance(optimizer, DelayCompensatedSGD)
    if compensated:
        require_reads(model, job.model)

    def step_fn(features: dict[str, tf.Tensor], labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            if compensated:
                logits, reads = model.call_with_reads(features)
            else:
                logits = model(features)
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits))
        grads_and_vars = zip(tape.gradient(loss, variables), variables, strict=True)
        if compensated:
            # The reads are what this step's forward pass computed with: the weights' backup.
            optimizer.apply_compensated(grads_and_vars, reads)
        else:
            optimizer.apply_gradients(grads_and_vars)
        bins = tf.clip_by_value(tf.cast(tf.sigmoid(logits) * _AUC_BINS, tf.int32), 0, _AUC_BINS - 1)
        positive = tf.math.bincount(bins, weights=labels, minlength=_AUC_BINS, maxlength=_AUC_BINS)
        negative = tf.math.bincount(bins, weights=1.0 - labels, minlength=_AUC_BINS, maxlength=_AUC_BINS)
        return loss, positive, negative

    def steps(
        next_step: Callable[[], tuple[tf.Tensor, tf.Tensor, tf.Tensor]],
        loops: tf.Tensor,
        unroll: int,
        worker: tf.Tensor,
    ) -> dict[str, tf.Tensor]:
        # Inside a tf.function: `loops` iterations of `unroll` steps each, then one counter update
        # (the counter lives on a PS too). Returns the call's mean loss and its predictions binned by
        # class, which the chief turns into a progress point.
        total = tf.constant(0.0)
        positive = negative = tf.zeros([_AUC_BINS])
        for _ in tf.range(loops):
            for _ in range(unroll):
                loss, pos, neg = next_step()
                total, positive, negative = total + loss, positive + pos, negative + neg
        step.assign_add(tf.cast(loops, tf.int64) * unroll)
        count = tf.cast(loops * unroll, tf.float32)
        return {"loss": total / count, "positive": positive, "negative": negative, "worker": worker}

    if coordinator is not None:
        workers = len(cluster.get("worker", []))

        def dataset_fn(_: tf.distribute.InputContext) -> tf.data.Dataset:
            index = tf.distribute.coordinator.experimental_get_current_worker_index()
            return make_dataset(data, job, shards=(workers, index))

        per_worker = coordinator.create_per_worker_dataset(strategy.distribute_datasets_from_function(dataset_fn))
        iterator = iter(per_worker)

        @tf.function
        def remote_steps(it: Any, loops: tf.Tensor, unroll: int) -> dict[str, tf.Tensor]:
            worker = tf.distribute.coordinator.experimental_get_current_worker_index()
            return steps(lambda: strategy.run(step_fn, args=next(it)), loops, unroll, worker)

        def run_steps(count: int, progress: Progress) -> None:
            calls = _calls(count)
            results = [
                coordinator.schedule(remote_steps, args=(iterator, tf.constant(loops), unroll))
                for loops, unroll in calls
            ]
            # In scheduling order, each as soon as it is done: the workers keep the queue busy meanwhile.
            for (loops, unroll), result in zip(calls, results, strict=True):
                progress.add(loops * unroll, result.fetch())
            coordinator.join()
    else:
        local = iter(make_dataset(data, job))

        @tf.function
        def local_steps(loops: tf.Tensor, unroll: int) -> dict[str, tf.Tensor]:
            return steps(lambda: step_fn(*next(local)), loops, unroll, tf.constant(0))

        def run_steps(count: int, progress: Progress) -> None:
            for loops, unroll in _calls(count):
                progress.add(loops * unroll, local_steps(tf.constant(loops), unroll))

    done, started = start, time.monotonic()
    progress = Progress(job, start, started)
    warm: tuple[int, float] | None = None  # after the first interval: tracing and warm-up are behind us
    while done < job.steps:
        count = min(job.checkpoint_every - done % job.checkpoint_every, job.steps - done)
        run_steps(count, progress)
        done += count
        if warm is None:
            warm = (done, time.monotonic())
        manager.save(checkpoint_number=done)
        print(f"step {done}/{job.steps} loss {progress.loss:.5f}", flush=True)
    progress.close()
    ended = time.monotonic()
    return {
        "steps": done,
        "resumed_from": start if restored else None,
        "loss": progress.loss,
        "examples_per_s": _rate(done - start, job.batch_size, ended - started),
        "steady_examples_per_s": _rate(done - warm[0], job.batch_size, ended - warm[1]) if warm else None,
        "seconds": round(ended - started, 3),
        "workers": len(cluster.get("worker", [])) if distributed else 0,
        "ps": len(cluster.get("ps", [])),
    }


class Progress:
    """Training progress, one point per finished call: appended to ``job.progress_file`` as a JSON line.

    A point holds the steps done so far (all workers), the worker that ran the call, its mean loss,
    the AUC of its batches (from the binned predictions) and the examples per second since the
    start: PROGRESS_FIELDS of weiflow.tracking, which the launcher reports as module.progress.
    """

    def __init__(self, job: TrainJob, start: int, started: float) -> None:
        self.job, self.done, self.trained, self.started = job, start, 0, started
        self.loss = float("nan")
        self._out = Path(job.progress_file).open("a", encoding="utf-8") if job.progress_file else None  # noqa: SIM115

    def add(self, steps: int, call: Mapping[str, Any]) -> None:
        self.done += steps
        self.trained += steps
        self.loss = float(call["loss"])
        seconds = time.monotonic() - self.started
        point: dict[str, Any] = {
            "step": self.done,
            "steps": self.job.steps,
            "worker": int(call["worker"]),
            "loss": round(self.loss, 6),
            "examples_per_s": round(self.trained * self.job.batch_size / seconds, 1) if seconds > 0 else None,
            "seconds": round(seconds, 3),
        }
        auc = binned_auc(call["positive"], call["negative"])
        if auc is not None:
            point["auc"] = round(auc, 6)
        if self._out is not None:
            self._out.write(json.dumps(point) + "\n")
            self._out.flush()  # the launcher follows the file while training runs

    def close(self) -> None:
        if self._out is not None:
            self._out.close()


def _calls(count: int) -> list[tuple[int, int]]:
    """``count`` steps as (loops, unroll) calls of at most _STEPS_PER_CALL steps; a partial block, one step per loop."""
    calls = []
    for begin in range(0, count, _STEPS_PER_CALL):
        blocks, rest = divmod(min(_STEPS_PER_CALL, count - begin), _UNROLL)
        calls += [(blocks, _UNROLL)] if blocks else []
        calls += [(rest, 1)] if rest else []
    return calls


def _rate(steps: int, batch_size: int, seconds: float) -> float | None:
    return round(steps * batch_size / seconds, 1) if steps > 0 and seconds > 0 else None


def evaluate(job: TrainJob, data: InputData, metrics: list[str]) -> dict[str, float]:
    import keras

    model = load_trained(job)
    known: dict[str, Any] = {
        "auc": keras.metrics.AUC(num_thresholds=10_000),
        "logloss": keras.metrics.BinaryCrossentropy(),
        "accuracy": keras.metrics.BinaryAccuracy(),
    }
    chosen = {name: known[name] for name in metrics}
    predict = tf.function(lambda features: tf.sigmoid(model(features)))
    examples = 0
    for features, labels in make_dataset(as_tfrecord(data, job.cache_dir), job, training=False):
        probabilities = predict(features)
        for metric in chosen.values():
            metric.update_state(labels, probabilities)
        examples += int(tf.size(labels))
    if examples == 0:
        raise ValueError("the evaluation dataset has no rows")
    result = {name: float(metric.result()) for name, metric in chosen.items()}
    result["examples"] = examples
    return result


def export(job: TrainJob, out_dir: Path) -> None:
    """A SavedModel whose ``serving_default`` takes the mapped feature ids and returns probability and logit."""
    model = load_trained(job)
    signature = {
        i.name: tf.TensorSpec([None], tf.int64 if i.cardinality else tf.float32, name=i.name) for i in job.inputs
    }

    @tf.function(input_signature=[signature])
    def serve(features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        logit = model(features)
        return {"probability": tf.sigmoid(logit), "logit": logit}

    holder = tf.Module()
    holder.model = model
    holder.serve = serve
    tf.saved_model.save(holder, str(out_dir), signatures={"serving_default": serve.get_concrete_function()})


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command, job = args[0], TrainJob.load(args[1])
    if command == "train":
        _write_json(job.result_file, train(job))
    elif command == "evaluate":
        spec = json.loads(Path(args[2]).read_text())
        result = evaluate(job, InputData(**spec["data"]), spec["metrics"])
        _write_json(args[3], result)
    elif command == "export":
        export(job, Path(args[2]))
    else:
        print(f"unknown command {command!r}; expected train, evaluate or export", file=sys.stderr)
        return 2
    sys.stdout.flush()
    # Without this, the interpreter's exit waits on the coordinator's threads and RPCs to
    # servers the launcher is about to stop.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
