"""``python -m weiflow.airflow``: a local Airflow for WeiFlow, and the priority pools.

    start   start Airflow on 127.0.0.1 (API server, scheduler, DAG processor) with every spec of
            the project's xml_specs/ as a DAG; AIRFLOW_HOME is <var_dir>/airflow. Ctrl-C stops it.
    setup   create or update the pools weiflow_high, weiflow_medium and weiflow_low in the
            Airflow that the environment configures (AIRFLOW_HOME, AIRFLOW__*): for a deployment.
    env     print the local Airflow's environment as shell exports, for the airflow CLI:
            eval "$(./dev airflow env)"; airflow dags list

``./dev airflow [COMMAND]`` runs this inside the project's virtual environment (default: start).
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from weiflow.airflow.local import LocalAirflow, pools_document, print_banner
from weiflow.config import load_settings
from weiflow.errors import ConfigError


def _slots(pairs: Sequence[str]) -> dict[str, int]:
    slots: dict[str, int] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in ("high", "medium", "low") or not value.isdigit():
            raise ConfigError(f"--slots '{pair}': expected high=N, medium=N or low=N")
        slots[key] = int(value)
    return slots


def _local(args: argparse.Namespace) -> LocalAirflow:
    project = Path(args.project).resolve()
    settings = load_settings(cwd=project)
    return LocalAirflow(
        home=settings.var_dir / "airflow",
        specs=Path(args.specs).resolve() if args.specs else project / "xml_specs",
        loader=project / "dags" / "weiflow_dags.py",
        var_dir=settings.var_dir,
        port=args.port,
        password=args.password,
    )


def _cmd_start(args: argparse.Namespace) -> int:
    airflow = _local(args)
    print(f"preparing {airflow.home} (metadata database, admin user, pools) ...", file=sys.stderr)
    airflow.prepare(_slots(args.slots))

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    with airflow:
        try:
            print("starting the API server, scheduler and DAG processor ...", file=sys.stderr)
            airflow.wait_ready()
            print_banner(airflow)
            while all(process.poll() is None for process in airflow.processes.values()):
                time.sleep(1.0)
            dead = [name for name, process in airflow.processes.items() if process.poll() is not None]
            print(f"Airflow {', '.join(dead)} exited; stopping. Last lines:", file=sys.stderr)
            for name in dead:
                print(airflow.tail(name), file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("stopping Airflow ...", file=sys.stderr)
            return 0


def _cmd_setup(args: argparse.Namespace) -> int:
    with tempfile.NamedTemporaryFile("w", suffix=".json", encoding="utf-8") as handle:
        json.dump(pools_document(_slots(args.slots)), handle)
        handle.flush()
        done = subprocess.run([sys.executable, "-m", "airflow", "pools", "import", handle.name], check=False)
    return done.returncode


def _cmd_env(args: argparse.Namespace) -> int:
    airflow = _local(args)
    env = airflow.env(base={})
    for key in sorted(env):
        print(f"export {key}={shlex.quote(env[key])}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m weiflow.airflow", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    for name, helptext in (
        ("start", "start a local Airflow with the project's specs as DAGs"),
        ("env", "print the local Airflow's environment as shell exports"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--project", default=".", help="folder with dags/ and xml_specs/ (default: .)")
        p.add_argument("--specs", help="spec folder (default: PROJECT/xml_specs)")
        p.add_argument("--port", type=int, default=8080, help="API server and UI port on 127.0.0.1")
        p.add_argument("--password", default="admin", help="the admin user's password (default: admin)")
        if name == "start":
            p.add_argument("--slots", action="append", default=[], metavar="PRIORITY=N")
    p = sub.add_parser("setup", help="create the priority pools in the configured Airflow")
    p.add_argument("--slots", action="append", default=[], metavar="PRIORITY=N")
    args = parser.parse_args(argv)
    handlers = {"start": _cmd_start, "setup": _cmd_setup, "env": _cmd_env}
    try:
        if args.command is None:
            args = parser.parse_args(["start", *(argv or [])])
        return handlers[args.command](args)
    except ConfigError as exc:
        print(f"weiflow.airflow: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
