"""The ``weiflow`` command line.

Exit codes: 0 success, 1 the spec is invalid or the run failed, 2 bad usage or configuration,
130 cancelled (SIGINT/SIGTERM).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from datetime import date
from pathlib import Path
from types import FrameType

from weiflow import __version__
from weiflow.config import Settings, load_settings
from weiflow.dag import Dag, check_file, compile_file, dag_to_dict, to_dot, to_text
from weiflow.errors import ConfigError, SpecError, WeiflowError
from weiflow.registry import default_registry
from weiflow.runtime import (
    Executor,
    RunContext,
    center_trackers,
    new_run_id,
    parse_param_overrides,
    run_node,
    run_pipeline,
    run_started_detail,
    run_tracker,
)
from weiflow.spec import did_you_mean
from weiflow.tracking import CenterTracker, EventKind

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130


def _spec_files(paths: Sequence[str]) -> Iterator[Path]:
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(path.glob("*.xml"))
        else:
            yield path


def _cmd_validate(args: argparse.Namespace, settings: Settings) -> int:
    registry = default_registry()
    files = list(_spec_files(args.files))
    if not files:
        print("weiflow validate: no spec files found", file=sys.stderr)
        return EXIT_USAGE
    errors = warnings = 0
    report: list[dict[str, object]] = []
    for path in files:
        diagnostics = check_file(
            path, registry, max_bytes=settings.max_spec_bytes, allowed_callables=settings.allowed_callables
        )
        for diagnostic in diagnostics:
            if args.format == "json":
                report.append(
                    {
                        "file": diagnostic.file,
                        "line": diagnostic.line,
                        "col": diagnostic.col,
                        "severity": diagnostic.severity,
                        "message": diagnostic.message,
                        "hint": diagnostic.hint,
                    }
                )
            else:
                print(diagnostic)
            errors += diagnostic.is_error
            warnings += not diagnostic.is_error
    if args.format == "json":
        print(json.dumps(report, indent=2))
    elif not args.quiet:
        status = "ok" if not errors else "FAILED"
        print(
            f"{len(files)} file(s) checked: {errors} error(s), {warnings} warning(s) — {status}",
            file=sys.stderr,
        )
    return EXIT_FAILED if errors else EXIT_OK


def _compile(path: str, settings: Settings) -> Dag:
    dag = compile_file(
        path, default_registry(), max_bytes=settings.max_spec_bytes, allowed_callables=settings.allowed_callables
    )
    for warning in dag.warnings:
        print(warning, file=sys.stderr)
    return dag


def _write(text: str, output: str | None) -> None:
    if output is None:
        sys.stdout.write(text)
        return
    target = Path(output)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                stream.write(text)
            Path(staging).replace(target)  # atomic: a reader never sees half a file
        finally:
            Path(staging).unlink(missing_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot write {output}: {exc.strerror or exc}") from None


def _cmd_compile(args: argparse.Namespace, settings: Settings) -> int:
    dag = _compile(args.file, settings)
    _write(json.dumps(dag_to_dict(dag), indent=2) + "\n", args.output)
    return EXIT_OK


def _cmd_graph(args: argparse.Namespace, settings: Settings) -> int:
    dag = _compile(args.file, settings)
    fmt = args.format or (Path(args.output).suffix.lstrip(".") if args.output else "text")
    if fmt == "txt":
        fmt = "text"
    if fmt == "svg" and shutil.which("dot") is None:
        print(
            "weiflow graph: graphviz's 'dot' is not installed (apt-get install graphviz); drawing a text tree",
            file=sys.stderr,
        )
        fmt = "text"
        if args.output and args.output.endswith(".svg"):
            args.output = args.output[: -len(".svg")] + ".txt"
    if fmt == "text":
        _write(to_text(dag), args.output)
    elif fmt == "dot":
        _write(to_dot(dag), args.output)
    elif fmt == "svg":
        import graphviz

        _write(graphviz.Source(to_dot(dag)).pipe(format="svg", encoding="utf-8"), args.output)
    else:
        print(f"weiflow graph: unknown format '{fmt}' (use text, dot or svg)", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _flush_center(run: RunContext) -> None:
    """Try once more to hand the run's events to the center; what stays spooled goes later."""
    for tracker in center_trackers(run.tracker):
        if not tracker.flush():
            print(
                f"weiflow: control center not reachable ({tracker.last_error}); {len(tracker.pending())} event(s) "
                f"kept in {tracker.spool_dir}, sent with the next run or 'weiflow center push'",
                file=sys.stderr,
            )


