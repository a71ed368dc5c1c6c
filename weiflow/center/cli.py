"""``weiflow center serve|migrate|sweep|orphans|user``: reached from ``weiflow center`` (weiflow/cli.py)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import timedelta

from sqlalchemy.exc import IntegrityError

from weiflow.center.api import APP, SERVER_OPTIONS
from weiflow.center.db import make_engine, make_sessionmaker, migrate
from weiflow.center.limits import Limits
from weiflow.center.models import Role
from weiflow.center.repository import ActionError, create_token, create_user
from weiflow.center.retention import PeriodicSweeper, find_orphans, sweep
from weiflow.center.routing import mirror_repositories
from weiflow.config import Settings
from weiflow.processes import serve_workers

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weiflow center", description="The WeiFlow control center.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("serve", help="serve the REST API on 127.0.0.1 (migrates first)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument(
        "--workers",
        type=int,
        default=min(os.cpu_count() or 1, 4),
        help="server processes (default: one per CPU, at most 4)",
    )
    p.add_argument(
        "--sweep-every",
        type=float,
        default=60.0,
        metavar="MINUTES",
        help="run a retention sweep and mirror the model repositories this often while serving (0: never; then "
        "schedule 'weiflow center sweep' and 'weiflow center mirror-models')",
    )
    p.add_argument("--grace-days", type=float, default=3.0, help="grace period of the scheduled sweeps")
    # Unset flags leave the WEIFLOW_CENTER_* variables (or the defaults, in brackets) in force.
    defaults = Limits()
    for flag, kind, default, text in (
        ("--max-body-bytes", int, defaults.max_body_bytes, "larger request bodies get 413"),
        ("--body-timeout", float, defaults.body_timeout_s, "seconds a request body may take to arrive (408)"),
        ("--max-events", int, defaults.max_events, "events per request (413 beyond)"),
        ("--ingest-concurrency", int, defaults.ingest_concurrency, "event batches applied at once per worker"),
        ("--pool-size", int, defaults.pool_size, "database connections per worker, and as many again in bursts"),
    ):
        p.add_argument(flag, type=kind, default=None, help=f"{text} [{default}]")
    p.add_argument("--no-api-docs", action="store_true", help="do not serve /api/docs")
    sub.add_parser("migrate", help="create or upgrade the database schema")
    p = sub.add_parser("sweep", help="one retention sweep: mark, then delete what is confirmed or past grace")
    p.add_argument(
        "--dry-run", action="store_true", help="change nothing; list what would be marked or deleted, and why"
    )
    p.add_argument("--grace-days", type=float, default=3.0)
    p.add_argument("--json", action="store_true")
    sub.add_parser(
        "mirror-models",
        help="read every model's routing file and versions into the center (changes made with `weiflow deploy`)",
    )
    p = sub.add_parser("orphans", help="files under the storage roots that no dataset claims")
    p.add_argument("--days", type=float, default=30.0, help="untouched for at least this long")
    p.add_argument("roots", nargs="*", help="storage roots (default: the storage_roots setting)")
    p = sub.add_parser(
        "user",
        help="add a user (prints an API token)",
        usage="%(prog)s [-h] --role {admin,owner,viewer} [--password | --password-stdin] [--group GROUP] username",
        formatter_class=_UserHelp,
    )
    p.add_argument("username")
    p.add_argument("--role", choices=[r.value for r in Role], required=True)
    secret = p.add_mutually_exclusive_group()  # neither: a token-only user, who cannot use the console
    secret.add_argument(
        "--password", nargs="?", action=_PasswordFlag, default=False, help="ask for a console password (twice)"
    )
    secret.add_argument(
        "--password-stdin", action="store_true", help="read the console password from one line of standard input"
    )
    p.add_argument("--group", action="append", default=[], help="pipeline owner this user answers for (repeatable)")
    return parser


class _PasswordFlag(argparse.Action):
    """``user --password`` is a flag: a password written after it would show in every user's process list
    and stay in the shell's history, so a value is an error that says what to do instead."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        if values is not None:
            parser.error(
                "--password takes no value (on the command line a password is visible to other users and kept "
                "in the shell history): give --password alone to be asked for it, or pipe it in with --password-stdin"
            )
        setattr(namespace, self.dest, True)


class _UserHelp(argparse.HelpFormatter):
    # The help shows "--password", not "--password [PASSWORD]": it takes no value (see _PasswordFlag).
    def _format_args(self, action: argparse.Action, default_metavar: str) -> str:
        return "" if isinstance(action, _PasswordFlag) else super()._format_args(action, default_metavar)


