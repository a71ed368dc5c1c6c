"""Datasets on storage: atomic outputs, completeness markers, sizes. Local paths, HDFS or S3 via fsspec.

A dataset directory is complete when it holds ``_SUCCESS``. Writers stage into a hidden
sibling directory and commit by rename, the marker inside, so a killed or retried node never
leaves a directory that looks complete. Re-committing the same URI (a rerun of the same run
id) replaces the old output as a whole; on object stores, which have no atomic directory
rename, the marker is written last and is what readers trust.

Deleting user data goes through :class:`RootedDeleter`, which removes only what lies strictly
inside the configured storage roots (the retention sweep is its caller).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import stat
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from weiflow.errors import ConfigError, DatasetError
from weiflow.spec.uris import uri_problem

__all__ = [
    "SUCCESS_MARKER",
    "DeletionRefused",
    "RootedDeleter",
    "StagedOutput",
    "StorageRoots",
    "atomic_output",
    "dataset_size",
    "exists",
    "is_complete",
    "local_path",
]

SUCCESS_MARKER = "_SUCCESS"


def _fs(uri: str) -> tuple[Any, str]:
    try:
        fs, path = fsspec.core.url_to_fs(uri)
        return fs, str(path)
    except (ImportError, ValueError) as exc:
        raise DatasetError(f"cannot open storage for '{uri}': {exc}") from exc


def local_path(uri: str) -> Path | None:
    """The local path behind a ``file://`` URI or a plain path; None for remote storage."""
    fs, path = _fs(uri)
    return Path(path) if isinstance(fs, LocalFileSystem) else None


def exists(uri: str) -> bool:
    fs, path = _fs(uri)
    return bool(fs.exists(path))


def is_complete(uri: str) -> bool:
    fs, path = _fs(uri)
    return bool(fs.exists(f"{path.rstrip('/')}/{SUCCESS_MARKER}"))


def _is_data_file(name: str) -> bool:
    """Data files, as Spark and Hadoop readers see them: not _SUCCESS, _featuremap.json or .crc files."""
    return not name.rpartition("/")[2].startswith(("_", "."))


def dataset_size(uri: str) -> tuple[int, int]:
    """(bytes, files) of a dataset's data files: markers, metadata and checksum files excluded."""
    fs, path = _fs(uri)
    if not fs.exists(path):
        return 0, 0
    if not fs.isdir(path):
        return int(fs.size(path)), 1
    sizes = [int(info["size"]) for name, info in fs.find(path, detail=True).items() if _is_data_file(name)]
    return sum(sizes), len(sizes)


@dataclass
class StagedOutput:
    """Where a writer puts its files before commit; set ``rows`` when known.

    ``path`` is a local directory. ``target`` is the same place as a URI, except for remote
    storage opened with ``stage_on_storage=True``: then it is a staging directory on that
    storage, for writers whose files do not pass through this machine (Spark executors on
    other hosts), and ``path`` stays empty.
    """

    path: Path
    uri: str
    target: str = ""
    rows: int | None = None
    schema: dict[str, str] | None = None


