"""Plain asynchronous SGD against DC-ASGD (delay-compensated) on 1 PS + 2 workers and 1 PS + 4 workers.

The same synthetic samples (tests/engines/tensorflow/samples.py: mapped feature ids with a
known signal), model (wide & deep), batch size, steps and learning rate for every run, each
through the engine's own launcher (LocalCluster: real tf.distribute.Server processes on
127.0.0.1) and chief (trainer.py); then the chief's evaluate command on a held-out set. A
single-process SGD run (no staleness at all) is the reference that asynchronous training
should approach. No target: the figures are what they are, run-to-run noise included
(asynchronous training is not deterministic), so compare the gaps with that noise.

    .venv/bin/python bench/bench_dcasgd.py [--rows 200000] [--steps 1500] [--learning-rates 1.0,4.0] [--quick]

Each learning rate gets the five runs below: the larger one is where staleness should start to
matter, if it does at all on this problem.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the synthetic samples live with the tests that also use them

sys.path.insert(0, str(REPO / "bench"))

from wide_deep import TRAINER, train  # noqa: E402

from tests.engines.tensorflow.samples import write_samples  # noqa: E402
from weiflow.engines.tensorflow.executor import read_samples  # noqa: E402

# (name, ps, workers, optimizer)
RUNS = [
    ("single process, sgd", 0, 1, "sgd"),
    ("1 PS + 2 workers, sgd", 1, 2, "sgd"),
    ("1 PS + 2 workers, dc-asgd", 1, 2, "dc-asgd"),
    ("1 PS + 4 workers, sgd", 1, 4, "sgd"),
    ("1 PS + 4 workers, dc-asgd", 1, 4, "dc-asgd"),
]


def run(
    work: Path,
    samples_dir: Path,
    holdout_dir: Path,
    args: argparse.Namespace,
    *,
    ps: int,
    workers: int,
    optimizer: str,
    learning_rate: float,
) -> dict[str, Any]:
    started = time.monotonic()
    job_file, result = train(
        work / f"ps{ps}-w{workers}-{optimizer}-lr{learning_rate}",
        samples_dir,
        ps=ps,
        workers=workers,
        steps=args.steps,
        every=args.steps,
        cache_dir=work / "cache",
        optimizer=optimizer,
        learning_rate=learning_rate,
        dc_variant=args.dc_variant,
        dc_lambda=args.dc_lambda,
    )
    wall = time.monotonic() - started
    run_dir = job_file.parent
    holdout = read_samples("holdout", f"file://{holdout_dir}").data
    spec, out = run_dir / "evaluate.json", run_dir / "metrics.json"
    spec.write_text(json.dumps({"data": asdict(holdout), "metrics": ["auc", "logloss"]}))
    subprocess.run([*TRAINER, "evaluate", str(job_file), str(spec), str(out)], check=True)
    return {**result, **json.loads(out.read_text()), "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--learning-rates", default="1.0,4.0", help="comma-separated; five runs each")
    parser.add_argument("--dc-variant", choices=("adaptive", "constant"), default="adaptive")
    parser.add_argument("--dc-lambda", type=float, default=None, help="default: the engine's for the variant")
    parser.add_argument("--quick", action="store_true", help="fewer rows and steps: checks the script runs")
    args, unknown = parser.parse_known_args()
    if unknown:
        print(f"bench_dcasgd: ignoring options for other benches: {' '.join(unknown)}", file=sys.stderr)
    if args.quick:
        args.rows, args.steps, args.learning_rates = 20_000, 200, "1.0"
    rates = [float(x) for x in args.learning_rates.split(",")]
    with tempfile.TemporaryDirectory(prefix="weiflow-bench-dc-") as tmp:
        work = Path(tmp)
        samples_dir = write_samples(work / "samples", args.rows, files=8, seed=0)
        holdout_dir = write_samples(work / "holdout", max(1000, args.rows // 5), files=1, seed=1)
        lam = "default" if args.dc_lambda is None else args.dc_lambda
        print(
            f"wide & deep, batch 512, {args.steps} steps, {args.rows:,} rows "
            f"in 8 files, holdout {max(1000, args.rows // 5):,} rows; dc-asgd {args.dc_variant}, lambda {lam}"
        )
        print(
            f"  {'lr':>4s} {'run':28s} {'AUC':>7s} {'log loss':>9s} {'train loss':>10s} {'train s':>8s} {'wall s':>7s}"
        )
        for rate in rates:
            for name, ps, workers, optimizer in RUNS:
                r = run(
                    work,
                    samples_dir,
                    holdout_dir,
                    args,
                    ps=ps,
                    workers=workers,
                    optimizer=optimizer,
                    learning_rate=rate,
                )
                print(
                    f"  {rate:4g} {name:28s} {r['auc']:7.4f} {r['logloss']:9.4f} {r['loss']:10.4f} "
                    f"{r['seconds']:8.1f} {r['wall_s']:7.1f}",
                    flush=True,
                )
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"(load {load}; train s: the chief's training time; wall s: the cluster from start to stop)")


if __name__ == "__main__":
    main()
