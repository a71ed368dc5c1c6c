"""Benchmark: specs as Airflow DAGs, parsed by Airflow's own DagBag (200 generated specs).

Target: under 20 ms per spec to turn a spec into an Airflow DAG, so that the DAG processor
re-parses a few hundred pipelines cheaply. Measured four ways, on 200 specs of 3-20 nodes
(``specgen.generate_spec``):

1. DAG processor, cold: what Airflow's DAG processor does per file with WeiFlow's SpecBundle:
   fork a process from one that has Airflow imported, parse one generated per-spec DAG file
   with a ``DagBag``, exit. Timed on a sample of files, once with a plain parent and once with
   a parent that has WeiFlow's core imported already (``./dev airflow`` arranges that through
   ``airflow_local_settings.py``), because the cold figure is mostly the import of WeiFlow.
2. ``DagBag`` over the SpecBundle's folder of per-spec files, in one warm process: the per-spec
   cost of WeiFlow's loader plus Airflow's own checks (this is the figure held to the target).
3. ``DagBag`` over ``dags/`` (the single-file loader reading the whole spec folder).
4. In-process build: ``weiflow.airflow.load_dag`` per spec (compile + build), median and p95.

    .venv/bin/python bench/bench_dags.py [--specs 200] [--repeats 3] [--cold-sample 20]

The exit status is 0 even when the target is missed (the line then says MISSED).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from specgen import generate_spec

REPO = Path(__file__).resolve().parent.parent
LOADER = REPO / "dags" / "weiflow_dags.py"


def p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def write_specs(directory: Path, count: int, min_nodes: int, max_nodes: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    sizes = []
    for index in range(count):
        nodes = rng.randint(min_nodes, max_nodes)
        text = generate_spec(nodes, seed * 100_003 + index)
        (directory / f"spec_{index:04d}.xml").write_text(text, encoding="utf-8")
        sizes.append(nodes)
    return sizes


def forked_parse_ms(files: list[Path], bundle: Path) -> list[float]:
    """Parse each file in a forked child, as Airflow's DAG processor does; milliseconds per file."""
    from airflow.dag_processing.dagbag import DagBag

    timings = []
    for path in files:
        read, write = os.pipe()
        started = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # the child: parse, report, exit without running the parent's cleanup
            os.close(read)
            bag = DagBag(dag_folder=path, bundle_path=bundle, bundle_name="bench")
            os.write(write, b"ok" if len(bag.dags) == 1 and not bag.import_errors else b"error")
            os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            status = pipe.read()
        os.waitpid(pid, 0)
        timings.append((time.perf_counter() - started) * 1000)
        if status != b"ok":
            sys.exit(f"bench_dags: {path} did not parse into one DAG in the forked child")
    return timings


def cold_parse_ms(files: list[Path], bundle: Path, *, preload: Path | None) -> list[float]:
    """``forked_parse_ms`` run from a fresh interpreter that has imported Airflow (and has run the
    ``preload`` file), like the DAG processor's manager process."""
    argv = [sys.executable, __file__, "--fork-worker", str(bundle), *map(str, files)]
    if preload is not None:
        argv += ["--preload", str(preload)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"bench_dags: the forking worker failed:\n{done.stderr[-2000:]}")
    return [float(x) for x in done.stdout.split()]


