"""The model repository's interface, the checks every implementation shares, and an in-memory one.

:class:`Repository` is what the deploy engine, the CLI and the prediction service program
against; :class:`~weiflow.modelrepo.files.FileRepository` stores models on a file system
(local, HDFS, S3) and :class:`MemoryRepository` keeps them in a dict, for tests.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from weiflow.errors import WeiflowError
from weiflow.features.featuremap import FeatureError, FeatureMap
from weiflow.modelrepo.contracts import (
    FEATURE_MAP_PATH,
    MANIFEST_PATH,
    SAVED_MODEL_FILES,
    Manifest,
    ModelRepoError,
    RoutingConflict,
    check_model_name,
    check_version,
    sha256_hex,
)
from weiflow.modelrepo.routing import Routing

__all__ = [
    "MemoryRepository",
    "Pruned",
    "Repository",
    "check_source",
    "known_versions",
    "promote",
    "prunable",
    "prune",
    "rollback",
    "update_routing",
]


class Repository(Protocol):
    """Models, their versions and their routing. Every method checks model names and versions."""

    @property
    def uri(self) -> str: ...

    def models(self) -> list[str]:
        """Model names, sorted."""
        ...

    def versions(self, model: str) -> list[int]:
        """The model's complete versions, ascending; [] for an unknown model."""
        ...

    def read_routing(self, model: str) -> Routing:
        """The model's routing; an empty one (generation 0) when it has never been written."""
        ...

    def write_routing(self, routing: Routing) -> None:
        """Replace the routing of ``routing.model`` as a whole.

        A compare-and-swap: the stored generation must be ``routing.generation - 1``, i.e. the
        routing this one was derived from by one transition; otherwise :class:`RoutingConflict`.
        """
        ...

    def add_version(self, model: str, source: str | os.PathLike[str], manifest: Manifest) -> int:
        """Copy the SavedModel directory ``source`` into the model's next version and return it.

        The version becomes visible complete or not at all; concurrent adds get distinct
        versions; a number is never given twice, even after the version is removed.
        """
        ...

    def manifest(self, model: str, version: int) -> Manifest: ...

    def feature_map(self, model: str, version: int) -> FeatureMap: ...

    def remove_version(self, model: str, version: int, *, who: str) -> Routing:
        """Delete a version that is neither live nor labelled; returns the routing recording it."""
        ...

    def cleanup(self, model: str | None = None) -> list[str]:
        """Remove what killed writers left behind (never a complete version); returns what went."""
        ...


def update_routing(
    repository: Repository, model: str, change: Callable[[Routing, list[int]], Routing], *, attempts: int = 3
) -> Routing:
    """Apply ``change(routing, versions)`` and store the result, retrying on a concurrent change.

    Retrying is safe because a change says what it wants ("version 4 at 50%"), and is checked
    again against the state it now applies to. The routing is read before the versions: a
    removal bumps the generation, so a change computed from versions that lost one fails its
    compare-and-swap instead of routing to a deleted version.
    """
    for attempt in range(attempts):
        routing = repository.read_routing(model)
        new = change(routing, repository.versions(model))
        try:
            repository.write_routing(new)
            return new
        except RoutingConflict:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")  # attempts < 1


def promote(repository: Repository, model: str, version: int | None, traffic: int, *, who: str) -> Routing:
    """Give ``version`` (default: the newest) ``traffic`` percent."""
    versions = known_versions(repository, model)
    target = versions[-1] if version is None else version
    return update_routing(repository, model, lambda r, existing: r.promote(target, traffic, existing=existing, who=who))


def rollback(repository: Repository, model: str, *, who: str) -> Routing:
    known_versions(repository, model)
    return update_routing(repository, model, lambda r, existing: r.rollback(existing=existing, who=who))


