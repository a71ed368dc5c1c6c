"""``weiflow demo``: the demo's own commands; ``data`` writes a day of generated feed impressions.

Loaded by name from weiflow/cli.py. Bad flags exit 2 with argparse's message, which names the
flag; errors are raised as :class:`~weiflow.errors.ConfigError` (exit 2) or
:class:`~weiflow.errors.DatasetError` (exit 1) for the caller to print.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path

from weiflow.config import Settings
from weiflow.demo.data import DEFAULT_HOLDOUT_FRACTION, DEFAULT_ROWS, GENERATOR_REPORT, generate, write_impressions
from weiflow.demo.run import DEFAULT_SPEC, DEFAULT_STEPS
from weiflow.errors import ConfigError

__all__ = ["default_impressions_uri", "main"]


def default_impressions_uri(storage: str, day: date) -> str:
    """Where ``weiflow demo data`` writes a day unless told: feed_ctr.xml's events path, under storage."""
    return f"{storage.rstrip('/')}/feed/impressions/{day.isoformat()}"


def _whole_number(minimum: int, too_small: str) -> Callable[[str], int]:
    """An argparse type: an int of at least ``minimum``; argparse's message then names the flag."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value}: {too_small}")
        return value

    return parse


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a date: expected YYYY-MM-DD") from None


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not in (0, 1]")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weiflow demo", description="The demo's commands.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    p = actions.add_parser(
        "data",
        help="write a day of generated feed impressions (Parquet) with their Bayes-optimal AUC",
        description="Draw raw feed impressions from a known generative model (docs/demo-data.md) and write "
        f"them as a Parquet dataset, atomically, with {GENERATOR_REPORT} beside them: rows, positive rate, "
        "and the Bayes-optimal AUC and log loss over all rows and over the holdout rows.",
    )
    p.add_argument(
        "--rows", type=_whole_number(1, "give at least 1 row"), default=DEFAULT_ROWS, help=f"default {DEFAULT_ROWS:,}"
    )
    p.add_argument("--day", type=_day, help="YYYY-MM-DD: the impressions' date and partition (default: today, UTC)")
    p.add_argument("--out", metavar="URI", help="dataset URI (default: <storage>/feed/impressions/<day>)")
    p.add_argument(
        "--seed",
        type=_whole_number(0, "a seed is 0 or more"),
        default=0,
        help="the users, items and effects follow the seed alone, the impressions the seed and the day (default 0)",
    )
    p.add_argument(
        "--holdout-fraction",
        type=_fraction,
        default=DEFAULT_HOLDOUT_FRACTION,
        help=f"share of rows whose Bayes AUC is reported as the holdout's (default {DEFAULT_HOLDOUT_FRACTION})",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")

    p = actions.add_parser(
        "run",
        help="the whole platform on one day of generated data: features, PS training, publish, serve, score",
        description="Generate a day of impressions, run xml_specs/feed_ctr.xml on it (Spark features, training on "
        "1 PS + 2 workers, evaluate, export, publish), serve the model with weiflow serve, score a few raw "
        "requests and print a summary (also var/demo/summary.json). Run it from the repository root.",
    )
    p.add_argument(
        "--rows",
        type=_whole_number(1000, "give at least 1000 rows"),
        default=DEFAULT_ROWS,
        help=f"default {DEFAULT_ROWS:,}",
    )
    p.add_argument("--day", type=_day, help="YYYY-MM-DD (default: today, UTC)")
    p.add_argument("--steps", type=_whole_number(1, "train at least 1 step"), default=DEFAULT_STEPS)
    p.add_argument("--seed", type=_whole_number(0, "a seed is 0 or more"), default=0)
    p.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help=f"default {DEFAULT_SPEC}")
    p.add_argument("--quiet", action="store_true", help="no progress, only the summary (for CI)")
    return parser


def _figure(value: float | None) -> str:
    return "n/a (one class only)" if value is None else f"{value:.4f}"


def _data(args: argparse.Namespace, settings: Settings) -> int:
    day: date = args.day or datetime.now(UTC).date()
    uri = args.out or default_impressions_uri(settings.storage, day)
    started = time.perf_counter()
    impressions = generate(args.rows, day, seed=args.seed, holdout_fraction=args.holdout_fraction)
    try:
        summary = write_impressions(impressions, uri, run_id=f"demo-data__seed{args.seed}")
    except ImportError as exc:
        raise ConfigError(
            f"weiflow demo data writes Parquet with pyarrow: pip install 'weiflow[spark]' ({exc})"
        ) from None
    seconds = time.perf_counter() - started
    holdout = summary["holdout"]
    print(
        f"{summary['rows']:,} impressions of {day.isoformat()} (seed {args.seed}) in {seconds:.1f}s: {uri}\n"
        f"  positive rate {summary['positive_rate']:.4f}; Bayes-optimal AUC {_figure(summary['bayes_auc'])}, "
        f"log loss {_figure(summary['bayes_logloss'])}\n"
        f"  holdout ({holdout['rows']:,} rows): Bayes-optimal AUC {_figure(holdout['bayes_auc'])} "
        f"(± {_figure(holdout['bayes_auc_se'])}), log loss {_figure(holdout['bayes_logloss'])}",
        file=sys.stderr,
    )
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0


def main(argv: Sequence[str], settings: Settings) -> int:
    parser = _parser()
    args = parser.parse_args(list(argv))
    if args.action is None:
        parser.print_help()
        return 0
    if args.action == "run":
        from weiflow.demo.run import run_demo

        run_demo(
            settings, spec=args.spec, rows=args.rows, day=args.day, steps=args.steps, seed=args.seed, quiet=args.quiet
        )
        return 0
    return _data(args, settings)