def fork_worker(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("bundle")
    parser.add_argument("--preload", metavar="FILE", help="run this file first (airflow_local_settings.py)")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    import airflow.sdk  # noqa: F401  # the DAG processor has Airflow imported before it forks

    if args.preload:  # ./dev airflow's airflow_local_settings.py, which Airflow runs in each process
        exec(compile(Path(args.preload).read_text(), args.preload, "exec"), {})
    elif any(name.startswith("weiflow") for name in sys.modules):
        sys.exit("bench_dags: WeiFlow is imported already; the cold figure would be wrong")
    timings = forked_parse_ms([Path(f) for f in args.files], Path(args.bundle))
    print(" ".join(f"{t:.3f}" for t in timings))
    return 0


def timed(function: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall seconds of ``repeats`` calls after one warm-up, and the last result."""
    result = function()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples), result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--fork-worker"]:
        return fork_worker(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--specs", type=int, default=200, help="generated specs (default 200)")
    parser.add_argument("--min-nodes", type=int, default=3, help="smallest spec, in outer nodes (default 3)")
    parser.add_argument("--max-nodes", type=int, default=20, help="largest spec, in outer nodes (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument("--repeats", type=int, default=3, help="timed DagBag parses, after a warm-up (default 3)")
    parser.add_argument("--cold-sample", type=int, default=20, help="files parsed in forked children (default 20)")
    parser.add_argument("--target-ms", type=float, default=20.0, help="per-spec target in ms (default 20)")
    parser.add_argument("--quick", action="store_true", help="50 specs, 1 repeat, 5 cold files")
    # `./dev bench ARGS` passes ARGS to every bench/*.py: tolerate the other scripts' options.
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        print(f"bench_dags: ignoring options for other benchmarks: {' '.join(unknown)}", file=sys.stderr)
    if args.quick:
        args.specs, args.repeats, args.cold_sample = min(args.specs, 50), 1, min(args.cold_sample, 5)
    if not 1 <= args.min_nodes <= args.max_nodes:
        parser.error("need 1 <= --min-nodes <= --max-nodes")

    with tempfile.TemporaryDirectory(prefix="weiflow-bench-dags-") as tmp:
        root = Path(tmp)
        # Airflow reads its configuration on first import: keep it away from the user's ~/airflow.
        os.environ.update(
            {
                "AIRFLOW_HOME": str(root / "airflow"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_FOLDER": str(LOADER.parent),
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
                "WEIFLOW_SPECS": str(root / "specs"),
            }
        )
        os.environ.pop("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", None)
        specs, files = root / "specs", root / "dag_files"
        specs.mkdir()
        sizes = write_specs(specs, args.specs, args.min_nodes, args.max_nodes, args.seed)
        print(
            f"specs: {len(sizes)} generated, {min(sizes)}-{max(sizes)} nodes (mean {statistics.fmean(sizes):.1f}), "
            f"{sum(p.stat().st_size for p in specs.iterdir()) / 2**20:.1f} MiB"
        )
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpu(s), load average {os.getloadavg()[0]:.2f}")

        from weiflow.airflow.bundle import sync_dag_files
        from weiflow.airflow.local import LOCAL_SETTINGS

        dag_files = sync_dag_files(specs, LOADER, files)
        sample = dag_files[:: max(1, len(dag_files) // max(1, args.cold_sample))][: args.cold_sample]
        settings = root / "airflow_local_settings.py"
        settings.write_text(LOCAL_SETTINGS, encoding="utf-8")
        cold = cold_parse_ms(sample, files, preload=None)
        warm_parent = cold_parse_ms(sample, files, preload=settings)
        print(
            f"DAG processor, one forked process per spec file ({len(sample)} files): "
            f"median {statistics.median(cold):.0f} ms per spec with a plain parent; "
            f"{statistics.median(warm_parent):.1f} ms with WeiFlow imported in the parent"
        )

        from airflow.dag_processing.dagbag import DagBag

        def bundle_bag() -> DagBag:
            return DagBag(dag_folder=files, bundle_path=files, bundle_name="bench")

        seconds, bag = timed(bundle_bag, args.repeats)
        if bag.import_errors or len(bag.dags) != len(sizes):
            sys.exit(f"bench_dags: {len(bag.dags)} DAGs, import errors: {list(bag.import_errors)[:3]}")
        per_spec = seconds / len(sizes) * 1000
        verdict = "OK" if per_spec < args.target_ms else "MISSED"
        print(
            f"DagBag of the SpecBundle's {len(sizes)} per-spec files: {seconds:.2f} s, {per_spec:.1f} ms per spec "
            f"(target < {args.target_ms:g} ms) {verdict}"
        )
        tasks = sum(len(dag.tasks) for dag in bag.dags.values())
        print(f"  {len(bag.dags)} DAGs, {tasks} tasks; median of {args.repeats} parses after a warm-up")

        seconds, bag = timed(lambda: DagBag(dag_folder=LOADER.parent), args.repeats)
        if bag.import_errors or len(bag.dags) != len(sizes):
            sys.exit(f"bench_dags: dags/ loader gave {len(bag.dags)} DAGs, errors {list(bag.import_errors)[:3]}")
        print(
            f"DagBag of dags/ (one loader file, {len(sizes)} specs): {seconds:.2f} s, "
            f"{seconds / len(sizes) * 1000:.1f} ms per spec"
        )

        sys.path.insert(0, str(REPO))
        from operators import WeiflowNodeOperator
        from weiflow.airflow import load_dag

        paths = sorted(specs.glob("*.xml"))
        for path in paths:  # warm-up
            load_dag(path, operator=WeiflowNodeOperator)
        build_ms: list[float] = []
        pauses: list[float] = []
        gc_started = [0.0]

        def gc_timer(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                gc_started[0] = time.perf_counter()
            else:
                pauses.append((time.perf_counter() - gc_started[0]) * 1000)

        gc.callbacks.append(gc_timer)
        try:
            for path in paths:
                started = time.perf_counter()
                load_dag(path, operator=WeiflowNodeOperator)
                build_ms.append((time.perf_counter() - started) * 1000)
        finally:
            gc.callbacks.remove(gc_timer)
        print(
            f"load_dag in-process (compile + build): median {statistics.median(build_ms):.1f} ms, "
            f"p95 {p95(build_ms):.1f} ms, max {max(build_ms):.1f} ms per spec"
        )
        print(
            f"  the cyclic garbage collector ran {len(pauses)} times in there, {sum(pauses):.0f} ms in all, "
            f"longest pause {max(pauses, default=0):.0f} ms (the process holds the DagBags' DAGs above)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