def prunable(routing: Routing, versions: Collection[int], keep_last: int) -> list[int]:
    """The versions ``keep-last:<keep_last>`` deletes, ascending: the unrouted ones beyond the newest ``keep_last``.

    Routed, so never deleted: live versions (traffic > 0), labelled ones (stable, canary, the
    owner's labels), and the newest earlier-stable version that is stored and not live: where a
    rollback returns (after ending a gray release, if one is on). Older earlier-stable versions
    are not kept for rollback (a model published daily at 100% would keep them all): rollback
    skips removed versions, so it still works, going back to the newest one kept.
    """
    if keep_last < 1:
        raise ValueError(f"keep-last must be at least 1, not {keep_last}")
    existing = set(versions)
    live = set(routing.traffic)
    rollback_to = next((v for v in reversed(routing.previous_stable) if v in existing and v not in live), None)
    routed = live | set(routing.labels.values()) | {rollback_to}
    unrouted = sorted(existing - routed)
    return unrouted[: max(len(unrouted) - keep_last, 0)]


@dataclass(frozen=True)
class Pruned:
    """What :func:`prune` did: the versions it removed (ascending), why it could not remove others, and the
    routing after its last removal (None when it removed nothing)."""

    removed: tuple[int, ...] = ()
    problems: tuple[str, ...] = ()
    routing: Routing | None = None


def prune(repository: Repository, model: str, keep_last: int, *, who: str) -> Pruned:
    """Remove the model's :func:`prunable` versions, oldest first, each recorded as a 'remove' change.

    Never raises for the repository's sake: pruning is housekeeping after a change that already
    succeeded, and must not fail it. A version that cannot go (it went live meanwhile, its files
    are refused) is reported in ``problems`` and the others are still tried.
    """
    removed: list[int] = []
    problems: list[str] = []
    routing: Routing | None = None
    try:
        candidates = prunable(repository.read_routing(model), repository.versions(model), keep_last)
    except (WeiflowError, OSError) as exc:
        return Pruned((), (f"model '{model}': cannot tell which versions keep-last:{keep_last} removes: {exc}",))
    for version in candidates:
        try:
            routing = repository.remove_version(model, version, who=who)
        except (WeiflowError, OSError) as exc:  # ModelRepoError, RoutingConflict, DeletionRefused; I/O errors
            problems.append(f"model '{model}': version {version} stays: {exc}")
            continue
        removed.append(version)
    return Pruned(tuple(removed), tuple(problems), routing)


def known_versions(repository: Repository, model: str) -> list[int]:
    """The model's versions, ascending; an error naming the repository's models when it has none."""
    versions = repository.versions(model)
    if not versions:
        models = ", ".join(repository.models()) or "none"
        raise ModelRepoError(
            f"model '{model}' has no versions in {repository.uri} (models: {models})",
            "publish it first, or check the name and --repository",
        )
    return versions


def check_source(source: str, names: Collection[str], featuremap: bytes | None, manifest: Manifest) -> None:
    """Refuse a source that is not a SavedModel with a feature map matching ``manifest``.

    ``names`` are the source's file paths relative to it (``/``-separated).
    """
    if not any(name in names for name in SAVED_MODEL_FILES):
        raise ModelRepoError(
            f"{source} is not a SavedModel: it has no {' or '.join(SAVED_MODEL_FILES)}",
            "publish the directory an export module (or tf.saved_model.save) wrote: <dataset>/<model>/<version>/",
        )
    if featuremap is None:
        raise ModelRepoError(
            f"{source} has no {FEATURE_MAP_PATH}: serving could not map raw features the way training did",
            "train from samples a Spark features module wrote (they carry _featuremap.json); export copies it",
        )
    digest = sha256_hex(featuremap)
    if digest != manifest.featuremap_sha256:
        raise ModelRepoError(
            f"{source}/{FEATURE_MAP_PATH} has SHA-256 {digest}, but the manifest says {manifest.featuremap_sha256}",
            "compute featuremap_sha256 from the file being published",
        )
    try:
        FeatureMap.from_json(featuremap.decode("utf-8"), source=f"{source}/{FEATURE_MAP_PATH}")
    except (FeatureError, UnicodeDecodeError) as exc:
        raise ModelRepoError(f"{source}/{FEATURE_MAP_PATH} is not a valid feature map: {exc}") from None


