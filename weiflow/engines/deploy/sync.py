"""``weiflow deploy sync``: mirror models of a repository (s3://, hdfs://, file://) into a local directory.

What a prediction-service pod runs beside the server when the repository is not a volume it
can mount (kubernetes.py renders it as an init container, then a sidecar). Each pass, per model:

1. every complete version at the source (a version directory holding its manifest, as
   :meth:`FileRepository.versions` lists them) missing locally is copied into a hidden staging
   directory, checked (the manifest parses, the feature map matches its hash), and renamed to
   ``<dest>/<model>/<version>``: the server sees a whole version or none;
2. then the routing file, last, through a temporary file and a rename, and only when every
   version it routes to or labels is here: the server never routes to a version it lacks;
3. then local versions the source no longer has are removed, unless the local routing still
   names them (a version being drained stays until the routing lets it go).

Nothing is written outside ``dest``: model names and versions are checked, every relative path
of a source file is too, links are neither copied nor followed on either side, and deletions go
through :class:`~weiflow.storage.RootedDeleter`. A pass holds an ``flock`` on
``<dest>/.weiflow-sync.lock``, so what a killed pass left in ``<model>/.weiflow/`` (staging,
temporary files) is its own to remove at the next pass. A failing model is retried a bounded
number of times; the other models go on.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec

from weiflow.errors import ConfigError, WeiflowError
from weiflow.modelrepo import FEATURE_MAP_PATH, MANIFEST_PATH, ROUTING_FILE, FileRepository, Manifest, Routing
from weiflow.modelrepo.contracts import STATE_DIR, ModelRepoError, check_model_name, sha256_hex
from weiflow.storage import RootedDeleter

__all__ = ["DEFAULT_EVERY_S", "SyncError", "SyncReport", "sync_forever", "sync_once"]

DEFAULT_EVERY_S = 30.0
LOCK_FILE = ".weiflow-sync.lock"  # hidden: not a model name, so no reader lists it
_PREFIX = "sync-"  # what a pass leaves in <model>/.weiflow/ while it works; nothing else there is ours


class SyncError(WeiflowError):
    """A pass could not start: another sync holds the destination's lock."""


@dataclass
class SyncReport:
    """What one pass changed, and the models it could not mirror (model -> why)."""

    copied: list[tuple[str, int]] = field(default_factory=list)
    removed: list[tuple[str, int]] = field(default_factory=list)
    routing: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed

    def lines(self) -> list[str]:
        return (
            [f"copied {model} v{version}" for model, version in self.copied]
            + [f"routing of {model} updated" for model in self.routing]
            + [f"removed {model} v{version}" for model, version in self.removed]
            + [f"FAILED {model}: {why}" for model, why in self.failed.items()]
        )


def _open(uri: str) -> tuple[Any, str]:
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, str(path).rstrip("/")


def _copy_file(src_fs: Any, src: str, dst: Path) -> None:
    """One file of a version; a module-level function so tests can make it fail or slow it down."""
    src_fs.get_file(src, str(dst))


def _safe_relative(name: str) -> PurePosixPath:
    """A source file's path relative to its version, refused when it could land outside the staging directory."""
    parts = name.split("/")  # as written: PurePosixPath would quietly drop "." and empty parts
    if any(part in ("", ".", "..") for part in parts):
        raise ModelRepoError(f"refusing to copy a file named {name!r}: it would land outside the version")
    return PurePosixPath(*parts)


def _real_dir(path: Path) -> Path:
    """``path`` as a directory of our own: created when missing, refused when it is a link (it could lead anywhere)."""
    if path.is_symlink():
        raise ModelRepoError(f"{path} is a symbolic link; refusing to write through it", "remove the link")
    path.mkdir(exist_ok=True)
    return path