@contextmanager
def atomic_output(uri: str, *, run_id: str, stage_on_storage: bool = False) -> Iterator[StagedOutput]:
    """Stage a dataset's files and commit them to ``uri`` only if the block succeeds.

    Locally the staging directory is a hidden sibling of ``uri``. For remote storage it is a
    local temporary directory uploaded at commit, or, with ``stage_on_storage``, a hidden
    sibling on the storage itself that the writer fills directly (``out.target``).
    """
    fs, path = _fs(uri)
    path = path.rstrip("/")
    local = isinstance(fs, LocalFileSystem)
    token = uuid.uuid4().hex[:12]
    parent, _, name = path.rpartition("/")
    remote_stage = None
    if local:
        _refuse_foreign(Path(path))
        staging = Path(parent or "/") / f".{name}.tmp-{token}"
        try:
            Path(parent or "/").mkdir(parents=True, exist_ok=True)
            staging.mkdir()
        except OSError as exc:
            raise _storage_error(uri, exc) from exc
        target = f"file://{staging}"
    else:
        staging = Path(tempfile.mkdtemp(prefix="weiflow-stage-"))
        target = staging.as_uri()
        if stage_on_storage:
            remote_stage = f"{parent}/.{name}.tmp-{token}"
            target = fs.unstrip_protocol(remote_stage)
    output = StagedOutput(staging, uri, target)
    try:
        try:
            yield output
            marker = json.dumps({"run_id": run_id, "committed_at": datetime.now(UTC).isoformat(), "rows": output.rows})
            if local:
                (staging / SUCCESS_MARKER).write_text(marker)
                with _signals_deferred():
                    _commit_local(staging, Path(path), token)
            else:
                _commit_remote(fs, staging, path, token, marker, staged_remotely=remote_stage is not None)
        except OSError as exc:
            if exc.errno not in _STORAGE_ERRNOS:
                raise
            raise _storage_error(uri, exc) from exc
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        if remote_stage is not None and fs.exists(remote_stage):
            fs.rm(remote_stage, recursive=True)


# The storage itself refused a write: full, over a quota or a file-size limit, or read-only. Said as
# the dataset's failure (a DatasetError naming it), not as a bug in the code that was writing.
_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM})


def _storage_error(uri: str, exc: OSError) -> DatasetError:
    why = os.strerror(exc.errno) if exc.errno else str(exc)
    return DatasetError(
        f"cannot write dataset {uri}: the storage refused it ({why}: {exc}); nothing was committed and the "
        "previous version, if any, is unchanged"
    )