class MemoryRepository:
    """A repository in a dict, with the same checks and errors as the file one; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[tuple[str, int], dict[str, bytes]] = {}
        self._routing: dict[str, str] = {}  # stored as JSON, so every read goes through the parser
        self._last: dict[str, int] = {}  # the highest version ever given, per model

    @property
    def uri(self) -> str:
        return "memory:"

    def models(self) -> list[str]:
        with self._lock:
            return sorted({m for m, _ in self._files} | set(self._routing))

    def versions(self, model: str) -> list[int]:
        check_model_name(model)
        with self._lock:
            return sorted(v for m, v in self._files if m == model)

    def read_routing(self, model: str) -> Routing:
        check_model_name(model)
        with self._lock:
            text = self._routing.get(model)
        return Routing(model) if text is None else Routing.from_json(text, source=f"memory:{model}/routing")

    def write_routing(self, routing: Routing) -> None:
        with self._lock:
            self._write_routing(routing)

    def _write_routing(self, routing: Routing) -> None:
        text = self._routing.get(routing.model)
        stored = 0 if text is None else Routing.from_json(text).generation
        if stored != routing.generation - 1:
            raise routing_conflict(routing, stored)
        self._routing[routing.model] = routing.to_json()

    def add_version(self, model: str, source: str | os.PathLike[str], manifest: Manifest) -> int:
        check_model_name(model)
        root = Path(source)
        if not root.is_dir():
            raise ModelRepoError(f"{root} is not a directory", "publish a SavedModel directory")
        files = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        check_source(str(root), files, files.get(FEATURE_MAP_PATH), manifest)
        files[MANIFEST_PATH] = manifest.to_json().encode()
        with self._lock:
            version = self._last.get(model, 0) + 1
            self._last[model] = version
            self._files[model, version] = files
        return version

    def manifest(self, model: str, version: int) -> Manifest:
        return Manifest.from_json(self._file(model, version, MANIFEST_PATH), source=f"memory:{model}/{version}")

    def feature_map(self, model: str, version: int) -> FeatureMap:
        text = self._file(model, version, FEATURE_MAP_PATH).decode()
        return FeatureMap.from_json(text, source=f"memory:{model}/{version}/{FEATURE_MAP_PATH}")

    def files(self, model: str, version: int) -> dict[str, bytes]:
        """A copy of a version's files, by relative path (what the file repository would hold)."""
        self._file(model, version, MANIFEST_PATH)
        with self._lock:
            return dict(self._files[model, version])

    def remove_version(self, model: str, version: int, *, who: str) -> Routing:
        check_model_name(model)
        with self._lock:
            text = self._routing.get(model)
            routing = Routing(model) if text is None else Routing.from_json(text)
            existing = [v for m, v in self._files if m == model]
            new = routing.remove(version, existing=existing, who=who)
            self._write_routing(new)
            del self._files[model, version]
        return new

    def cleanup(self, model: str | None = None) -> list[str]:
        return []  # nothing is ever half-written in a dict

    def _file(self, model: str, version: int, name: str) -> bytes:
        check_model_name(model)
        check_version(version)
        with self._lock:
            files = self._files.get((model, version))
            known = sorted(v for m, v in self._files if m == model)
        if files is None:
            raise missing_version(model, version, known, "memory:")
        return files[name]


def missing_version(model: str, version: int, known: Collection[int], where: str) -> ModelRepoError:
    listed = ", ".join(map(str, sorted(known))) or "none"
    return ModelRepoError(
        f"model '{model}' has no version {version} in {where} (versions: {listed})", "pick one of its versions"
    )


def routing_conflict(routing: Routing, stored: int) -> RoutingConflict:
    return RoutingConflict(
        f"model '{routing.model}': the routing changed while this change was made (stored generation {stored}, "
        f"this change follows generation {routing.generation - 1})",
        "read the routing again and redo the change (update_routing retries by itself)",
    )
