"""The driver program spark-submit runs for a WeiFlow Spark node (the submit path, see submit.py).

::

    spark-submit ... weiflow/engines/spark/driver.py SPEC NODE RUN_ID DS \\
        --attempt N --storage URI --spec-sha256 HEX [--param NAME=VALUE ...]

It rebuilds the run context the submitting ``run-node`` had (the same spec, run id, logical
date, params and storage root), then runs the node's modules in this process, on the Spark
application spark-submit configured, exactly as an in-process node runs them. Its tracking
events go to stdout, each line marked with ``EVENT_PREFIX``, for the submitting process to
pass on to its own tracker; node events stay with that process.

Exit status: 0 success, 1 the node failed, 2 bad arguments or a spec that is not the one
submitted.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from weiflow.tracking import Event

__all__ = ["driver_arguments", "main"]


def driver_arguments(
    *,
    spec: str,
    node: str,
    run_id: str,
    ds: date,
    attempt: int,
    storage: str,
    spec_sha256: str,
    params: Mapping[str, str],
) -> list[str]:
    """The driver's command line; :func:`main` parses it back."""
    args = [spec, node, run_id, ds.isoformat(), "--attempt", str(attempt), "--storage", storage]
    args += ["--spec-sha256", spec_sha256]
    for name, value in params.items():
        args += ["--param", f"{name}={value}"]
    return args


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weiflow-spark-driver", description="Run one WeiFlow Spark node.")
    parser.add_argument("spec")
    parser.add_argument("node")
    parser.add_argument("run_id")
    parser.add_argument("ds", type=date.fromisoformat)
    parser.add_argument("--attempt", type=int, default=1)
    parser.add_argument("--storage", required=True)
    parser.add_argument("--spec-sha256", required=True)
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    return parser


class _StdoutTracker:
    """Prints each event as one marked line; the submitting process relays them."""

    def __init__(self, prefix: str, stream: TextIO) -> None:
        self.prefix = prefix
        self.stream = stream

    def emit(self, event: Event) -> None:
        self.stream.write(f"{self.prefix}{event.to_json()}\n")
        self.stream.flush()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Imported only now: run as a script, this file's own directory is sys.path[0] and its
    # sibling modules (executor, features, ...) would shadow any top-level module of that name.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]

    from dataclasses import replace

    from pyspark.sql import SparkSession

    from weiflow.config import load_settings
    from weiflow.dag import compile_file
    from weiflow.engines.spark.executor import SparkExecutor
    from weiflow.engines.spark.submit import EVENT_PREFIX
    from weiflow.errors import WeiflowError
    from weiflow.processes import die_with_parent
    from weiflow.runtime import NodeContext, RunContext, parse_param_overrides

    # The JVM that spark-submit started is this process's parent: if it dies, so does the node.
    die_with_parent(signal.SIGTERM)
    try:
        settings = replace(load_settings(), storage=args.storage)
        dag = compile_file(args.spec, max_bytes=settings.max_spec_bytes, allowed_callables=settings.allowed_callables)
        if dag.spec.sha256 != args.spec_sha256:
            print(
                f"weiflow driver: {args.spec} changed since the node was submitted (sha256 {dag.spec.sha256}, "
                f"submitted {args.spec_sha256}); rerun the node",
                file=sys.stderr,
            )
            return 2
        tracker = _StdoutTracker(EVENT_PREFIX, sys.stdout)
        run = RunContext.create(
            dag,
            settings=settings,
            tracker=tracker,
            run_id=args.run_id,
            ds=args.ds,
            overrides=parse_param_overrides(args.param),
        )
        ctx = NodeContext(run, dag.node(args.node), attempt=args.attempt)
    except WeiflowError as exc:
        print(f"weiflow driver: {exc}", file=sys.stderr)
        return 2
    # spark-submit has put the node's conf into this application; the executor uses the
    # running application as it is.
    session = SparkSession.builder.getOrCreate()
    try:
        SparkExecutor().run_in_process(ctx)
    except WeiflowError as exc:
        print(f"weiflow driver: {exc}", file=sys.stderr)
        return 1
    finally:
        session.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
