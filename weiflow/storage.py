"""Datasets on storage: atomic outputs, completeness markers, sizes. Local paths, HDFS or S3 via fsspec.

A dataset directory is complete when it holds ``_SUCCESS``. Writers stage into a hidden
sibling directory and commit by rename, the marker inside, so a killed or retried node never
leaves a directory that looks complete. Re-committing the same URI (a rerun of the same run
id) replaces the old output as a whole; on object stores, which have no atomic directory
rename, the marker is written last and is what readers trust.
"""

from __future__ import annotations

import json
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


def dataset_size(uri: str) -> tuple[int, int]:
    """(bytes, files) of a dataset, the marker excluded."""
    fs, path = _fs(uri)
    if not fs.exists(path):
        return 0, 0
    if not fs.isdir(path):
        return int(fs.size(path)), 1
    sizes = [
        int(info["size"])
        for name, info in fs.find(path, detail=True).items()
        if not name.endswith("/" + SUCCESS_MARKER)
    ]
    return sum(sizes), len(sizes)


@dataclass
class StagedOutput:
    """Where a writer puts its files before commit; set ``rows`` when known."""

    path: Path
    uri: str
    rows: int | None = None
    schema: dict[str, str] | None = None


@contextmanager
def atomic_output(uri: str, *, run_id: str) -> Iterator[StagedOutput]:
    """Stage a dataset's files locally and commit them to ``uri`` only if the block succeeds."""
    fs, path = _fs(uri)
    path = path.rstrip("/")
    local = isinstance(fs, LocalFileSystem)
    token = uuid.uuid4().hex[:12]
    parent, _, name = path.rpartition("/")
    if local:
        _refuse_foreign(Path(path))
        Path(parent or "/").mkdir(parents=True, exist_ok=True)
        staging = Path(parent or "/") / f".{name}.tmp-{token}"
        staging.mkdir()
    else:
        staging = Path(tempfile.mkdtemp(prefix="weiflow-stage-"))
    output = StagedOutput(staging, uri)
    try:
        yield output
        marker = json.dumps({"run_id": run_id, "committed_at": datetime.now(UTC).isoformat(), "rows": output.rows})
        if local:
            (staging / SUCCESS_MARKER).write_text(marker)
            with _signals_deferred():
                _commit_local(staging, Path(path), token)
        else:
            _commit_remote(fs, staging, path, token, marker)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


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


def _commit_remote(fs: Any, staging: Path, path: str, token: str, marker: str) -> None:
    """Upload beside the target, swap it in, write the marker last; restore the old output on failure.

    Object stores have no atomic directory rename: readers rely on the marker, which is
    written only once every file is in place.
    """
    parent, _, name = path.rpartition("/")
    remote_tmp, old = f"{parent}/.{name}.tmp-{token}", f"{parent}/.{name}.old-{token}"
    try:
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
