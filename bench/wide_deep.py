"""The benches' wide & deep model, trained through the TensorFlow engine's own launcher and chief.

bench_training times it in each cluster layout; bench_serving (and bench_soak through it) trains it
once and exports it for the prediction service.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from weiflow.engines.tensorflow.cluster import ClusterJob, LocalCluster
from weiflow.engines.tensorflow.executor import model_inputs, read_samples
from weiflow.engines.tensorflow.job import TrainJob

__all__ = ["TF_ENV", "TRAINER", "train"]

TRAINER = (sys.executable, "-m", "weiflow.engines.tensorflow.trainer")
TF_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2"}


def train(
    run_dir: Path,
    samples_dir: Path,
    *,
    ps: int,
    workers: int,
    steps: int,
    every: int,
    cache_dir: Path,
    **job_options: Any,
) -> tuple[Path, dict[str, Any]]:
    """Train on ``samples_dir`` (tests/engines/tensorflow/samples.py's files) in ``run_dir``: batch 512, hidden
    units 64 and 32, and ``job_options`` (TrainJob's: optimizer, learning_rate, dc_variant ...). Returns the job
    file (what ``trainer export`` and ``trainer evaluate`` take) and the chief's result."""
    samples = read_samples("samples", f"file://{samples_dir}")
    run_dir.mkdir(parents=True, exist_ok=True)
    job = TrainJob(
        model="wide_deep",
        inputs=model_inputs(samples, "label"),
        label="label",
        train=samples.data,
        checkpoint_dir=str(run_dir / "checkpoints"),
        result_file=str(run_dir / "result.json"),
        model_attrs={"hidden-units": [64, 32]},
        batch_size=512,
        steps=steps,
        checkpoint_every=every,
        cache_dir=str(cache_dir),
        **job_options,
    )
    job_file = run_dir / "job.json"
    job_file.write_text(job.to_json())
    LocalCluster(run_dir / "logs").run(
        ClusterJob(
            name=f"bench-{ps}-{workers}",
            ps=ps,
            workers=workers,
            chief_argv=(*TRAINER, "train", str(job_file)),
            env=TF_ENV,
        )
    )
    result: dict[str, Any] = json.loads((run_dir / "result.json").read_text())
    return job_file, result
