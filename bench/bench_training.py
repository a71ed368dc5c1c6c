"""Wide & deep training throughput: single process against 1 PS + 1 worker and 1 PS + 2 workers.

The same synthetic samples (tests/engines/tensorflow/samples.py: mapped feature ids with a
known signal), the same model and batch size (512) for each layout, each run through the
engine's own launcher (LocalCluster: real tf.distribute.Server processes on 127.0.0.1) and
chief (trainer.py). Examples/s is the chief's steady-state figure: steps after the first
checkpoint interval (which includes tracing and the servers' warm-up) over their time.
Target on a 2-core machine: 1 PS + 1 worker >= 0.7 x single-process.

    .venv/bin/python bench/bench_training.py [--rows 200000] [--steps 3000] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the synthetic samples live with the tests that also use them

sys.path.insert(0, str(REPO / "bench"))

from wide_deep import train  # noqa: E402

from tests.engines.tensorflow.samples import write_samples  # noqa: E402

LAYOUTS = [("single process", 0, 1), ("1 PS + 1 worker", 1, 1), ("1 PS + 2 workers", 1, 2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--quick", action="store_true", help="fewer rows and steps: checks the script runs")
    args, unknown = parser.parse_known_args()
    if unknown:
        print(f"bench_training: ignoring options for other benches: {' '.join(unknown)}", file=sys.stderr)
    rows, steps = (20_000, 300) if args.quick else (args.rows, args.steps)
    every = max(1, steps // 6)
    with tempfile.TemporaryDirectory(prefix="weiflow-bench-tf-") as tmp:
        work = Path(tmp)
        samples_dir = write_samples(work / "samples", rows, files=8)
        print(f"wide & deep, batch 512, {steps} steps, {rows:,} rows in 8 files (checkpoint every {every} steps)")
        rates = {}
        for name, ps, workers in LAYOUTS:
            _job, result = train(
                work / f"ps{ps}-w{workers}",
                samples_dir,
                ps=ps,
                workers=workers,
                steps=steps,
                every=every,
                cache_dir=work / "cache",
            )
            rates[name] = result["steady_examples_per_s"]
            print(f"  {name:18s} {rates[name]:>10,.0f} examples/s  (loss {result['loss']:.4f})", flush=True)
        single = rates["single process"]
        for name in ("1 PS + 1 worker", "1 PS + 2 workers"):
            print(f"  {name} / single process: {rates[name] / single:.2f}x")
        ratio = rates["1 PS + 1 worker"] / single
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        verdict = "OK" if ratio >= 0.7 else "MISSED"
        print(f"1 PS + 1 worker / single process = {ratio:.2f} (target >= 0.7; load {load}) {verdict}")


if __name__ == "__main__":
    main()
