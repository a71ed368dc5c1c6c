"""``weiflow deploy``: publish, promote, roll back and inspect models in the repository, by hand.

Loaded by name from weiflow/cli.py (the core imports no engine). Errors are raised as
:class:`~weiflow.errors.WeiflowError` (exit 1) or :class:`~weiflow.errors.ConfigError`
(exit 2); the caller prints them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from weiflow.config import Settings
from weiflow.engines.deploy.actions import (
    LOAD_CHECK_TIMEOUT_S,
    LoadChecker,
    default_repository,
    find_saved_model,
    promote,
    publish,
    publisher,
    rollback,
)
from weiflow.errors import ConfigError
from weiflow.modelrepo import FileRepository, ModelRepoError, Repository, Routing

__all__ = ["main"]


def _percent(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{value} is not a percent from 0 to 100")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weiflow deploy", description="Publish, promote, roll back and inspect models in the model repository."
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--repository", metavar="URI", help="the model repository; default: ${storage}/models")

    p = sub.add_parser("publish", parents=[common], help="gate a SavedModel and add it as the model's next version")
    p.add_argument("source", metavar="SAVEDMODEL_DIR", help="a SavedModel directory, or an export's dataset")
    p.add_argument("--model", required=True, metavar="NAME")
    p.add_argument("--traffic", type=_percent, default=100, metavar="P", help="percent to the new version (100)")
    p.add_argument("--require", metavar="EXPR", help='gates on the exported metrics, e.g. "auc>=0.72,logloss<=0.5"')
    p.add_argument("--load-timeout", type=float, default=LOAD_CHECK_TIMEOUT_S, metavar="S", help=argparse.SUPPRESS)

    p = sub.add_parser("promote", parents=[common], help="give a version a share of traffic")
    p.add_argument("model", metavar="NAME")
    p.add_argument("--version", type=int, metavar="V", help="default: the newest version")
    p.add_argument("--traffic", type=_percent, required=True, metavar="P")

    p = sub.add_parser("rollback", parents=[common], help="all traffic back to the previous fully live version")
    p.add_argument("model", metavar="NAME")

    p = sub.add_parser("status", parents=[common], help="versions, traffic, labels, metrics, who and when")
    p.add_argument("model", nargs="?", metavar="NAME")
    p.add_argument("--json", action="store_true")
    return parser


def main(argv: Sequence[str], settings: Settings) -> int:
    args = _parser().parse_args(list(argv))
    uri = args.repository or default_repository(settings.storage)
    who = publisher()
    if args.action == "publish":
        source = Path(args.source)
        if not source.exists():
            raise ConfigError(f"deploy publish: {source}: no such directory")
        model_dir = find_saved_model(source, args.model)
        published = publish(
            uri,
            args.model,
            model_dir,
            traffic=args.traffic,
            require=args.require,
            who=who,
            load_check=LoadChecker(args.load_timeout),
        )
        print(f"published {published.model} version {published.version}: {published.uri}", file=sys.stderr)
        print(_split(published.routing))
        return 0
    repo = FileRepository(uri)
    if args.action == "promote":
        print(_split(promote(repo, args.model, args.version, args.traffic, who=who)))
        return 0
    if args.action == "rollback":
        print(_split(rollback(repo, args.model, who=who)))
        return 0
    models = [args.model] if args.model else repo.models()
    if args.model and not repo.versions(args.model) and not repo.read_routing(args.model).generation:
        raise ModelRepoError(
            f"model '{args.model}' is not in {uri} (models: {', '.join(repo.models()) or 'none'})",
            "check the name and --repository",
        )
    status = [_status(repo, name) for name in models]
    if args.json:
        print(json.dumps({"repository": uri, "models": status}, indent=1))
    else:
        print(_status_text(uri, status))
    return 0


def _split(routing: Routing) -> str:
    split = ", ".join(f"v{v} {share}%" for v, share in sorted(routing.traffic.items())) or "nothing live"
    labels = ", ".join(f"{name}=v{v}" for name, v in routing.labels.items())
    return f"{routing.model}: {split}" + (f" ({labels})" if labels else "")


def _status(repo: Repository, model: str) -> dict[str, Any]:
    routing = repo.read_routing(model)
    versions = []
    for version in repo.versions(model):
        entry: dict[str, Any] = {
            "version": version,
            "traffic": routing.traffic.get(version, 0),
            "labels": sorted(name for name, v in routing.labels.items() if v == version),
        }
        try:
            manifest = repo.manifest(model, version)
            entry |= {
                "metrics": dict(manifest.metrics),
                "publisher": manifest.publisher,
                "published_at": manifest.published_at,
                "pipeline": manifest.pipeline,
                "run_id": manifest.run_id,
            }
        except ModelRepoError as exc:
            entry["error"] = exc.message
        versions.append(entry)
    return {
        "model": model,
        "generation": routing.generation,
        "traffic": {str(v): share for v, share in routing.traffic.items()},
        "labels": dict(routing.labels),
        "versions": versions,
        "history": [change.to_dict() for change in routing.history],
    }


def _status_text(uri: str, models: list[dict[str, Any]]) -> str:
    lines = [f"repository {uri}"]
    if not models:
        lines.append("  no models")
    for model in models:
        split = ", ".join(f"v{v} {share}%" for v, share in model["traffic"].items()) or "nothing live"
        lines.append(f"{model['model']}: {split}")
        for entry in reversed(model["versions"]):
            labels = f" [{', '.join(entry['labels'])}]" if entry["labels"] else ""
            metrics = " ".join(f"{k}={v:.4g}" for k, v in entry.get("metrics", {}).items()) or "-"
            who = f"{entry.get('publisher', '?')} at {entry.get('published_at', '?')}"
            lines.append(f"  v{entry['version']:<5} {entry['traffic']:>3}%{labels}  {metrics}  by {who}")
            if "error" in entry:
                lines.append(f"         {entry['error']}")
        for change in model["history"][-5:]:
            version = f" v{change['version']}" if change["version"] is not None else ""
            traffic = f" {change['traffic']}%" if change["traffic"] is not None else ""
            lines.append(f"  - {change['at']} {change['who']}: {change['action']}{version}{traffic}")
    return "\n".join(lines)
