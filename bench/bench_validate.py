"""Benchmark: ``weiflow validate`` over a directory of 1,000 generated spec files.

Target: one ``weiflow validate DIR`` process checks 1,000 specs of 3-20 nodes in under 10 s
of wall time on 2 cores, interpreter start and imports included (a CI job or a pre-commit
hook validating a whole repository of pipelines).

About 5% of the files carry one deliberate error (cycling through ``specgen.ERROR_KINDS``:
malformed XML, XSD errors, unknown datasets, undefined ``${...}``, feature-function rules, a
node cycle) so the error path is timed too. Before timing, every file is checked in-process
with ``weiflow.dag.check_file`` (also timed): the clean ones must have no diagnostic at all,
the bad ones at least one error. After the CLI run the script checks that it exited with
status 1 and reported errors in exactly the deliberately bad files.

    .venv/bin/python bench/bench_validate.py [--files 1000] [--repeats 1] [--keep DIR]

The exit status is 0 even when the target is missed (the line then says MISSED).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from specgen import ERROR_KINDS, generate_spec

from weiflow.dag import check_file

DIAGNOSTIC = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<severity>error|warning): ", re.MULTILINE)


def weiflow_command() -> list[str]:
    script = Path(sys.executable).parent / "weiflow"
    return [str(script)] if script.exists() else [sys.executable, "-m", "weiflow"]


def write_specs(
    directory: Path, files: int, *, min_nodes: int, max_nodes: int, bad_fraction: float, seed: int
) -> tuple[list[Path], dict[Path, str], list[int]]:
    """Write the spec files; return them, the deliberately bad ones (with their error kind), and node counts."""
    rng = random.Random(seed)
    bad_indices = sorted(rng.sample(range(files), round(files * bad_fraction)))
    kinds = {index: ERROR_KINDS[k % len(ERROR_KINDS)] for k, index in enumerate(bad_indices)}
    paths: list[Path] = []
    bad: dict[Path, str] = {}
    sizes: list[int] = []
    for index in range(files):
        nodes = rng.randint(min_nodes, max_nodes)
        kind = kinds.get(index)
        if kind == "node-cycle":
            nodes = max(nodes, 2)
        path = directory / f"spec_{index:04d}.xml"
        path.write_text(generate_spec(nodes, seed * 100_003 + index, error=kind), encoding="utf-8")
        paths.append(path)
        sizes.append(nodes)
        if kind is not None:
            bad[path] = kind
    return paths, bad, sizes


def check_in_process(paths: list[Path], bad: dict[Path, str]) -> tuple[float, list[float], list[float]]:
    """check_file over every file (timed); exits if a clean file has a diagnostic or a bad one none."""
    good_ms: list[float] = []
    bad_ms: list[float] = []
    problems: list[str] = []
    start = time.perf_counter()
    for path in paths:
        t0 = time.perf_counter()
        diagnostics = check_file(path)
        elapsed = (time.perf_counter() - t0) * 1000
        if path in bad:
            bad_ms.append(elapsed)
            if not any(d.is_error for d in diagnostics):
                problems.append(f"{path}: deliberate '{bad[path]}' error was not reported")
        else:
            good_ms.append(elapsed)
            problems.extend(str(d) for d in diagnostics)
    total = time.perf_counter() - start
    if problems:
        sys.exit("bench_validate: the generated specs are not as intended:\n" + "\n".join(problems[:20]))
    return total, good_ms, bad_ms


def run_cli(command: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1000, help="spec files to write (default 1000)")
    parser.add_argument("--min-nodes", type=int, default=3, help="smallest spec, in outer nodes (default 3)")
    parser.add_argument("--max-nodes", type=int, default=20, help="largest spec, in outer nodes (default 20)")
    parser.add_argument("--bad-fraction", type=float, default=0.05, help="share of files with an error (0.05)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument("--repeats", type=int, default=1, help="CLI runs; the median is reported (default 1)")
    parser.add_argument(
        "--target-s",
        type=float,
        help="CLI wall-time target in s (default 10 for 1,000 files, scaled with --files)",
    )
    parser.add_argument("--quick", action="store_true", help="200 files, for a fast smoke run")
    parser.add_argument("--keep", metavar="DIR", help="write the specs here and keep them (default: a temp dir)")
    # `./dev bench ARGS` passes ARGS to every bench/*.py: tolerate the other scripts' options.
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        print(f"bench_validate: ignoring options for other benchmarks: {' '.join(unknown)}", file=sys.stderr)
    if args.quick:
        args.files = min(args.files, 200)
    if args.target_s is None:
        args.target_s = 10.0 * args.files / 1000
    if not 1 <= args.min_nodes <= args.max_nodes:
        parser.error("need 1 <= --min-nodes <= --max-nodes")

    with tempfile.TemporaryDirectory(prefix="weiflow-bench-") as tmp:
        directory = Path(args.keep) if args.keep else Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("spec_*.xml"):
            stale.unlink()
        paths, bad, sizes = write_specs(
            directory,
            args.files,
            min_nodes=args.min_nodes,
            max_nodes=args.max_nodes,
            bad_fraction=args.bad_fraction,
            seed=args.seed,
        )
        megabytes = sum(p.stat().st_size for p in paths) / 2**20
        kinds = Counter(bad.values())
        print(
            f"files: {len(paths)} specs in {directory}, {min(sizes)}-{max(sizes)} nodes "
            f"(mean {statistics.fmean(sizes):.1f}), {megabytes:.1f} MiB; {len(bad)} with a deliberate error "
            f"({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))})"
        )
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpu(s), load average {os.getloadavg()[0]:.2f}")

        in_process, good_ms, bad_ms = check_in_process(paths, bad)

        command = weiflow_command()
        startup = statistics.median(run_cli([*command, "--version"])[0] for _ in range(3))
        runs = [run_cli([*command, "validate", str(directory)]) for _ in range(max(1, args.repeats))]
        wall = statistics.median(seconds for seconds, _ in runs)
        result = runs[-1][1]

        verdict = "OK" if wall < args.target_s else "MISSED"
        print(
            f"validate {len(paths)} files (CLI, 1 process): {wall:.2f} s "
            f"(target < {args.target_s:g} s on 2 cores) {verdict}"
        )
        if len(runs) > 1:
            print(f"  median of {len(runs)} runs: {', '.join(f'{s:.2f}' for s, _ in runs)} s")
        print(
            f"  {len(paths) / wall:.0f} files/s; {(wall - startup) / len(paths) * 1000:.2f} ms per file after "
            f"{startup:.2f} s interpreter start + imports (`weiflow --version`)"
        )

        reported = {m.group("file") for m in DIAGNOSTIC.finditer(result.stdout) if m.group("severity") == "error"}
        expected = {str(p) for p in bad}
        summary = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "(no summary)"
        print(f"  exit status {result.returncode}; summary: {summary}")
        print(f"  files reported with errors: {len(reported)}; deliberately bad: {len(expected)}")
        if result.returncode != 1:
            sys.exit(f"bench_validate: expected exit status 1 (some files are bad), got {result.returncode}")
        if reported != expected:
            missing, extra = sorted(expected - reported), sorted(reported - expected)
            sys.exit(f"bench_validate: wrong files reported; missed {missing[:5]}, unexpected {extra[:5]}")

        print(
            f"in-process check_file over {len(paths)} files: {in_process:.2f} s, {len(paths) / in_process:.0f} files/s "
            f"(clean: median {statistics.median(good_ms):.1f} ms, "
            f"with an error: median {statistics.median(bad_ms) if bad_ms else 0:.1f} ms per file)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