class _Cancellation:
    """Turns SIGTERM and SIGINT into KeyboardInterrupt after asking the running executor to stop its work."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.executor: Executor | None = None

    def attach(self, executor: Executor) -> None:
        self.executor = executor

    def __enter__(self) -> _Cancellation:
        self._previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.executor is not None:
            self.executor.cancel()
        raise KeyboardInterrupt(f"signal {signum}")


def _run_context(args: argparse.Namespace, settings: Settings) -> tuple[RunContext, Path]:
    dag = _compile(args.file, settings)
    ds = None
    if args.ds:
        try:
            ds = date.fromisoformat(args.ds)
        except ValueError:
            raise ConfigError(f"--ds '{args.ds}': expected YYYY-MM-DD") from None
    overrides = parse_param_overrides(args.param)
    run_id = args.run_id or new_run_id()
    tracker, log_path = run_tracker(settings, dag.name, run_id)
    run = RunContext.create(dag, settings=settings, tracker=tracker, run_id=run_id, ds=ds, overrides=overrides)
    return run, log_path


def _cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    run, log_path = _run_context(args, settings)
    print(f"run {run.run_id} of pipeline '{run.dag.name}': {len(run.dag.nodes)} node(s)", file=sys.stderr)
    with _Cancellation() as cancellation:
        try:
            result = run_pipeline(run, on_executor=cancellation.attach)
        finally:
            _flush_center(run)
    for node in run.dag.nodes:
        state = result.states.get(node.id)
        line = f"  {node.id:<24} {state}"
        if node.id in result.errors:
            line += f"\n    {result.errors[node.id]}"
        print(line, file=sys.stderr)
    print(f"run log: {log_path}", file=sys.stderr)
    return EXIT_OK if result.succeeded else EXIT_FAILED


def _cmd_run_node(args: argparse.Namespace, settings: Settings) -> int:
    run, log_path = _run_context(args, settings)
    try:
        run.dag.node(args.node)
    except KeyError:
        hint = did_you_mean(args.node, [n.id for n in run.dag.nodes]) or ""
        raise ConfigError(f"{args.file}: pipeline '{run.dag.name}' has no node '{args.node}' {hint}".strip()) from None
    # Every node of a run announces the whole run, with every dataset any of its nodes uses: the
    # center then protects the inputs of later nodes from the first one on, even when nothing else
    # (WeiFlow's Airflow listener) reports the run. The center applies repeats idempotently.
    run.event(EventKind.RUN_STARTED, detail=run_started_detail(run))
    with _Cancellation() as cancellation:
        try:
            run_node(run, args.node, attempt=args.attempt, on_executor=cancellation.attach)
        except WeiflowError as exc:
            _flush_center(run)
            print(f"weiflow run-node: {exc}", file=sys.stderr)
            print(f"run log: {log_path}", file=sys.stderr)
            return EXIT_FAILED
    _flush_center(run)
    print(f"node '{args.node}' of run {run.run_id} succeeded; run log: {log_path}", file=sys.stderr)
    return EXIT_OK


def _cmd_modules(args: argparse.Namespace, settings: Settings) -> int:
    registry = default_registry()
    if args.engine and registry.engine(args.engine) is None:
        hint = did_you_mean(args.engine, registry.engines) or ""
        raise ConfigError(f"no engine '{args.engine}' {hint}".strip())
    for name, engine in registry.describe().items():
        if args.engine and name != args.engine:
            continue
        status = "runs here" if engine.executor else "validate only"
        print(f"{name}  ({status}){': ' + engine.help if engine.help else ''}")
        for module in engine.modules.values():
            inputs = module.inputs
            arity = (
                "any"
                if inputs[1] is None
                else (str(inputs[0]) if inputs[0] == inputs[1] else f"{inputs[0]}-{inputs[1]}")
            )
            print(f"  {module.name}  (inputs: {arity}){'  ' + module.help if module.help else ''}")
            for attr in module.attrs:
                flag = (
                    "required"
                    if attr.required
                    else f"default {attr.default}"
                    if attr.default is not None
                    else "optional"
                )
                print(f"      {attr.name:<18} {attr.describe()}  [{flag}]")
    for problem in registry.problems:
        print(f"warning: {problem}", file=sys.stderr)
    return EXIT_OK


def _cmd_retention(args: argparse.Namespace, settings: Settings) -> int:
    if args.retention_args[:1] != ["sweep"]:
        raise ConfigError("weiflow retention: the one subcommand is 'sweep' (weiflow retention sweep --help)")
    return _cmd_center(argparse.Namespace(center_args=args.retention_args), settings)


def _cmd_center(args: argparse.Namespace, settings: Settings) -> int:
    if args.center_args[:1] == ["push"]:
        # Needs only the spool, so it works where the center's dependencies are not installed.
        if not settings.center_url:
            raise ConfigError("center push: no center_url configured (weiflow.toml or WEIFLOW_CENTER_URL)")
        tracker = CenterTracker(settings.center_url, settings.spool_dir, token=settings.center_token)
        count = len(tracker.pending())
        if tracker.flush():
            print(f"{count} event(s) delivered to {settings.center_url}", file=sys.stderr)
            return EXIT_OK
        print(f"center not reachable: {tracker.last_error}; {len(tracker.pending())} event(s) kept", file=sys.stderr)
        return EXIT_FAILED
    try:
        # Loaded by name, at call time: the core must import (and pass its import-linter contract)
        # without SQLAlchemy and FastAPI, which only the [center] extra installs.
        center_cli = importlib.import_module("weiflow.center.cli")
    except ImportError as exc:
        raise ConfigError(f"weiflow center needs the [center] extra: pip install 'weiflow[center]' ({exc})") from None
    return int(center_cli.main(args.center_args, settings))


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    # Loaded by name, at call time: the core imports no serving code (nor TensorFlow).
    serve_cli = importlib.import_module("weiflow.serving.cli")
    return int(serve_cli.main(args.serve_args, settings))


def _cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    # Loaded by name, at call time: it starts Airflow through weiflow.airflow, which the core must not import.
    up = importlib.import_module("weiflow.up")
    return int(up.main(args.up_args, settings))


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    # Loaded by name, at call time: the generator's NumPy (and pyarrow, when it writes) cost nothing elsewhere.
    demo_cli = importlib.import_module("weiflow.demo.cli")
    return int(demo_cli.main(args.demo_args, settings))


def _cmd_deploy(args: argparse.Namespace, settings: Settings) -> int:
    # Loaded by name, at call time, like the center: the core imports no engine.
    deploy_cli = importlib.import_module("weiflow.engines.deploy.cli")
    return int(deploy_cli.main(args.deploy_args, settings))


def _cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    # Imported here, not at the top: only this command needs it (and the tables' library it loads).
    from weiflow import status

    url = args.center or settings.center_url
    if not url:
        raise ConfigError(
            "status: no control center configured: set center_url in weiflow.toml or WEIFLOW_CENTER_URL "
            "(e.g. http://127.0.0.1:8765), or pass --center URL"
        )
    client = status.CenterClient(url, args.token or settings.center_token, timeout_s=args.timeout)
    sections = [args.section] if args.section else list(status.SECTIONS)
    who = None if args.json else client.me()  # first: a refused token is said once, before any list
    answers = status.collect(client, sections, runs=args.runs, datasets=args.datasets)
    if args.json:
        print(json.dumps(answers, indent=2))
    else:
        status.print_status(answers, center=client.url, who=who, limits={"runs": args.runs, "datasets": args.datasets})
    return EXIT_OK


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weiflow", description="XML pipelines compiled into two-level DAGs.")
    parser.add_argument("--version", action="version", version=f"weiflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check spec files; every problem as file:line:col")
    p.add_argument("files", nargs="+", metavar="FILE", help="spec files or directories of them")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary line")
    p.set_defaults(handler=_cmd_validate)

    p = sub.add_parser("compile", help="print the two-level DAG as JSON (schema weiflow.dag/1)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("-o", "--output", help="write to this file (atomically) instead of stdout")
    p.set_defaults(handler=_cmd_compile)

    p = sub.add_parser("graph", help="draw the two-level DAG: text, dot or svg")
    p.add_argument("file", metavar="FILE")
    p.add_argument("-f", "--format", choices=("text", "dot", "svg"), help="default: from -o's suffix, else text")
    p.add_argument("-o", "--output")
    p.set_defaults(handler=_cmd_graph)

    for name, helptext in (
        ("run", "run the whole pipeline on this machine"),
        ("run-node", "run one node of a run (what Airflow tasks call)"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("file", metavar="FILE")
        p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="repeatable")
        p.add_argument("--ds", help="logical date YYYY-MM-DD (default: today, UTC)")
        if name == "run":
            p.add_argument("--run-id", help="default: local__<timestamp>")
            p.set_defaults(handler=_cmd_run)
        else:
            p.add_argument("--node", required=True)
            p.add_argument("--run-id", required=True)
            p.add_argument("--attempt", type=int, default=1)
            p.set_defaults(handler=_cmd_run_node)

    p = sub.add_parser("modules", help="list engines, module types and their attributes")
    p.add_argument("engine", nargs="?")
    p.set_defaults(handler=_cmd_modules)

    p = sub.add_parser(
        "retention",
        help="retention sweep: the control center's 'sweep' (see 'weiflow retention sweep --help')",
        description="'weiflow retention sweep [--dry-run] [--grace-days N] [--json]' is 'weiflow center sweep'.",
    )
    p.add_argument("retention_args", nargs=argparse.REMAINDER, metavar="sweep ...")
    p.set_defaults(handler=_cmd_retention)

    p = sub.add_parser(
        "center",
        help="the control center: serve, migrate, sweep, mirror-models, orphans, user, push",
        description="Subcommands: serve, migrate, sweep, mirror-models, orphans, user, push "
        "(see 'weiflow center serve --help').",
    )
    p.add_argument("center_args", nargs=argparse.REMAINDER, metavar="SUBCOMMAND ...")
    p.set_defaults(handler=_cmd_center)

    p = sub.add_parser(
        "demo",
        help="the demo: 'data' writes generated feed impressions with their Bayes-optimal AUC",
        description="Actions: data (see 'weiflow demo data --help').",
    )
    p.add_argument("demo_args", nargs=argparse.REMAINDER, metavar="ACTION ...")
    p.set_defaults(handler=_cmd_demo)

    p = sub.add_parser(
        "deploy",
        help="the model repository: publish, promote, rollback, status, render, sync",
        description="Subcommands: publish, promote, rollback, status, render (Kubernetes manifests of the "
        "prediction service), sync (copy a repository for it) (see 'weiflow deploy publish --help').",
    )
    p.add_argument("deploy_args", nargs=argparse.REMAINDER, metavar="ACTION ...")
    p.set_defaults(handler=_cmd_deploy)

    p = sub.add_parser(
        "status",
        help="runs, datasets and models the control center knows, as tables",
        description="Reads the control center's API at center_url with center_token (weiflow.toml or "
        "WEIFLOW_CENTER_URL / WEIFLOW_CENTER_TOKEN).",
    )
    p.add_argument("section", nargs="?", choices=("runs", "datasets", "models"), help="only this section")
    p.add_argument("--runs", type=_positive_int, default=10, metavar="N", help="most recent runs shown (default 10)")
    p.add_argument(
        "--datasets", type=_positive_int, default=10, metavar="N", help="datasets shown, pending deletion first (10)"
    )
    p.add_argument("--json", action="store_true", help="print the API's answers as JSON, for scripts")
    p.add_argument("--center", metavar="URL", help="the center's URL (default: the center_url setting)")
    p.add_argument(
        "--token",
        help="an API token of the center (default: the center_token setting, which other users of the machine "
        "cannot read in the process list as they can this flag)",
    )
    p.add_argument("--timeout", type=float, default=5.0, metavar="S", help="seconds for every request together (5)")
    p.set_defaults(handler=_cmd_status)

    p = sub.add_parser(
        "serve",
        help="the prediction service: TensorFlow Serving's REST API and raw-feature scoring",
        description="Flags as tensorflow_model_server spells them (see 'weiflow serve --help'): "
        "--rest_api_port=8501 --model_name=NAME --model_base_path=DIR, --model_config_file=FILE, "
        "--repository=URI, --enable_batching ...",
        add_help=False,
    )
    p.add_argument("serve_args", nargs=argparse.REMAINDER, metavar="FLAG ...")  # main() passes them on as they are
    p.set_defaults(handler=_cmd_serve)

    p = sub.add_parser(
        "up",
        help="the whole platform on 127.0.0.1: control center, Airflow, prediction service (Ctrl-C stops it)",
        description="See 'weiflow up --help': --center-port, --airflow-port, --serve-port, --specs ...",
        add_help=False,
    )
    p.add_argument("up_args", nargs=argparse.REMAINDER, metavar="FLAG ...")  # main() passes them on as they are
    p.set_defaults(handler=_cmd_up)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["serve"]:
        # Its flags start with '--' (TensorFlow Serving's), which argparse's REMAINDER will not take.
        args = argparse.Namespace(handler=_cmd_serve, serve_args=words[1:])
    elif words[:1] == ["up"]:
        args = argparse.Namespace(handler=_cmd_up, up_args=words[1:])  # likewise: its flags go to weiflow.up
    else:
        args = _parser().parse_args(words)
    try:
        settings = load_settings()
        return int(args.handler(args, settings))
    except SpecError as exc:
        for diagnostic in exc.diagnostics:
            print(diagnostic, file=sys.stderr)
        return EXIT_FAILED
    except ConfigError as exc:
        print(f"weiflow: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except WeiflowError as exc:
        print(f"weiflow: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("weiflow: cancelled", file=sys.stderr)
        return EXIT_CANCELLED


if __name__ == "__main__":
    sys.exit(main())
