"""The model repository on a file system: local by default, HDFS or S3 through fsspec.

On a local (or NFS-mounted POSIX) file system every change is atomic:

- a version is copied into a hidden staging directory beside it (``<model>/.weiflow/``, so
  one rename moves it), its number claimed by creating ``.weiflow/claims/<n>`` with O_EXCL,
  then the directory renamed to ``<model>/<n>``: readers see all of it or nothing, two adds
  never share a number, and a removed version's number is never given again;
- the routing file is written to a temporary file and renamed over the old one, under an
  ``flock`` on ``.weiflow/routing.lock`` that also makes the generation check and the write
  one step (the kernel drops the lock when its holder dies, so a killed writer never wedges it);
- whatever a killed writer leaves is named ``<kind>-<host>-<pid>-<token>`` in ``.weiflow/``;
  :meth:`FileRepository.cleanup` (run by every add) removes it once that process is gone, or,
  for another host's, once it is older than ``stale_after_s``;
- a removed version is renamed into ``.weiflow/`` first (gone for every reader at once), then
  deleted. Every deletion goes through :class:`weiflow.storage.RootedDeleter` rooted at the
  repository: a version directory or leftover that is a symbolic link, or resolves outside the
  repository, is refused and never followed, so nothing outside the repository is ever deleted.

Object stores have neither atomic directory renames nor exclusive creates. There a version
is written in place with its manifest last, and :meth:`FileRepository.versions` lists only
versions holding a manifest (the same rule as ``_SUCCESS`` in :mod:`weiflow.storage`); TF
Serving itself may see a half-written version directory. The claim and the generation check
are a read then a write: two writers at the same instant can both pass, so run one deploy per
model at a time there.

:func:`weiflow.storage.atomic_output` does not fit here: it replaces an existing output, where
a version must never replace one, and it marks directories with ``_SUCCESS``, which does not
belong in a SavedModel.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from weiflow.features.featuremap import FeatureMap
from weiflow.modelrepo.contracts import (
    FEATURE_MAP_PATH,
    MANIFEST_PATH,
    ROUTING_FILE,
    STATE_DIR,
    Manifest,
    ModelRepoError,
    check_model_name,
    check_version,
    parse_version,
    sha256_hex,
)
from weiflow.modelrepo.repository import check_source, missing_version, routing_conflict
from weiflow.modelrepo.routing import Routing
from weiflow.storage import DeletionRefused, RootedDeleter

__all__ = ["FileRepository"]

log = logging.getLogger(__name__)

_CLAIMS = "claims"
_LOCK = "routing.lock"
_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "localhost"
_LEFTOVER = re.compile(r"(?:staging|routing|removed)-(?P<host>[A-Za-z0-9._]+)-(?P<pid>[0-9]+)-[0-9a-f]+(?:\.tmp)?")
_MAX_CLAIMS = 1000  # numbers tried before giving up: only directories made by hand can take them


def _open(uri: str) -> tuple[Any, str]:
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise ModelRepoError(f"cannot open storage for '{uri}': {exc}") from exc
    return fs, str(path).rstrip("/")


def _copy_file(src_fs: Any, src: str, dst_fs: Any, dst: str) -> None:
    """One file of a version; a module-level function so tests can slow it down."""
    if isinstance(src_fs, LocalFileSystem) and isinstance(dst_fs, LocalFileSystem):
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        return
    dst_fs.makedirs(dst.rpartition("/")[0], exist_ok=True)
    with src_fs.open(src, "rb") as reader, dst_fs.open(dst, "wb") as writer:
        shutil.copyfileobj(reader, writer, 1 << 20)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs on this host; a zombie (killed, not yet reaped by its parent) does not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        if Path("/proc/self").exists():
            return False
    except OSError:
        pass
    try:  # no /proc (macOS): a zombie counts as alive until it is reaped
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    return True


def _leftover_name(kind: str, suffix: str = "") -> str:
    return f"{kind}-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:12]}{suffix}"


def _owner() -> bytes:
    return json.dumps({"host": _HOST, "pid": os.getpid(), "at": time.time()}).encode()


class FileRepository:
    """Models under ``uri`` (a path or any fsspec URI), in the layout TF Serving reads."""

    def __init__(self, uri: str | os.PathLike[str], *, lock_timeout_s: float = 30.0, stale_after_s: float = 86400.0):
        self._uri = os.fspath(uri)
        self._fs, self._root = _open(self._uri)
        self._local = isinstance(self._fs, LocalFileSystem)
        # Local deletions never leave the repository, whatever links lie inside it.
        self._deleter = RootedDeleter([self._root], purpose="the model repository") if self._local else None
        self._lock_timeout_s = lock_timeout_s
        self._stale_after_s = stale_after_s  # longer than any copy: another host's leftovers age out

    @property
    def uri(self) -> str:
        return self._uri

    def version_uri(self, model: str, version: int) -> str:
        """Where a version's SavedModel is: what a loader opens."""
        return self._show(f"{self._dir(model)}/{check_version(version)}")

    # -- reading -------------------------------------------------------------------

    def models(self) -> list[str]:
        names = []
        for path in self._subdirs(self._root):
            name = path.rpartition("/")[2]
            try:
                names.append(check_model_name(name))
            except ModelRepoError:
                continue  # not a model: a hidden or foreign directory
        return sorted(names)

    def versions(self, model: str) -> list[int]:
        root = self._dir(model)
        numbers = (parse_version(path.rpartition("/")[2]) for path in self._subdirs(root))
        return sorted(v for v in numbers if v is not None and self._fs.exists(f"{root}/{v}/{MANIFEST_PATH}"))

    def read_routing(self, model: str) -> Routing:
        path = f"{self._dir(model)}/{ROUTING_FILE}"
        try:
            data = self._fs.cat_file(path)
        except FileNotFoundError:
            return Routing(model)
        routing = Routing.from_json(data, source=self._show(path))
        if routing.model != model:
            raise ModelRepoError(
                f"{self._show(path)} is the routing of model '{routing.model}', not '{model}'",
                "it was copied from another model: restore this model's own routing file",
            )
        return routing

    def manifest(self, model: str, version: int) -> Manifest:
        path = f"{self._version_dir(model, version)}/{MANIFEST_PATH}"
        return Manifest.from_json(self._fs.cat_file(path), source=self._show(path))

    def feature_map(self, model: str, version: int) -> FeatureMap:
        path = f"{self._version_dir(model, version)}/{FEATURE_MAP_PATH}"
        return FeatureMap.from_json(self._fs.cat_file(path).decode("utf-8"), source=self._show(path))

    # -- changing ------------------------------------------------------------------

    def write_routing(self, routing: Routing) -> None:
        with self._locked(routing.model):
            self._write_routing(routing)

    def add_version(self, model: str, source: str | os.PathLike[str], manifest: Manifest) -> int:
        check_model_name(model)
        shown = os.fspath(source)
        src_fs, src_root = _open(shown)
        if not src_fs.isdir(src_root):
            raise ModelRepoError(f"{shown} is not a directory", "publish the SavedModel directory an export wrote")
        found = src_fs.find(src_root, withdirs=True, detail=True)
        relative = {path[len(src_root) + 1 :]: info["type"] for path, info in found.items() if path != src_root}
        folders = sorted(name for name, kind in relative.items() if kind == "directory")  # assets/ may be empty
        names = sorted(name for name, kind in relative.items() if kind != "directory" and name != MANIFEST_PATH)
        featuremap = src_fs.cat_file(f"{src_root}/{FEATURE_MAP_PATH}") if FEATURE_MAP_PATH in names else None
        check_source(shown, names, featuremap, manifest)
        self.cleanup(model)

        def copy_into(target: str) -> None:
            for folder in folders:
                self._fs.makedirs(f"{target}/{folder}", exist_ok=True)
            for name in names:
                _copy_file(src_fs, f"{src_root}/{name}", self._fs, f"{target}/{name}")
            # The manifest vouches for the copy, not the source, which may have changed meanwhile.
            if sha256_hex(self._fs.cat_file(f"{target}/{FEATURE_MAP_PATH}")) != manifest.featuremap_sha256:
                raise ModelRepoError(
                    f"{shown}/{FEATURE_MAP_PATH} changed while it was copied", "publish again once nothing writes there"
                )
            self._fs.pipe_file(f"{target}/{MANIFEST_PATH}", manifest.to_json().encode())

        return self._add_local(model, copy_into) if self._local else self._add_remote(model, copy_into)

    def remove_version(self, model: str, version: int, *, who: str) -> Routing:
        with self._locked(model):
            new = self.read_routing(model).remove(version, existing=self.versions(model), who=who)
            target = f"{self._dir(model)}/{version}"
            if self._local:
                self._refuse_outside(Path(target), f"version {version} of model '{model}'")
                aside = Path(self._state(model)) / _leftover_name("removed")
                Path(target).rename(aside)  # gone for every reader at once; deleted below
            else:
                self._fs.rm_file(f"{target}/{MANIFEST_PATH}")  # first: readers stop listing it
            self._write_routing(new)
        if self._local:
            self._delete_local(aside)  # outside the lock: a big version takes a while
        else:
            self._fs.rm(target, recursive=True)
        return new

    def cleanup(self, model: str | None = None) -> list[str]:
        removed: list[str] = []
        for name in [model] if model is not None else self.models():
            removed += self._cleanup_local(name) if self._local else self._cleanup_remote(name)
        return removed

    # -- helpers -------------------------------------------------------------------

    def _dir(self, model: str) -> str:
        return f"{self._root}/{check_model_name(model)}"

    def _state(self, model: str) -> str:
        return f"{self._dir(model)}/{STATE_DIR}"

    def _show(self, path: str) -> str:
        return path if self._local else str(self._fs.unstrip_protocol(path))

    def _subdirs(self, path: str) -> list[str]:
        try:
            entries = self._fs.ls(path, detail=True)
        except FileNotFoundError:
            return []
        return [str(e["name"]).rstrip("/") for e in entries if e["type"] == "directory"]

    def _version_dir(self, model: str, version: int) -> str:
        path = f"{self._dir(model)}/{check_version(version)}"
        if not self._fs.exists(f"{path}/{MANIFEST_PATH}"):
            raise missing_version(model, version, self.versions(model), self._show(self._root))
        return path

    def _stale(self, host: str, pid: int, since: float) -> bool:
        """Whether a leftover's writer is gone: dead on this host, or silent past ``stale_after_s``."""
        if time.time() - since > self._stale_after_s:
            return True
        return host == _HOST and pid != os.getpid() and not _alive(pid)

    def _cleanup_local(self, model: str) -> list[str]:
        state = Path(self._state(model))
        removed = []
        for entry in list(state.iterdir()) if state.is_dir() else []:
            match = _LEFTOVER.fullmatch(entry.name)
            try:
                if not match or not self._stale(match["host"], int(match["pid"]), entry.stat().st_mtime):
                    continue
            except FileNotFoundError:
                continue  # another cleanup got there first
            if self._delete_local(entry):
                removed.append(str(entry))
        return removed

    def _refuse_outside(self, path: Path, what: str) -> None:
        """Refuse, before anything changes, to remove ``path`` when it is a link or resolves outside the repository.

        The deleter checks again when it deletes; checking first keeps the version and the
        routing as they were, instead of refusing halfway.
        """
        real, root = os.path.realpath(path), os.path.realpath(self._root)
        if path.is_symlink() or os.path.commonpath([real, root]) != root:
            raise ModelRepoError(
                f"refusing to remove {what}: {path} is a symbolic link or resolves outside the repository "
                f"{self._root} (to {real}); deleting it would delete what it points to",
                f"a repository deletes nothing outside {self._root}: move the version's files back inside it, or "
                "remove the version by hand",
            )

    def _delete_local(self, path: Path) -> bool:
        """Delete a removed version set aside or a leftover through the deleter; whether it is gone now.

        Never raises: the change that set it aside is already done, and :meth:`cleanup` tries
        again later. Two cleanups may race on one leftover: whichever finishes it, it is gone.
        """
        assert self._deleter is not None
        try:
            self._deleter(str(path))
        except DeletionRefused as exc:
            log.warning("model repository %s: left %s in place: %s", self._root, path, exc)
        except OSError:
            pass  # another cleanup is deleting it too, or a file is busy: judged by what is left
        return not os.path.lexists(path)

    def _cleanup_remote(self, model: str) -> list[str]:
        """Remote versions are written in place: a claimed number whose directory has no manifest,
        and whose writer is gone, is what a killed add left."""
        claims = f"{self._state(model)}/{_CLAIMS}"
        numbered = {path.rpartition("/")[2] for path in self._subdirs(self._dir(model))}
        removed = []
        for claim in self._fs.ls(claims, detail=False) if self._fs.exists(claims) else []:
            target = f"{self._dir(model)}/{claim.rpartition('/')[2]}"
            if claim.rpartition("/")[2] not in numbered or self._fs.exists(f"{target}/{MANIFEST_PATH}"):
                continue
            try:
                owner = json.loads(self._fs.cat_file(claim))
                stale = self._stale(str(owner["host"]), int(owner["pid"]), float(owner["at"]))
            except (ValueError, KeyError, TypeError):
                stale = False  # not a claim WeiFlow wrote: leave that directory alone
            if stale:
                self._fs.rm(target, recursive=True)
                removed.append(self._show(target))
        return removed

    def _next_version(self, model: str) -> int:
        """One above every number a directory or a claim holds, so no number is given twice."""
        taken = [parse_version(p.rpartition("/")[2]) for p in self._subdirs(self._dir(model))]
        with suppress(FileNotFoundError):
            taken += [
                parse_version(p.rpartition("/")[2])
                for p in self._fs.ls(f"{self._state(model)}/{_CLAIMS}", detail=False)
            ]
        return max([v for v in taken if v is not None], default=0) + 1

    def _add_local(self, model: str, copy_into: Callable[[str], None]) -> int:
        model_dir = Path(self._dir(model))
        claims = Path(self._state(model)) / _CLAIMS
        claims.mkdir(parents=True, exist_ok=True)
        staging = claims.parent / _leftover_name("staging")
        staging.mkdir()
        try:
            copy_into(str(staging))
            for _ in range(_MAX_CLAIMS):
                number = self._next_version(model)
                try:
                    fd = os.open(claims / str(number), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    continue  # another add claimed it first
                with os.fdopen(fd, "wb") as handle:
                    handle.write(_owner())
                try:
                    # Fails on a non-empty directory: a version can never replace another.
                    staging.rename(model_dir / str(number))
                except OSError as exc:
                    if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                        raise
                    continue  # a directory made by hand holds that number
                return number
            raise ModelRepoError(f"model '{model}': no free version number in {_MAX_CLAIMS} tries at {model_dir}")
        finally:
            if staging.exists():
                self._delete_local(staging)

    def _add_remote(self, model: str, copy_into: Callable[[str], None]) -> int:
        claims = f"{self._state(model)}/{_CLAIMS}"
        for _ in range(_MAX_CLAIMS):
            number = self._next_version(model)
            target = f"{self._dir(model)}/{number}"
            if self._fs.exists(f"{claims}/{number}") or self._fs.exists(target):
                continue
            self._fs.pipe_file(f"{claims}/{number}", _owner())
            try:
                copy_into(target)
            except BaseException:
                if self._fs.exists(target):
                    self._fs.rm(target, recursive=True)
                raise
            return number
        raise ModelRepoError(f"model '{model}': no free version number in {_MAX_CLAIMS} tries at {self._show(claims)}")

    def _write_routing(self, routing: Routing) -> None:
        stored = self.read_routing(routing.model).generation
        if stored != routing.generation - 1:
            raise routing_conflict(routing, stored)
        data = routing.to_json().encode()
        final = f"{self._dir(routing.model)}/{ROUTING_FILE}"
        if not self._local:
            self._fs.pipe_file(final, data)  # one PUT: readers see the old object or the new one
            return
        state = Path(self._state(routing.model))
        state.mkdir(parents=True, exist_ok=True)
        temporary = state / _leftover_name("routing", ".tmp")
        try:
            with temporary.open("wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())  # small, and it is the truth serving reads: worth a sync
            temporary.replace(final)
        finally:
            temporary.unlink(missing_ok=True)

    @contextmanager
    def _locked(self, model: str) -> Iterator[None]:
        """Hold the model's routing lock (local file systems; a no-op on object stores)."""
        if not self._local:
            yield
            return
        state = Path(self._state(model))
        state.mkdir(parents=True, exist_ok=True)
        fd = os.open(state / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + self._lock_timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ModelRepoError(
                            f"model '{model}': {state / _LOCK} stayed locked for {self._lock_timeout_s:g}s",
                            "another deploy is changing this model: retry when it is done",
                        ) from None
                    time.sleep(0.01)
            yield
        finally:
            os.close(fd)  # releases the lock