def _new_password(args: argparse.Namespace) -> str | None:
    """``user``'s password: asked for twice, or one line of standard input; None for a token-only user."""
    if args.password_stdin:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    elif args.password:
        from getpass import getpass

        password = getpass(f"Password for {args.username}: ")
        if getpass("The same again: ") != password:
            raise ValueError("the two passwords differ")
    else:
        return None
    if not password:
        raise ValueError("empty password (leave out --password and --password-stdin for a token-only user)")
    return password


def main(argv: Sequence[str], settings: Settings) -> int:
    args = _parser().parse_args(list(argv))
    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    if args.command == "migrate":
        migrate(engine)
        print(f"schema up to date: {engine.url.render_as_string(hide_password=True)}", file=sys.stderr)
        return 0
    migrate(engine)
    if args.command == "serve":
        if args.workers < 1:
            print(f"weiflow center serve: --workers {args.workers}: needs at least 1", file=sys.stderr)
            return 2
        # Each worker process builds its own app and engine from the settings: hand them the
        # database this process resolved, whatever set it.
        os.environ["WEIFLOW_DATABASE_URL"] = settings.database_url
        given = {
            "max_body_bytes": args.max_body_bytes,
            "body_timeout_s": args.body_timeout,
            "max_events": args.max_events,
            "ingest_concurrency": args.ingest_concurrency,
            "pool_size": args.pool_size,
            "max_overflow": args.pool_size,
        }
        limits = replace(Limits.from_env(), **{k: v for k, v in given.items() if v is not None})
        if args.no_api_docs:
            limits = replace(limits, api_docs=False)
        os.environ.update(limits.to_env())  # and the same limits
        sweeper = None
        if args.sweep_every > 0:
            sweeper = PeriodicSweeper(
                sessions,
                timedelta(minutes=args.sweep_every),
                roots=settings.storage_roots,
                grace=timedelta(days=args.grace_days),
            )
            sweeper.start()
        try:
            return serve_workers(
                APP, args.host, args.port, workers=args.workers, name="weiflow center", options=SERVER_OPTIONS
            )
        finally:
            if sweeper is not None:
                sweeper.stop()
    if args.command == "sweep":
        report = sweep(
            sessions, roots=settings.storage_roots, grace=timedelta(days=args.grace_days), dry_run=args.dry_run
        )
        if args.json:
            print(json.dumps(asdict(report), indent=2, default=str))
        else:
            for label, entries in (
                ("mark", report.marked),
                ("keep", report.unmarked + report.kept),
                ("delete" if not args.dry_run else "would delete", report.deleted + report.would_delete),
                ("FAILED", report.failed),
            ):
                for entry in entries:
                    print(f"{label:<13} {entry['uri']}  ({entry.get('error') or entry.get('reason')})")
            print(report.summary(), file=sys.stderr)
        return 1 if report.failed else 0
    if args.command == "mirror-models":
        mirrored = mirror_repositories(sessions, settings.storage_roots)
        for name, why in mirrored.failed.items():
            print(f"FAILED {name}: {why}")
        for name in mirrored.mirrored:
            print(f"updated {name}")
        print(mirrored.summary(), file=sys.stderr)
        return 1 if mirrored.failed else 0
    if args.command == "orphans":
        with sessions() as session:
            orphans = find_orphans(session, args.roots or settings.storage_roots, older_than_days=args.days)
        for orphan in orphans:
            print(f"{orphan.path}\t{orphan.files} file(s)\t{orphan.size_bytes} bytes\tnewest {orphan.newest:%Y-%m-%d}")
        print(f"{len(orphans)} orphan director(ies) untouched for {args.days:g} days", file=sys.stderr)
        return 0
    try:
        password = _new_password(args)
    except ValueError as exc:
        print(f"weiflow center user: {exc}; nothing was created", file=sys.stderr)
        return 2
    with sessions() as session:
        try:
            create_user(session, args.username, Role(args.role), password=password, groups=args.group)
        except IntegrityError:
            print(f"weiflow center: user '{args.username}' exists", file=sys.stderr)
            return 2
        try:
            token = create_token(session, args.username)
        except ActionError as exc:
            print(f"weiflow center: {exc}", file=sys.stderr)
            return 1
    print(token)
    print(f"user '{args.username}' ({args.role}) created; the line above is its API token, shown once", file=sys.stderr)
    return 0
