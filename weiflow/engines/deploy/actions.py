"""Publish (gated), promote and rollback: what the deploy executor and ``weiflow deploy`` both do.

Publish runs every gate before it touches the repository, so a refused model leaves the
repository exactly as it was:

1. the source is a SavedModel (``saved_model.pb``) with a feature map (``assets.extra/featuremap.json``);
2. ``require=`` thresholds hold for the metrics the run's evaluate module measured (carried
   by the export in ``assets.extra/weiflow-metrics.json``); a metric never measured is an error;
3. the model loads and scores warm-up examples, in a separate process (loadcheck.py), within a timeout.

Then the repository copies it into the next version and the routing gives it ``traffic`` percent.
With ``keep_last``, the model's versions that no longer route anything are then pruned to the
newest ``keep_last`` (:func:`weiflow.modelrepo.repository.prunable` says which); a version that
cannot be pruned is reported in :attr:`Published.pruned`, never a failure of the publish.
"""

from __future__ import annotations

import getpass
import json
import math
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weiflow.engines.deploy import Requirement, parse_require
from weiflow.errors import WeiflowError
from weiflow.modelrepo import FileRepository, Manifest, Repository, Routing, promote, rollback, update_routing
from weiflow.modelrepo.contracts import (
    EXPORT_METRICS_PATH,
    FEATURE_MAP_PATH,
    SAVED_MODEL_FILES,
    parse_version,
    sha256_hex,
)
from weiflow.modelrepo.repository import Pruned, prune
from weiflow.processes import stop_groups

__all__ = [
    "LOAD_CHECK_TIMEOUT_S",
    "DeployError",
    "ExportedModel",
    "LoadChecker",
    "Published",
    "check_requirements",
    "default_repository",
    "find_saved_model",
    "promote",
    "publish",
    "publisher",
    "read_exported",
    "rollback",
    "version_uri",
]

LOAD_CHECK_TIMEOUT_S = 300.0
_LOAD_CHECK = (sys.executable, "-m", "weiflow.engines.deploy.loadcheck")


class DeployError(WeiflowError):
    """A publish was refused or a routing change is impossible; ``hint`` says how to fix it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message + (f"\n    hint: {hint}" if hint else ""))


@dataclass(frozen=True)
class ExportedModel:
    """A SavedModel to publish, and what its export recorded about the run that made it."""

    path: Path
    featuremap: bytes
    metrics: Mapping[str, float] = field(default_factory=dict)
    pipeline: str | None = None
    run_id: str | None = None
    measured: bool = False  # whether the export carried evaluate metrics at all


@dataclass(frozen=True)
class Published:
    model: str
    version: int
    uri: str
    routing: Routing
    repository: Repository
    pruned: Pruned = field(default_factory=Pruned)  # what keep-last removed after the publish


def default_repository(storage: str) -> str:
    """``${storage}/models``: the configured repository (shared/DESIGN.md)."""
    return f"{storage.rstrip('/')}/models"


def publisher(owner: str | None = None) -> str:
    """Who publishes: the pipeline's owner when it has one, else the user running this process."""
    if owner and owner.strip():
        return owner
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def find_saved_model(root: Path, model: str | None = None) -> Path:
    """The SavedModel directory in ``root``: ``root`` itself, or an export's ``<model>/<version>/`` (highest)."""
    if not root.is_dir():
        raise DeployError(f"{root} is not a directory", "publish the directory an export module wrote")
    if any((root / name).is_file() for name in SAVED_MODEL_FILES):
        return root
    models = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith((".", "_"))]
    if model is not None and (root / model).is_dir():
        models = [root / model]
    candidates = []
    for directory in models:
        versions = [(parse_version(v.name), v) for v in directory.iterdir() if v.is_dir()]
        numbered = sorted((n, v) for n, v in versions if n is not None)
        if numbered and any((numbered[-1][1] / name).is_file() for name in SAVED_MODEL_FILES):
            candidates.append(numbered[-1][1])
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        names = ", ".join(c.parent.name for c in candidates)
        raise DeployError(
            f"{root} holds exports of several models ({names})",
            f"set model-name= to one of them, or publish {root}/<model>/<version> itself",
        )
    raise DeployError(
        f"{root} is not a SavedModel: it has no {' or '.join(SAVED_MODEL_FILES)}, and no <model>/<version>/ "
        "directory below it has one",
        "publish the dataset an export module wrote (TensorFlow engine), or a tf.saved_model.save directory",
    )


def read_exported(path: Path) -> ExportedModel:
    """The SavedModel at ``path`` with its feature map and carried metrics; errors say what is missing."""
    featuremap = path / FEATURE_MAP_PATH
    if not featuremap.is_file():
        raise DeployError(
            f"{path} has no {FEATURE_MAP_PATH}: serving could not map raw features the way training did",
            "train from samples a Spark features module wrote (they carry _featuremap.json; export copies it), "
            f"or put the feature map at {FEATURE_MAP_PATH} in the model directory",
        )
    metrics_file = path / EXPORT_METRICS_PATH
    if not metrics_file.is_file():
        return ExportedModel(path, featuremap.read_bytes())
    try:
        carried: Any = json.loads(metrics_file.read_text())
        metrics = {str(k): float(v) for k, v in carried.get("metrics", {}).items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise DeployError(f"{metrics_file} is not valid ({exc})", "export the model again") from None
    metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}
    return ExportedModel(
        path, featuremap.read_bytes(), metrics, carried.get("pipeline"), carried.get("run_id"), measured=True
    )


