"""``weiflow up``: the whole platform on 127.0.0.1 with one command, wired together.

It starts, each in a process group of its own and each dying with this process (Linux):

- the control center (``weiflow center serve``), with an admin user created on the first start;
  the user's generated password and the runtime's API token are kept in
  ``<var_dir>/up/credentials.json`` (mode 0600) and used again on every later start;
- Airflow (API server, scheduler, DAG processor: :class:`~weiflow.airflow.local.LocalAirflow`)
  with every spec of the project's ``xml_specs/`` as a DAG, its tasks reporting to the center
  (``WEIFLOW_CENTER_URL``, ``WEIFLOW_CENTER_TOKEN``) and the console linking back to it
  (``WEIFLOW_AIRFLOW_URL``); the same admin login;
- the prediction service (``weiflow serve --repository=<storage>/models``), which serves each
  model from the poll after its first publish, so it starts over an empty repository.

Then it prints every URL and login and waits. SIGINT (Ctrl-C) or SIGTERM stops everything it
started; a child that dies is reported with the end of its log, the others are stopped, and the
exit status is 1.

Loaded by name from weiflow/cli.py: this module imports the Airflow integration, which the core
must not.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from weiflow.airflow.local import LocalAirflow
from weiflow.config import Settings, load_settings
from weiflow.errors import ConfigError
from weiflow.processes import dying_with_parent, stop_groups

__all__ = ["Child", "Credentials", "check_ports_free", "main", "watch"]

STOP_GRACE_S = 20.0  # SIGTERM, then this long for every group to exit, then SIGKILL (Airflow's scheduler is slowest)
LOG_TAIL_LINES = 30


@dataclass
class Child:
    """A process ``weiflow up`` started: its name in messages, the process, and where its output goes."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class Credentials:
    """The platform's one login (console and Airflow UI) and the runtime's API token for the center."""

    user: str
    password: str
    token: str

    @classmethod
    def read(cls, path: Path) -> Credentials | None:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls(str(raw["user"]), str(raw["password"]), str(raw["token"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{path}: unreadable ({exc}); delete it and the center's database to start afresh"
            ) from None

    def write(self, path: Path) -> None:
        """Atomically, readable by this user only: it holds a password and a token."""
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.{os.getpid()}")
        descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            json.dump({"user": self.user, "password": self.password, "token": self.token}, out, indent=2)
            out.write("\n")
        staging.replace(path)


class _UpAirflow(LocalAirflow):
    """The local Airflow, each of its commands dying with ``weiflow up`` even if it is killed outright."""

    def _airflow(self, *args: str) -> list[str]:
        return dying_with_parent(super()._airflow(*args))


def check_ports_free(ports: Mapping[str, int]) -> None:
    """Raise :class:`ConfigError` naming the flag of a port that is taken or given twice."""
    seen: dict[int, str] = {}
    for flag, port in ports.items():
        if port in seen:
            raise ConfigError(f"{flag} {port}: {seen[port]} uses it already; give each service a port of its own")
        seen[port] = flag
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # SO_REUSEADDR: a port left in TIME_WAIT by an earlier run is free; only a listener makes bind fail.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as exc:
                why = "taken (something listens on it)" if exc.errno == errno.EADDRINUSE else str(exc)
                raise ConfigError(f"port {port} on 127.0.0.1 is {why}: pass {flag} with a free port") from None


def watch(children: Sequence[Child], *, every_s: float = 0.5) -> Child:
    """Wait until one of ``children`` exits, and return it."""
    while True:
        for child in children:
            if child.process.poll() is not None:
                return child
        time.sleep(every_s)


class _StartupFailed(Exception):
    """A child died or a service did not answer in time; the message says which, and what it logged."""


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return 200 <= int(response.status) < 300
    except (OSError, urllib.error.URLError, ValueError):
        return False


def _airflow_healthy(airflow: LocalAirflow) -> bool:
    """What LocalAirflow.wait_ready waits for, asked once: the API server reports every part healthy."""
    health = airflow.health() or {}
    parts = (health.get(name) for name in ("metadatabase", "scheduler", "dag_processor"))
    return all(isinstance(part, dict) and part.get("status") == "healthy" for part in parts)


def _wait_ready(children: Sequence[Child], checks: Mapping[str, Callable[[], bool]], timeout_s: float) -> None:
    """Until every check passes; :class:`_StartupFailed` when a child exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    waiting = dict(checks)
    while waiting:
        for child in children:
            if child.process.poll() is not None:
                raise _StartupFailed(_died(child))
        waiting = {name: check for name, check in waiting.items() if not check()}
        if waiting and time.monotonic() > deadline:
            raise _StartupFailed(f"not ready after {timeout_s:.0f} s: {', '.join(waiting)}")
        if waiting:
            time.sleep(0.5)


def _died(child: Child) -> str:
    return f"{child.name} exited with status {child.process.returncode}; the end of {child.log}:\n{child.tail()}"


def _center_credentials(path: Path, user: str, env: Mapping[str, str], log: Path) -> Credentials:
    """The kept credentials, or a new admin user with a generated password and an API token (first start)."""
    kept = Credentials.read(path)
    if kept is not None:
        if kept.user != user:
            raise ConfigError(f"{path} holds the login of user '{kept.user}', not '{user}': leave out --user")
        return kept
    password = secrets.token_urlsafe(12)
    # `weiflow center user` migrates the database first and prints the token on stdout, once.
    done = subprocess.run(
        dying_with_parent(
            [sys.executable, "-m", "weiflow", "center", "user", user, "--role", "admin", "--password-stdin"]
        ),
        input=password + "\n",
        env=dict(env),
        capture_output=True,
        text=True,
        check=False,
    )
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(done.stderr, encoding="utf-8")  # not stdout: the token is kept in the credentials file only
    if done.returncode != 0:
        if "exists" in done.stderr:
            raise ConfigError(
                f"the center's database already has a user '{user}', whose password and token are not in {path}: "
                "pass --user with another name for weiflow up's admin"
            )
        raise ConfigError(f"creating the center's user '{user}' failed ({done.returncode}): {done.stderr.strip()}")
    credentials = Credentials(user, password, done.stdout.strip())
    credentials.write(path)
    return credentials


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weiflow up",
        description="The whole platform on 127.0.0.1: the control center, Airflow with every spec as a DAG, and "
        "the prediction service over the model repository, wired together. Ctrl-C stops everything.",
    )
    parser.add_argument("--project", default=".", help="folder with dags/ and xml_specs/ (default: .)")
    parser.add_argument("--specs", help="spec folder (default: PROJECT/xml_specs)")
    parser.add_argument("--center-port", type=int, default=8765, help="the console and the center's API (8765)")
    parser.add_argument("--airflow-port", type=int, default=8080, help="Airflow's UI and REST API (8080)")
    parser.add_argument("--serve-port", type=int, default=8501, help="the prediction service's REST API (8501)")
    parser.add_argument("--user", default="admin", help="the admin login of the console and Airflow (admin)")
    parser.add_argument(
        "--ready-timeout", type=float, default=300.0, metavar="S", help="seconds to wait for every service (300)"
    )
    return parser


def _local_repository(settings: Settings) -> Path:
    if not settings.storage.startswith("file://"):
        raise ConfigError(
            f"weiflow up serves the model repository from local storage; storage is {settings.storage} "
            "(run 'weiflow serve' next to a copy of it: weiflow deploy sync)"
        )
    repository = Path(settings.storage.removeprefix("file://")) / "models"
    repository.mkdir(parents=True, exist_ok=True)
    return repository


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str], settings: Settings) -> int:
    args = _parser().parse_args(list(argv))
    project = Path(args.project).resolve()
    if args.project != ".":
        settings = load_settings(cwd=project)
    ports = {"--center-port": args.center_port, "--airflow-port": args.airflow_port, "--serve-port": args.serve_port}
    check_ports_free(ports)
    specs = Path(args.specs).resolve() if args.specs else project / "xml_specs"
    loader = project / "dags" / "weiflow_dags.py"
    for path in (specs, loader):
        if not path.exists():
            raise ConfigError(f"{path}: no such file or folder (--project names the folder with dags/ and xml_specs/)")
    repository = _local_repository(settings)
    up_dir = settings.var_dir / "up"
    logs = up_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    center_url = f"http://127.0.0.1:{args.center_port}"
    airflow_url = f"http://127.0.0.1:{args.airflow_port}"
    serve_url = f"http://127.0.0.1:{args.serve_port}"
    started = time.monotonic()
    # Every child resolves the same places, whatever weiflow.toml it finds from its working directory.
    env = {
        **os.environ,
        "WEIFLOW_VAR_DIR": str(settings.var_dir),
        "WEIFLOW_STORAGE": settings.storage,
        "WEIFLOW_DATABASE_URL": settings.database_url,
    }
    print("weiflow up: preparing the control center's user ...", file=sys.stderr, flush=True)
    credentials = _center_credentials(up_dir / "credentials.json", args.user, env, logs / "center-user.log")
    env.update(WEIFLOW_CENTER_URL=center_url, WEIFLOW_CENTER_TOKEN=credentials.token, WEIFLOW_AIRFLOW_URL=airflow_url)
    airflow = _UpAirflow(
        home=settings.var_dir / "airflow",
        specs=specs,
        loader=loader,
        var_dir=settings.var_dir,
        port=args.airflow_port,
        user=credentials.user,
        password=credentials.password,
        extra_env={k: v for k, v in env.items() if k.startswith("WEIFLOW_")},
    )
    children: list[Child] = []
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)
    previous_sigint = signal.getsignal(signal.SIGINT)
    try:
        children.append(_start("control center", ["center", "serve", "--port", str(args.center_port)], env, logs))
        children.append(
            _start(
                "prediction service",
                ["serve", f"--repository={repository}", f"--rest_api_port={args.serve_port}"],
                env,
                logs,
            )
        )
        print(f"weiflow up: preparing Airflow in {airflow.home} ...", file=sys.stderr, flush=True)
        try:
            airflow.prepare()
        except RuntimeError as exc:  # an airflow command (db migrate, pools import) failed; exc holds its output
            raise _StartupFailed(f"preparing Airflow: {exc}") from None
        airflow.start()
        children += [
            Child(f"Airflow {name}", proc, airflow.logs / f"{name}.out") for name, proc in airflow.processes.items()
        ]
        print("weiflow up: waiting for every service to answer ...", file=sys.stderr, flush=True)
        _wait_ready(
            children,
            {
                "control center": lambda: _answers(f"{center_url}/api/openapi.json"),
                "prediction service": lambda: _answers(f"{serve_url}/v2/health/live"),
                "Airflow": lambda: _airflow_healthy(airflow),
            },
            args.ready_timeout,
        )
        _print_banner(
            center_url=center_url,
            airflow_url=airflow_url,
            serve_url=serve_url,
            repository=repository,
            credentials=up_dir / "credentials.json",
            user=credentials.user,
            took_s=time.monotonic() - started,
        )
        dead = watch(children)
        print(f"weiflow up: {_died(dead)}\nweiflow up: stopping everything else ...", file=sys.stderr, flush=True)
        return 1
    except _StartupFailed as exc:
        print(f"weiflow up: {exc}\nweiflow up: stopping everything ...", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("weiflow up: stopping everything ...", file=sys.stderr, flush=True)
        return 0
    finally:
        # A second Ctrl-C must not cut the stop short and leave groups running: the stop is bounded anyway.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # Also Airflow's components when an interrupt came while they were starting, before they were children.
        processes = list(dict.fromkeys([child.process for child in children] + list(airflow.processes.values())))
        # One call for all of them: every group gets SIGTERM at once, so the grace periods overlap.
        in_time = stop_groups(processes, STOP_GRACE_S)
        airflow.processes.clear()
        signal.signal(signal.SIGTERM, previous_sigterm)
        signal.signal(signal.SIGINT, previous_sigint)
        late = "" if in_time else f" (some only by SIGKILL after {STOP_GRACE_S:.0f} s)"
        print(f"weiflow up: stopped {len(processes)} process group(s){late}", file=sys.stderr, flush=True)


def _start(name: str, weiflow_args: list[str], env: Mapping[str, str], logs: Path) -> Child:
    log = logs / f"{name.replace(' ', '-')}.log"
    with log.open("ab") as out:  # a file, not a pipe: nobody drains a pipe while we wait
        process = subprocess.Popen(
            dying_with_parent([sys.executable, "-m", "weiflow", *weiflow_args]),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            process_group=0,  # the terminal's Ctrl-C reaches only us; we stop each group in order
        )
    return Child(name, process, log)


def _print_banner(
    *, center_url: str, airflow_url: str, serve_url: str, repository: Path, credentials: Path, user: str, took_s: float
) -> None:
    # The password and the token stay in the credentials file: a terminal's scrollback, a CI log or a service
    # manager's journal is not a place for them.
    login = f"user {user}; password in {credentials}"
    has_models = any(entry.is_dir() and not entry.name.startswith(".") for entry in repository.iterdir())
    models = "" if has_models else "; no model yet: each is served from its first publish"
    lines = [
        f"WeiFlow is up ({took_s:.0f} s):",
        f"  console             {center_url}/   ({login})",
        f"  center API docs     {center_url}/api/docs   (API token in {credentials})",
        f"  Airflow UI          {airflow_url}/   ({login})",
        f"  prediction service  {serve_url}/v1/models/<model>   (repository {repository}{models})",
        f"  for weiflow status:  export WEIFLOW_CENTER_URL={center_url} WEIFLOW_CENTER_TOKEN=<its token>",
        "Ctrl-C stops everything.",
    ]
    print("\n".join(lines), flush=True)
