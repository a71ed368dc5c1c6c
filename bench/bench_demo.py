"""The main job at its default size: `weiflow demo run` from nothing to a served model, its quality and cost.

Runs the demo (400k generated impressions, Spark features, 1 PS + 2 workers for 8,000 steps, publish,
``weiflow serve``) in a temporary directory holding a copy of xml_specs/, and prints what its summary
says: the served model's AUC over the Bayes-optimal AUC on the next day's rows (``auc_ratio``; target
>= 0.98, issue 14), the wall time and the peak memory of its largest process. tests/test_readme.py
runs the same command at a quarter of this size in CI.

    .venv/bin/python bench/bench_demo.py [--rows 400000] [--steps 8000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET = 0.98


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=None, help="impressions to generate (default: the demo's, 400k)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the demo's, 8,000)")
    parser.add_argument("--quick", action="store_true", help="20k rows, 600 steps: checks the script runs")
    args, unknown = parser.parse_known_args()
    if unknown:
        print(f"bench_demo: ignoring options for other benches: {' '.join(unknown)}", file=sys.stderr)
    rows, steps = (20_000, 600) if args.quick else (args.rows, args.steps)
    command = [sys.executable, "-m", "weiflow", "demo", "run", "--quiet", "--day", "2026-11-01"]
    command += ["--rows", str(rows)] if rows else []
    command += ["--steps", str(steps)] if steps else []
    with tempfile.TemporaryDirectory(prefix="weiflow-bench-demo-") as tmp:
        work = Path(tmp)
        shutil.copytree(REPO / "xml_specs", work / "xml_specs")
        done = subprocess.run(command, check=False, cwd=work, capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            print(done.stderr[-4000:], file=sys.stderr)
            print(f"bench_demo: the demo failed (exit {done.returncode})")
            return 1
        summary = json.loads((work / "var" / "demo" / "summary.json").read_text())
    served = summary["served"]
    size = f"{rows:,} rows" if rows else "default size"
    print(f"weiflow demo run --quiet ({size}, {f'{steps:,} steps' if steps else 'default steps'}):")
    print(f"  served AUC {served['auc']:.4f}, Bayes-optimal AUC {served['bayes_auc']:.4f} on {served['rows']:,} rows")
    print(f"  auc_ratio {summary['auc_ratio']:.3f} (target >= {TARGET})")
    print(f"  wall {summary['seconds']:.0f} s, peak memory {summary['peak_rss_mib']:.0f} MiB (largest process)")
    met = args.quick or summary["auc_ratio"] >= TARGET
    print(f"bench_demo: {'OK' if met else 'BELOW TARGET'}{' (quick: no target)' if args.quick else ''}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