def check_requirements(requirements: list[Requirement], metrics: Mapping[str, float], where: str) -> None:
    """Refuse when a metric misses its bar, or was never measured."""
    unmeasured = [r.metric for r in requirements if r.metric not in metrics]
    if unmeasured:
        have = ", ".join(f"{k}={v:g}" for k, v in sorted(metrics.items())) or "none"
        raise DeployError(
            f"require names metric(s) {', '.join(unmeasured)} that {where} never measured (measured: {have})",
            'add an evaluate module with metrics="..." before the export, in the same node, or drop them from require',
        )
    missed = [
        f"{r.metric}={metrics[r.metric]:g} (required {r})" for r in requirements if not r.holds(metrics[r.metric])
    ]
    if missed:
        raise DeployError(f"refused: the model misses its bar: {'; '.join(missed)}", "nothing was published")


class LoadChecker:
    """Runs the load check in a child process it owns; ``cancel()`` stops it from another thread."""

    def __init__(self, timeout_s: float = LOAD_CHECK_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._cancelled = False

    def __call__(self, path: Path) -> dict[str, Any]:
        with self._lock:
            if self._cancelled:
                raise DeployError("the publish was cancelled")
            self._proc = proc = subprocess.Popen(
                [*_LOAD_CHECK, str(path)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
                env=_child_env(),
            )
        try:
            out, err = proc.communicate(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            stop_groups([proc], 5.0)
            raise DeployError(
                f"refused: the load check of {path} did not finish within {self.timeout_s:g} s",
                "a model that takes this long to load and score a few examples is not fit to serve",
            ) from None
        finally:
            stop_groups([proc], 5.0)
            with self._lock:
                self._proc = None
        verdict = _verdict(out)
        if verdict is None:
            tail = "\n".join(err.strip().splitlines()[-10:])
            raise DeployError(f"refused: the load check of {path} crashed (exit {proc.returncode}):\n{tail}")
        if not verdict.get("ok"):
            raise DeployError(f"refused: {path}: {verdict.get('reason')}", "nothing was published")
        return verdict

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            proc = self._proc
        if proc is not None:
            stop_groups([proc], 5.0)


def _child_env() -> dict[str, str]:
    import os

    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}


def _verdict(out: str) -> dict[str, Any] | None:
    for line in reversed(out.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict) and "ok" in value:
            return value
    return None


def publish(
    repository: str | Repository,
    model: str,
    source: Path,
    *,
    traffic: int = 100,
    require: str | None = None,
    pipeline: str | None = None,
    run_id: str | None = None,
    who: str,
    load_check: Callable[[Path], Any] | None = None,
    keep_last: int | None = None,
) -> Published:
    """Gate, then add ``source`` as the model's next version and route ``traffic`` percent to it.

    ``pipeline``/``run_id``: the run publishing (a deploy node); the export's are used when not given.
    When the export's run is known and differs from ``run_id``, its metrics are not this run's and
    cannot pass a ``require`` gate. ``keep_last``: prune unrouted versions beyond the newest ``keep_last``.
    """
    if isinstance(traffic, bool) or not isinstance(traffic, int) or not 0 <= traffic <= 100:
        raise DeployError(f"traffic {traffic!r} is not a percent", "give an integer from 0 to 100")
    if keep_last is not None and (isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1):
        raise DeployError(f"keep-last {keep_last!r} is not a count of versions", "give an integer of 1 or more")
    try:
        requirements = parse_require(require) if require else []
    except ValueError as exc:
        raise DeployError(f"require='{require}': {exc}") from None
    exported = read_exported(source)
    if requirements:
        if run_id is not None and exported.run_id is not None and exported.run_id != run_id:
            raise DeployError(
                f"refused: {source} was exported by run '{exported.run_id}', not this run '{run_id}'; its "
                "metrics cannot pass require=",
                "publish the model this run exported (the dataset's URI should depend on ${run_id} or ${ds})",
            )
        where = f"run '{exported.run_id}'" if exported.measured else f"the export in {source} (it carries no metrics)"
        check_requirements(requirements, exported.metrics, where)
    (load_check or LoadChecker())(source)
    pipeline = pipeline or exported.pipeline or "cli"
    run_id = run_id or exported.run_id or "cli"
    repo = FileRepository(repository) if isinstance(repository, str) else repository
    manifest = Manifest(
        pipeline=pipeline,
        run_id=run_id,
        featuremap_sha256=sha256_hex(exported.featuremap),
        publisher=who,
        metrics=dict(exported.metrics),
        source=str(source.resolve()),
    )
    version = repo.add_version(model, source, manifest)
    routing = update_routing(repo, model, lambda r, versions: r.publish(version, traffic, existing=versions, who=who))
    pruned = Pruned() if keep_last is None else prune(repo, model, keep_last, who=who)
    return Published(model, version, version_uri(repo, model, version), routing, repo, pruned)


def version_uri(repo: Repository, model: str, version: int) -> str:
    version_uri = getattr(repo, "version_uri", None)
    return str(version_uri(model, version)) if callable(version_uri) else f"{repo.uri.rstrip('/')}/{model}/{version}"