class _Mirror:
    """One pass over one destination; the lock is held by the caller."""

    def __init__(self, source: str, dest: Path, report: SyncReport) -> None:
        self.source = source
        self.source_repo = FileRepository(source)
        self.fs, self.root = _open(source)
        self.dest = dest
        self.local_repo = FileRepository(str(dest))
        self.report = report
        self.deleter = RootedDeleter([str(dest)])

    def model(self, model: str) -> None:
        check_model_name(model)
        source_versions = self.source_repo.versions(model)
        routing_data = self._source_routing(model)
        if not source_versions and routing_data is None:
            # Also what a source that is briefly unreachable can look like: nothing local is removed.
            raise ModelRepoError(
                f"not found at {self.source} (no versions, no routing); nothing local was changed",
                "check --model and the source URI",
            )
        model_dir = _real_dir(self.dest / model)
        state = _real_dir(model_dir / STATE_DIR)
        for leftover in state.glob(f"{_PREFIX}*"):  # a killed pass's: we hold the lock, nobody else writes there
            self.deleter(str(leftover))
        local = set(self.local_repo.versions(model))
        for version in source_versions:
            if version not in local:
                self._copy_version(model, version, model_dir, state)
                self.report.copied.append((model, version))
                local.add(version)
        routing = self.local_repo.read_routing(model)
        if routing_data is not None:
            routing = self._write_routing(model, routing_data, local, model_dir, state)
        kept = set(routing.traffic) | set(routing.labels.values())
        for version in sorted(local - set(source_versions) - kept):
            target = model_dir / str(version)
            aside = state / f"{_PREFIX}removed-{uuid.uuid4().hex[:12]}"
            target.rename(aside)  # gone for the server at once; the files go next
            self.deleter(str(aside))
            self.report.removed.append((model, version))

    def _source_routing(self, model: str) -> bytes | None:
        try:
            data: bytes = self.fs.cat_file(f"{self.root}/{model}/{ROUTING_FILE}")
        except FileNotFoundError:
            return None
        return data

    def _copy_version(self, model: str, version: int, model_dir: Path, state: Path) -> None:
        source_dir = f"{self.root}/{model}/{version}"
        found = self.fs.find(source_dir, withdirs=True, detail=True)
        staging = state / f"{_PREFIX}staging-{uuid.uuid4().hex[:12]}"
        staging.mkdir()
        try:
            for path, info in sorted(found.items()):
                if path.rstrip("/") == source_dir:
                    continue
                relative = _safe_relative(path[len(source_dir) + 1 :].rstrip("/"))
                if info.get("islink"):
                    raise ModelRepoError(
                        f"{self.fs.unstrip_protocol(path)} is a symbolic link; versions hold files only",
                        "publish the model again: the repository copies files, never links",
                    )
                target = staging.joinpath(*relative.parts)
                if info["type"] == "directory":
                    target.mkdir(parents=True, exist_ok=True)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    _copy_file(self.fs, path, target)
            # The copy, not the source, must be whole: its manifest vouches for its feature map.
            manifest = Manifest.from_json(
                (staging / MANIFEST_PATH).read_bytes(), source=f"{source_dir}/{MANIFEST_PATH}"
            )
            if sha256_hex((staging / FEATURE_MAP_PATH).read_bytes()) != manifest.featuremap_sha256:
                raise ModelRepoError(f"{source_dir}/{FEATURE_MAP_PATH} does not match its manifest's hash")
            staging.rename(model_dir / str(version))  # fails on an existing directory: never replaces one
        finally:
            if staging.exists():
                self.deleter(str(staging))

    def _write_routing(self, model: str, data: bytes, local: set[int], model_dir: Path, state: Path) -> Routing:
        routing = Routing.from_json(data, source=f"{self.source}/{model}/{ROUTING_FILE}")
        if routing.model != model:
            raise ModelRepoError(f"the source's {ROUTING_FILE} is the routing of model '{routing.model}'")
        missing = sorted((set(routing.traffic) | set(routing.labels.values())) - local)
        if missing:
            raise ModelRepoError(
                f"the routing names version(s) {', '.join(map(str, missing))}, which are not here; the local "
                "routing is kept until they are"
            )
        final = model_dir / ROUTING_FILE
        if final.is_file() and not final.is_symlink() and final.read_bytes() == data:
            return routing  # unchanged: no rename, so a server polling mtimes sees nothing
        temporary = state / f"{_PREFIX}routing-{uuid.uuid4().hex[:12]}.tmp"
        try:
            with temporary.open("wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            temporary.replace(final)  # replaces a link itself, never what it points to
        finally:
            temporary.unlink(missing_ok=True)
        self.report.routing.append(model)
        return routing


@contextmanager
def _locked(dest: Path) -> Iterator[None]:
    """Hold ``<dest>/.weiflow-sync.lock``, or fail at once: one sync writes to a directory at a time.

    No waiting: in a pod the first copy ends before the sidecar starts, so a held lock means two
    syncs were pointed at one directory by mistake; a looping sync tries again at its next pass.
    """
    fd = os.open(dest / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SyncError(f"{dest / LOCK_FILE} is locked: another sync writes to {dest}") from None
        yield
    finally:
        os.close(fd)  # releases the lock; the kernel does too when a holder is killed


def _destination(dest: str | os.PathLike[str]) -> Path:
    path = Path(dest)
    if "://" in os.fspath(dest) or not path.is_absolute():
        raise ConfigError(f"deploy sync: DEST_DIR '{os.fspath(dest)}' must be an absolute local directory path")
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()  # once: every path below is built from it and checked not to be a link


def sync_once(
    source: str,
    dest: str | os.PathLike[str],
    models: Sequence[str] | None = None,
    *,
    attempts: int = 3,
    retry_wait_s: float = 1.0,
    stop: threading.Event | None = None,
) -> SyncReport:
    """One pass: mirror ``models`` (default: every model at the source) from ``source`` into ``dest``.

    Each model is tried up to ``attempts`` times, waiting ``retry_wait_s`` doubled after each
    failure; a model that still fails is in ``report.failed`` and left as it was.
    """
    if attempts < 1:
        raise ConfigError(f"deploy sync: --attempts {attempts}: give 1 or more")
    local_dest = _destination(dest)
    for name in models or ():
        try:
            check_model_name(name)
        except ModelRepoError as exc:
            raise ConfigError(f"deploy sync: --model: {exc.message}") from None
    report = SyncReport()
    try:
        with _locked(local_dest):
            _mirror_models(source, local_dest, models, report, attempts=attempts, retry_wait_s=retry_wait_s, stop=stop)
    except SyncError as exc:
        report.failed["*"] = str(exc)
    return report


def _mirror_models(
    source: str,
    dest: Path,
    models: Sequence[str] | None,
    report: SyncReport,
    *,
    attempts: int,
    retry_wait_s: float,
    stop: threading.Event | None,
) -> None:
    try:
        mirror = _Mirror(source, dest, report)
        names = list(models) if models else mirror.source_repo.models()
    except Exception as exc:  # storage clients raise their own kinds (botocore, pyarrow...)
        report.failed["*"] = f"cannot list {source}: {exc}"
        return
    for model in names:
        for attempt in range(attempts):
            if stop is not None and stop.is_set():
                return
            try:
                mirror.model(model)
                report.failed.pop(model, None)
                break
            # Any storage error, whatever its class: the model is left as it was, and tried again.
            except Exception as exc:
                report.failed[model] = f"{exc} (attempt {attempt + 1} of {attempts})"
                if attempt < attempts - 1:
                    (stop or threading.Event()).wait(retry_wait_s * 2**attempt)


def sync_forever(
    source: str,
    dest: str | os.PathLike[str],
    models: Sequence[str] | None = None,
    *,
    every_s: float = DEFAULT_EVERY_S,
    stop: threading.Event,
    on_pass: Callable[[SyncReport], None] = lambda report: None,
    attempts: int = 3,
    retry_wait_s: float = 1.0,
) -> None:
    """A pass every ``every_s`` seconds until ``stop`` is set; a failing pass is reported, the next one tries again."""
    while not stop.is_set():
        started = time.monotonic()
        on_pass(sync_once(source, dest, models, attempts=attempts, retry_wait_s=retry_wait_s, stop=stop))
        stop.wait(max(0.0, every_s - (time.monotonic() - started)))
