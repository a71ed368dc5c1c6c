"""Benchmark: compile one large generated spec (default 200 outer nodes) in-process.

Target: ``compile_file`` of a 200-node spec in under 50 ms (median), so that ``weiflow
validate`` stays interactive and the Airflow DAG processor can re-parse specs cheaply.

Prints the median and p95 of repeated ``weiflow.dag.compile_file`` calls, then the breakdown
into parse + XSD validation (``weiflow.spec.parse_spec``) and the semantic checks and
compilation (``weiflow.dag.compile_spec``), and the time the cyclic garbage collector took
inside the timed calls. With ``--profile`` (or when the target is missed) it also prints the
top cProfile hotspots inside weiflow/.

    .venv/bin/python bench/bench_compile.py [--nodes 200] [--repeats 30] [--profile]

The exit status is 0 even when the target is missed (the line then says MISSED).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import math
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from specgen import generate_spec

from weiflow.dag import check_file, compile_file, compile_spec
from weiflow.spec import parse_spec

PACKAGE_DIR = str(Path(compile_file.__code__.co_filename).resolve().parents[1])  # .../weiflow


def p95(samples: list[float]) -> float:
    """Nearest-rank 95th percentile."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


class GcTimer:
    """Wall time the cyclic garbage collector spends, per generation, while installed."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections: Counter[int] = Counter()
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._start
            self.collections[info["generation"]] += 1

    def __enter__(self) -> GcTimer:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


def timed(fn: Callable[[], object], repeats: int, gc_timer: GcTimer | None = None) -> tuple[list[float], list[float]]:
    """Wall times of ``repeats`` calls in ms, and the GC time inside each call in ms."""
    times: list[float] = []
    gc_times: list[float] = []
    for _ in range(repeats):
        before = gc_timer.seconds if gc_timer else 0.0
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
        gc_times.append(((gc_timer.seconds if gc_timer else 0.0) - before) * 1000)
    return times, gc_times


def describe(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    engines = Counter(part.split('"', 1)[0] for part in text.split('engine="')[1:])
    mix = ", ".join(f"{count} {engine}" for engine, count in engines.most_common())
    return (
        f"{sum(engines.values())} nodes ({mix}), {text.count('<module ')} modules, "
        f"{text.count('<feature ')} features, {text.count('<dataset ')} datasets, "
        f"{len(text.encode()) / 1024:.0f} KiB, {text.count(chr(10))} lines"
    )


def profile(path: Path, repeats: int, top: int) -> None:
    # The collector is off while profiling: a collection is charged to whichever function happens
    # to allocate when it triggers, which scatters its cost over the table. GC is measured above.
    gc.collect()
    gc.disable()
    profiler = cProfile.Profile()
    try:
        profiler.enable()
        for _ in range(repeats):
            compile_file(path)
        profiler.disable()
    finally:
        gc.enable()
    stats = pstats.Stats(profiler)
    entries = stats.stats  # type: ignore[attr-defined]
    rows = []
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in entries.items():
        if not str(Path(filename).resolve()).startswith(PACKAGE_DIR):
            continue
        where = f"{Path(filename).resolve().relative_to(Path(PACKAGE_DIR).parent)}:{line}({func})"
        rows.append((tottime / repeats * 1000, cumtime / repeats * 1000, ncalls // repeats, where))
    print(f"\ncProfile of compile_file, {repeats} calls (per-call ms; GC off; profiling inflates the figures):")
    for title, key in (("by own time", 0), ("by cumulative time", 1)):
        print(f"  top {top} in weiflow/ {title}:")
        print(f"    {'own':>7} {'cum':>7} {'calls':>7}  function")
        for own, cum, calls, where in sorted(rows, key=lambda r: -r[key])[:top]:
            print(f"    {own:7.2f} {cum:7.2f} {calls:7d}  {where}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=200, help="outer nodes in the generated spec (default 200)")
    parser.add_argument("--seed", type=int, default=1, help="generator seed (default 1)")
    parser.add_argument("--repeats", type=int, default=30, help="timed compile_file calls (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    parser.add_argument("--target-ms", type=float, default=50.0, help="median target in ms (default 50)")
    parser.add_argument("--quick", action="store_true", help="10 repeats, for a fast smoke run")
    parser.add_argument("--profile", action="store_true", help="always print cProfile hotspots")
    parser.add_argument("--no-profile", action="store_true", help="never profile, even when the target is missed")
    parser.add_argument("--top", type=int, default=12, help="hotspots to list when profiling (default 12)")
    # `./dev bench ARGS` passes ARGS to every bench/*.py: tolerate the other scripts' options.
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        print(f"bench_compile: ignoring options for other benchmarks: {' '.join(unknown)}", file=sys.stderr)
    if args.quick:
        args.repeats = min(args.repeats, 10)

    with tempfile.TemporaryDirectory(prefix="weiflow-bench-") as tmp:
        path = Path(tmp) / f"bench_{args.nodes}.xml"
        path.write_text(generate_spec(args.nodes, args.seed), encoding="utf-8")
        diagnostics = check_file(path)
        if diagnostics:  # a broken generator would make every figure below meaningless
            sys.exit("bench_compile: the generated spec is not clean:\n" + "\n".join(map(str, diagnostics)))

        print(f"spec: {describe(path)}")
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpu(s), load average {os.getloadavg()[0]:.2f}")
        for _ in range(args.warmup):
            compile_file(path)

        gc.collect()
        with GcTimer() as gc_timer:
            total, gc_ms = timed(lambda: compile_file(path), args.repeats, gc_timer)

        gc.collect()
        parse_ms: list[float] = []
        semantic_ms: list[float] = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            spec, structural = parse_spec(path)
            middle = time.perf_counter()
            if spec is None:
                sys.exit(f"bench_compile: parse_spec returned no model: {structural}")
            compile_spec(spec, None, structural)
            end = time.perf_counter()
            parse_ms.append((middle - start) * 1000)
            semantic_ms.append((end - middle) * 1000)

        median = statistics.median(total)
        verdict = "OK" if median < args.target_ms else "MISSED"
        print(
            f"compile {args.nodes}-node spec: median {median:.1f} ms, p95 {p95(total):.1f} ms "
            f"(target < {args.target_ms:g} ms) {verdict}"
        )
        print(f"  {args.repeats} timed calls after {args.warmup} warm-ups; min {min(total):.1f} ms")
        parse_median, semantic_median = statistics.median(parse_ms), statistics.median(semantic_ms)
        both = parse_median + semantic_median
        print(
            f"  parse + XSD schema (parse_spec):      median {parse_median:6.1f} ms, p95 {p95(parse_ms):6.1f} ms"
            f"  ({parse_median / both:.0%})"
        )
        print(
            f"  semantic checks   (compile_spec):     median {semantic_median:6.1f} ms, p95 {p95(semantic_ms):6.1f} ms"
            f"  ({semantic_median / both:.0%})"
        )
        print(
            f"  cyclic GC inside compile_file:        median {statistics.median(gc_ms):6.1f} ms, "
            f"mean {statistics.fmean(gc_ms):6.1f} ms per call "
            f"(collections gen0/1/2: {gc_timer.collections[0]}/{gc_timer.collections[1]}/{gc_timer.collections[2]})"
        )

        if args.profile or (verdict == "MISSED" and not args.no_profile):
            profile(path, max(3, min(args.repeats, 10)), args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
