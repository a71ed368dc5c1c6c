"""Datasets on storage: atomic outputs, completeness markers, sizes. Local paths, HDFS or S3 via fsspec.

A dataset directory is complete when it holds ``_SUCCESS``. Writers stage into a hidden
sibling directory and commit by rename, the marker inside, so a killed or retried node never
leaves a directory that looks complete. Re-committing the same URI (a rerun of the same run
id) replaces the old output as a whole; on object stores, which have no atomic directory
rename, the marker is written last and is what readers trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from weiflow.errors import DatasetError

__all__ = [
    "SUCCESS_MARKER",
    "StagedOutput",
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
        Path(parent or "/").mkdir(parents=True, exist_ok=True)
        staging = Path(parent or "/") / f".{name}.tmp-{token}"
        staging.mkdir()
        target = f"file://{staging}"
    else:
        staging = Path(tempfile.mkdtemp(prefix="weiflow-stage-"))
        target = staging.as_uri()
        if stage_on_storage:
            remote_stage = f"{parent}/.{name}.tmp-{token}"
            target = fs.unstrip_protocol(remote_stage)
    output = StagedOutput(staging, uri, target)
    try:
        yield output
        marker = json.dumps({"run_id": run_id, "committed_at": datetime.now(UTC).isoformat(), "rows": output.rows})
        if local:
            (staging / SUCCESS_MARKER).write_text(marker)
            with _signals_deferred():
                _commit_local(staging, Path(path), token)
        else:
            _commit_remote(fs, staging, path, token, marker, staged_remotely=remote_stage is not None)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        if remote_stage is not None and fs.exists(remote_stage):
            fs.rm(remote_stage, recursive=True)


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