def _refuse_foreign(final: Path) -> None:
    """Never replace a directory WeiFlow did not commit: it may hold someone's data."""
    if final.is_file() or (final.is_dir() and any(final.iterdir()) and not (final / SUCCESS_MARKER).exists()):
        raise DatasetError(
            f"{final} exists and is not a WeiFlow dataset (no {SUCCESS_MARKER}); refusing to replace it: "
            "point the dataset's uri elsewhere, or move that data away"
        )


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM across the two renames of a commit, so cancelling never loses the old output."""
    blocked = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _commit_local(staging: Path, final: Path, token: str) -> None:
    """Rename the staged directory into place; an older output is moved aside, then removed."""
    old = final.with_name(f".{final.name}.old-{token}")
    if final.exists():
        final.rename(old)
    try:
        staging.rename(final)
    except OSError as exc:
        if old.exists() and not final.exists():
            old.rename(final)  # nothing already stored is lost
        raise DatasetError(f"cannot commit output to {final}: {exc}") from exc
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def _commit_remote(fs: Any, staging: Path, path: str, token: str, marker: str, *, staged_remotely: bool) -> None:
    """Upload beside the target (unless the writer already did), swap it in, write the marker last.

    The old output is restored on failure. Object stores have no atomic directory rename:
    readers rely on the marker, which is written only once every file is in place.
    """
    parent, _, name = path.rpartition("/")
    remote_tmp, old = f"{parent}/.{name}.tmp-{token}", f"{parent}/.{name}.old-{token}"
    try:
        if not staged_remotely:
            fs.put(str(staging), remote_tmp, recursive=True)
        moved_aside = bool(fs.exists(path))
        if moved_aside:
            fs.mv(path, old, recursive=True)
        try:
            fs.mv(remote_tmp, path, recursive=True)
        except BaseException:
            if moved_aside and not fs.exists(path):
                fs.mv(old, path, recursive=True)  # nothing already stored is lost
            raise
        with fs.open(f"{path}/{SUCCESS_MARKER}", "w") as handle:
            handle.write(marker)
        if moved_aside:
            fs.rm(old, recursive=True)
    finally:
        if fs.exists(remote_tmp):
            fs.rm(remote_tmp, recursive=True)


def _md5(fs: Any, path: str) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with fs.open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sync_dataset(source: str, target: str, *, run_id: str, checksum: str = "md5") -> dict[str, int]:
    """Copy the dataset at ``source`` to ``target`` (any two storage roots), committed atomically.

    A file already in the (complete) target with the same size and, with ``checksum="md5"``,
    the same MD5 is not copied again: locally it is hard-linked into the new version. Returns
    counts: files, copied, skipped, bytes_copied.
    """
    src_fs, src_root = _fs(source)
    tgt_fs, tgt_root = _fs(target)
    src_root, tgt_root = src_root.rstrip("/"), tgt_root.rstrip("/")
    if not src_fs.exists(src_root):
        raise DatasetError(f"sync: source {source} does not exist")
    files = {
        name[len(src_root) + 1 :]: int(info["size"])
        for name, info in src_fs.find(src_root, detail=True).items()
        if not name.endswith("/" + SUCCESS_MARKER)
    }
    existing: dict[str, int] = {}
    if is_complete(target):
        existing = {
            name[len(tgt_root) + 1 :]: int(info["size"])
            for name, info in tgt_fs.find(tgt_root, detail=True).items()
            if not name.endswith("/" + SUCCESS_MARKER)
        }
    stats = {"files": len(files), "copied": 0, "skipped": 0, "bytes_copied": 0}
    with atomic_output(target, run_id=run_id) as out:
        for relative, size in sorted(files.items()):
            destination = out.path / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            same = existing.get(relative) == size and (
                checksum == "size" or _md5(src_fs, f"{src_root}/{relative}") == _md5(tgt_fs, f"{tgt_root}/{relative}")
            )
            if same and isinstance(tgt_fs, LocalFileSystem):
                os.link(f"{tgt_root}/{relative}", destination)
            elif same:
                tgt_fs.get(f"{tgt_root}/{relative}", str(destination))
            else:
                src_fs.get(f"{src_root}/{relative}", str(destination))
                stats["copied"] += 1
                stats["bytes_copied"] += size
                continue
            stats["skipped"] += 1
    return stats


class DeletionRefused(DatasetError):
    """Retention was asked to delete something that is not strictly inside a storage root; nothing was deleted."""


# fsspec's names for one storage: compared as one protocol.
_PROTOCOL_ALIASES = {"s3a": "s3", "gcs": "gs"}
_NO_FOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def _split(uri: str) -> tuple[str, str]:
    """(protocol, path) of a URI, read from its text alone: no file system is opened or imported."""
    protocol, path = fsspec.core.split_protocol(uri)
    protocol = (protocol or "file").lower()
    return _PROTOCOL_ALIASES.get(protocol, protocol), path


def _strictly_inside(path: str, root: str) -> bool:
    """``path`` is a proper descendant of ``root`` (both absolute and normalised): '/a/b2' is not inside '/a/b'."""
    return path != root and os.path.commonpath([path, root]) == root


class StorageRoots:
    """The configured storage roots (the ``storage_roots`` setting), checked once: where WeiFlow's own
    servers may touch files named by a record or a client (delete, or write a model's routing).

    Local roots are absolute paths; other protocols' roots are paths in normal form. A root must
    name a directory, not a whole file system.
    """

    def __init__(self, roots: Iterable[str], *, purpose: str = "this") -> None:
        self.roots: tuple[str, ...] = tuple(roots)
        if not self.roots:
            raise ConfigError(f"{purpose} needs at least one storage root to work under (the storage_roots setting)")
        self.local: list[str] = []  # absolute paths as configured; their real paths are taken at each use
        self.remote: list[tuple[str, tuple[str, ...]]] = []  # (protocol, path parts)
        for root in self.roots:
            problem = uri_problem(root)
            if problem:
                raise ConfigError(f"storage root {problem}")
            protocol, path = _split(root)
            parts = tuple(part for part in path.split("/") if part)
            if protocol == "file" and not PurePosixPath(path).is_absolute():
                raise ConfigError(f"storage root {root!r} is relative: write file:///absolute/path")
            if not parts or any(part in (".", "..") for part in parts):
                raise ConfigError(f"storage root {root!r}: name a directory (not a whole file system, no '.' or '..')")
            if protocol == "file":
                self.local.append(os.path.normpath(path))
            else:
                self.remote.append((protocol, parts))

    def outside(self, uri: str) -> str | None:
        """Why ``uri`` does not lie in (or at) a root, or None when it does.

        Local paths are compared by real path (every link resolved) at the moment of the call;
        others by their parts, which must be in normal form.
        """
        problem = uri_problem(uri)
        if problem:
            return problem
        protocol, path = _split(uri)
        if protocol == "file":
            if not PurePosixPath(path).is_absolute():
                return "a relative path"
            real = os.path.realpath(path)
            if any(real == root or _strictly_inside(real, root) for root in map(os.path.realpath, self.local)):
                return None
            resolved = f" (it resolves to {real})" if real != os.path.normpath(path) else ""
            return f"outside every storage root{resolved}"
        parts = tuple(path.strip("/").split("/"))
        if "" in parts:
            return "the path is not in normal form (an empty part: '//')"
        if any(root_protocol == protocol and parts[: len(root)] == root for root_protocol, root in self.remote):
            return None
        return f"outside every {protocol} storage root"

    def link_escape(self, uri: str) -> str | None:
        """Why a local ``uri`` that names a place inside a root really lies outside every root, or None.

        A path under a root whose real path is elsewhere goes through a symbolic link that leads out:
        refused like a '..' segment. Paths outside every root to begin with (external data at
        /data/raw) and other protocols (which have no links) are not this check's business.
        """
        protocol, path = _split(uri)
        if protocol != "file" or not PurePosixPath(path).is_absolute():
            return None
        named = os.path.normpath(path)
        if not any(named == root or _strictly_inside(named, root) for root in self.local):
            return None
        outside = self.outside(uri)
        return f"a symbolic link on its way leads {outside}" if outside else None


def _deleting_name(name: str) -> str | None:
    """The hidden name a directory being deleted takes (None when the name is too long to extend)."""
    hidden = f".{name}.weiflow-deleting"
    return hidden if len(hidden.encode()) <= 255 else None


def _remove_entry(name: str, dir_fd: int) -> None:
    """Remove ``name`` in the directory ``dir_fd``: a directory with all it holds, or a file or link itself."""
    try:
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


class RootedDeleter:
    """Deletes a dataset's files only when they lie strictly inside one of ``roots`` (the ``storage_roots`` setting).

    Checked at the moment of deletion, on the storage as it is then, whatever the database says:

    - local paths (``file://`` or plain): the real path of the target (every symbolic link resolved,
      the last component included) must be a proper descendant of a root's real path; the target
      must not itself be a link, nor be or hold a root. Removal then walks down from the root one
      directory at a time without following links, and ``shutil.rmtree`` never follows links inside
      the tree, so a directory swapped for a link after the check fails the deletion instead of
      leading outside the root;
    - other protocols (s3, gs, hdfs, memory): the path, which must be in normal form (no empty,
      '.' or '..' parts), must lie below a root of the same protocol.

    Anything else raises :class:`DeletionRefused`, naming the URI and the roots.
    """

    def __init__(self, roots: Iterable[str], *, purpose: str = "retention") -> None:
        """``purpose`` names the caller in refusals: ``retention`` works under the storage_roots setting;
        another caller (a model repository deleting its own versions) under the roots it passes."""
        self.purpose = purpose
        self._roots = StorageRoots(roots, purpose=purpose)
        self.roots = self._roots.roots
        self._local = self._roots.local
        self._remote = self._roots.remote

    def __repr__(self) -> str:
        return f"RootedDeleter({list(self.roots)!r})"

    def _refuse(self, uri: str, why: str) -> DeletionRefused:
        where = f"the storage roots ({', '.join(self.roots)}; the storage_roots setting)"
        if self.purpose != "retention":
            where = ", ".join(self.roots)
        return DeletionRefused(f"refusing to delete {uri}: {why}; {self.purpose} deletes only inside {where}")

    def __call__(self, uri: str) -> None:
        # The rule a spec's dataset URIs obey (storage protocols only, no '::', no '.' or '..'):
        # what '..' names depends on the links along the way, so a record holding one is never trusted.
        problem = uri_problem(uri)
        if problem:
            raise self._refuse(uri, problem)
        protocol, path = _split(uri)
        if protocol == "file":
            self._delete_local(uri, path)
        else:
            self._delete_remote(uri, protocol, path)

    def _delete_local(self, uri: str, path: str) -> None:
        if not PurePosixPath(path).is_absolute():
            raise self._refuse(uri, "a relative path (its meaning depends on the sweep's working directory)")
        real = os.path.realpath(path)
        roots = [os.path.realpath(root) for root in self._local]
        for root in roots:
            if root == real or _strictly_inside(root, real):
                raise self._refuse(uri, f"{'is' if root == real else 'holds'} the storage root {root}")
        container = next((root for root in roots if _strictly_inside(real, root)), None)
        if container is None:
            resolved = f" (it resolves to {real})" if real != os.path.normpath(path) else ""
            raise self._refuse(uri, f"outside every storage root{resolved}")
        if Path(path).is_symlink():
            # Deleting through it would remove whatever it points to, perhaps another dataset.
            raise self._refuse(uri, f"a symbolic link (to {Path(path).readlink()}); remove the link by hand")
        self._remove_beneath(uri, container, Path(real).relative_to(container).parts)

    def _remove_beneath(self, uri: str, root: str, parts: tuple[str, ...]) -> None:
        """Remove ``root/parts...``, opening each directory relative to the one above it and never through a link."""
        if not shutil.rmtree.avoids_symlink_attacks:
            raise self._refuse(uri, "this platform's shutil.rmtree cannot avoid symbolic-link attacks")
        try:
            fd = os.open(root, _NO_FOLLOW_DIR)
        except FileNotFoundError:
            return  # already gone: nothing to delete
        try:
            for part in parts[:-1]:
                try:
                    below = os.open(part, _NO_FOLLOW_DIR, dir_fd=fd)
                except FileNotFoundError:
                    return
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise self._refuse(uri, f"'{part}' on its path is no longer a directory (a link?)") from exc
                    raise
                os.close(fd)
                fd = below
            name = parts[-1]
            hidden = _deleting_name(name)
            if hidden is not None:
                _remove_entry(hidden, fd)  # what a deletion that died halfway left
            try:
                mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
            except FileNotFoundError:
                return
            if stat.S_ISLNK(mode):
                raise self._refuse(uri, "it became a symbolic link")
            if stat.S_ISDIR(mode) and hidden is not None:
                # Out of sight in one rename, then removed: a node checking its input meanwhile finds the dataset
                # whole or gone, never half-deleted; a writer committing the same name after the rename keeps
                # what it committed.
                os.rename(name, hidden, src_dir_fd=fd, dst_dir_fd=fd)
                shutil.rmtree(hidden, dir_fd=fd)
            elif stat.S_ISDIR(mode):
                shutil.rmtree(name, dir_fd=fd)
            else:
                os.unlink(name, dir_fd=fd)
        finally:
            os.close(fd)

    def _delete_remote(self, uri: str, protocol: str, path: str) -> None:
        parts = tuple(path.strip("/").split("/"))
        if "" in parts:
            # On an object store 'a//b' and 'a/b' are different keys: compare only paths in normal form.
            raise self._refuse(uri, "the path is not in normal form (an empty part: '//')")
        roots = [root for root_protocol, root in self._remote if root_protocol == protocol]
        for root in roots:
            if root[: len(parts)] == parts:
                raise self._refuse(uri, f"{'is' if root == parts else 'holds'} the storage root {'/'.join(root)}")
        if not any(parts[: len(root)] == root for root in roots):
            raise self._refuse(uri, f"outside every {protocol} storage root")
        fs, fs_path = fsspec.core.url_to_fs(uri)
        if fs.exists(fs_path):
            # An object store renames nothing atomically: the completion marker goes first, so a node checking
            # its input meanwhile finds it incomplete (a clear error), never complete with files missing.
            marker = f"{fs_path.rstrip('/')}/{SUCCESS_MARKER}"
            if fs.exists(marker):
                fs.rm(marker)
            fs.rm(fs_path, recursive=True)
