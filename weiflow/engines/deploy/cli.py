"""``weiflow deploy``: publish, promote, roll back and inspect models in the repository, by hand;
render the prediction service's Kubernetes objects (``render``) and mirror a repository into a pod (``sync``).

Loaded by name from weiflow/cli.py (the core imports no engine). Errors are raised as
:class:`~weiflow.errors.WeiflowError` (exit 1) or :class:`~weiflow.errors.ConfigError`
(exit 2); the caller prints them.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
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
from weiflow.engines.deploy.kubernetes import (
    ServingOptions,
    apply_manifests,
    load_clients,
    render_manifests,
    render_yaml,
    wait_available,
    write_yaml,
)
from weiflow.engines.deploy.sync import DEFAULT_EVERY_S, SyncReport, sync_forever, sync_once
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
    p.add_argument(
        "--keep-last",
        type=_positive,
        metavar="N",
        help="then remove versions that route nothing beyond the newest N (live, labelled and rollback's are kept)",
    )
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
    _add_render(sub)
    _add_sync(sub)
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not 1 or more")
    return value


def _add_render(sub: Any) -> None:
    defaults = ServingOptions(model="-", image="-")
    p = sub.add_parser(
        "render",
        help="the prediction service's Kubernetes Deployment, Service and autoscaler for a model",
        description="Print (or write, or apply) the Kubernetes objects serving model NAME: a Deployment of "
        "'weiflow serve', a ClusterIP Service on port 8501 and a HorizontalPodAutoscaler. Pods get the model "
        "repository from a volume claim (--claim) or by syncing it from its URI (--sync-from).",
    )
    p.add_argument("model", metavar="NAME", help="the model in the repository")
    p.add_argument("--image", default="", help="the image the pods run, with weiflow installed (required)")
    p.add_argument("--namespace", default=defaults.namespace)
    p.add_argument("--name", default="", help="the objects' name; default: NAME as a DNS label + '-serving'")
    p.add_argument("--replicas", type=_positive, default=defaults.replicas, metavar="N")
    p.add_argument("--min-replicas", type=_positive, default=defaults.min_replicas, metavar="N")
    p.add_argument("--max-replicas", type=_positive, default=defaults.max_replicas, metavar="N")
    p.add_argument("--cpu-target", type=_positive, default=defaults.cpu_target, metavar="PERCENT",
                   help=f"CPU utilisation the autoscaler keeps ({defaults.cpu_target})")  # fmt: skip
    p.add_argument("--cpu", default=defaults.cpu, help=f"CPU request per pod ({defaults.cpu})")
    p.add_argument("--memory", default=defaults.memory, help=f"memory request and limit per pod ({defaults.memory})")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--claim", metavar="PVC", help="a PersistentVolumeClaim holding the repository (read-only)")
    source.add_argument("--sync-from", metavar="URI", help="the repository's URI (s3://, hdfs://, file://), synced in")
    p.add_argument("--sync-every", type=_positive, default=defaults.sync_every_s, metavar="S",
                   help=f"seconds between syncs ({defaults.sync_every_s})")  # fmt: skip
    p.add_argument("--sync-secret", metavar="SECRET", help="a Secret whose keys the sync containers get as env")
    p.add_argument("-o", "--output", metavar="DIR", help="write DIR/<name>.yaml instead of printing")
    p.add_argument("--apply", action="store_true", help="create or replace the objects in the cluster")
    p.add_argument("--kubeconfig", metavar="FILE")
    p.add_argument("--context", metavar="NAME")
    p.add_argument("--wait", action="store_true", help="with --apply: until every replica is available")
    p.add_argument("--timeout", type=_positive, default=300, metavar="S", help="for --wait (300)")


def _add_sync(sub: Any) -> None:
    p = sub.add_parser(
        "sync",
        help="mirror a model repository into a local directory (what a serving pod's sync container runs)",
        description="Copy every complete version missing in DEST_DIR (atomically), then the routing file, then "
        "remove versions the source dropped that the routing no longer names; again every --every seconds.",
    )
    p.add_argument("source", metavar="SRC_URI", help="the repository: s3://..., hdfs://..., file:///... or a path")
    p.add_argument("dest", metavar="DEST_DIR", help="a local directory (the server's --repository)")
    p.add_argument("--model", action="append", metavar="NAME", help="a model to mirror (repeat); default: all")
    timing = p.add_mutually_exclusive_group()
    timing.add_argument("--every", type=float, default=DEFAULT_EVERY_S, metavar="S",
                        help=f"seconds between passes ({DEFAULT_EVERY_S:g})")  # fmt: skip
    timing.add_argument("--once", action="store_true", help="one pass; exit 1 if a model could not be mirrored")
    p.add_argument("--attempts", type=_positive, default=3, metavar="N", help="tries per model and pass (3)")


def _render(args: argparse.Namespace, argv: Sequence[str]) -> int:
    options = ServingOptions(
        model=args.model,
        image=args.image,
        namespace=args.namespace,
        name=args.name,
        replicas=args.replicas,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        cpu_target=args.cpu_target,
        cpu=args.cpu,
        memory=args.memory,
        claim=args.claim,
        sync_from=args.sync_from,
        sync_every_s=args.sync_every,
        sync_secret=args.sync_secret,
    )
    if (args.wait or args.kubeconfig or args.context) and not args.apply:
        raise ConfigError("deploy render: --wait, --kubeconfig and --context go with --apply; add --apply")
    manifests = render_manifests(options)
    text = render_yaml(manifests, argv)
    if args.output:
        print(f"wrote {write_yaml(text, Path(args.output), options.object_name)}", file=sys.stderr)
    elif not args.apply:
        sys.stdout.write(text)
    if args.apply:
        clients = load_clients(args.kubeconfig, args.context)
        for line in apply_manifests(clients, manifests):
            print(line, file=sys.stderr)
        if args.wait:
            state = wait_available(clients.apps, options.object_name, options.namespace, timeout_s=args.timeout)
            print(f"deployment {options.object_name}: {state}", file=sys.stderr)
    return 0


def _sync(args: argparse.Namespace) -> int:
    if args.every <= 0:
        raise ConfigError(f"deploy sync: --every {args.every:g}: give seconds above 0")

    def show(report: SyncReport) -> None:
        for line in report.lines():
            print(f"sync: {line}", file=sys.stderr, flush=True)

    if args.once:
        report = sync_once(args.source, args.dest, args.model, attempts=args.attempts)
        show(report)
        return 0 if report.ok else 1
    stop = threading.Event()
    # SIGTERM (the pod ends) stops the loop after the model being mirrored; a kill at the end of the
    # grace period leaves only a hidden staging directory, which the next sync into DEST_DIR removes.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        sync_forever(args.source, args.dest, args.model, every_s=args.every, stop=stop, on_pass=show,
                     attempts=args.attempts)  # fmt: skip
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def main(argv: Sequence[str], settings: Settings) -> int:
    args = _parser().parse_args(list(argv))
    if args.action == "render":
        return _render(args, argv)
    if args.action == "sync":
        return _sync(args)
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
            keep_last=args.keep_last,
        )
        print(f"published {published.model} version {published.version}: {published.uri}", file=sys.stderr)
        if published.pruned.removed:
            print(f"removed unrouted version(s) {', '.join(map(str, published.pruned.removed))}", file=sys.stderr)
        for problem in published.pruned.problems:
            print(f"warning: published, but pruning did not: {problem}", file=sys.stderr)
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
