"""The files engines, the model repository and serving agree on; imports nothing but the standard library.

Sample datasets (written by the Spark engine, read by the TensorFlow engine)::

    <samples>/_featuremap.json     the fitted feature map (SAMPLES_FEATURE_MAP_FILE)
    <samples>/_schema.json         TFRecord column types (SAMPLE_SCHEMA_FILE)

A model repository, laid out as TensorFlow Serving reads it (``--model_base_path`` is
``<repository>/<model>``; it loads numeric subdirectories and ignores every other name)::

    <repository>/<model>/<version>/                  version: 1, 2, 3 ... never reused
        saved_model.pb, variables/, assets/          the SavedModel
        assets.extra/featuremap.json                 FEATURE_MAP_PATH
        assets.extra/weiflow-manifest.json           MANIFEST_PATH (a Manifest)
        assets.extra/weiflow-metrics.json            EXPORT_METRICS_PATH (the run's evaluate metrics)
        assets.extra/training-curve.png              TRAINING_CURVE_PATH (loss and AUC by step, per worker)
        assets.extra/training-progress.jsonl         TRAINING_PROGRESS_PATH (the curve's points)
    <repository>/<model>/weiflow-routing.json        ROUTING_FILE (see routing.py)
    <repository>/<model>/.weiflow/                   staging, claims, lock (never served)

The manifest sits in ``assets.extra/`` because that is TF Serving's place for files beside a
SavedModel (its warm-up records live there too): loaders skip it, copies of the version keep it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from weiflow.errors import WeiflowError

__all__ = [
    "ASSETS_EXTRA_DIR",
    "EXPORT_METRICS_PATH",
    "FEATURE_MAP_PATH",
    "MANIFEST_PATH",
    "MANIFEST_SCHEMA",
    "MODEL_NAME_PATTERN",
    "ROUTING_FILE",
    "SAMPLES_FEATURE_MAP_FILE",
    "SAMPLE_SCHEMA_FILE",
    "SAVED_MODEL_FILES",
    "STATE_DIR",
    "TRAINING_CURVE_PATH",
    "TRAINING_PROGRESS_PATH",
    "Manifest",
    "ModelRepoError",
    "RoutingConflict",
    "check_model_name",
    "check_version",
    "model_path",
    "parse_version",
    "sha256_hex",
    "utc_now",
    "version_path",
]

SAMPLES_FEATURE_MAP_FILE = "_featuremap.json"  # beside the samples: Spark and Hadoop readers skip "_" files
SAMPLE_SCHEMA_FILE = "_schema.json"  # beside TFRecord samples, which carry no schema of their own
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")  # a SavedModel has one of them at its top
ASSETS_EXTRA_DIR = "assets.extra"
FEATURE_MAP_PATH = f"{ASSETS_EXTRA_DIR}/featuremap.json"
MANIFEST_PATH = f"{ASSETS_EXTRA_DIR}/weiflow-manifest.json"
MANIFEST_SCHEMA = "weiflow.manifest/1"
# Written by an export module beside the SavedModel: {"pipeline", "run_id", "metrics"} of the
# evaluate module before it in the same node, so a later deploy node (another process) can gate on them.
EXPORT_METRICS_PATH = f"{ASSETS_EXTRA_DIR}/weiflow-metrics.json"
# Written by an export module from its train module's progress: the picture, and the points it was drawn from.
TRAINING_CURVE_PATH = f"{ASSETS_EXTRA_DIR}/training-curve.png"
TRAINING_PROGRESS_PATH = f"{ASSETS_EXTRA_DIR}/training-progress.jsonl"
ROUTING_FILE = "weiflow-routing.json"
STATE_DIR = ".weiflow"  # hidden: TF Serving, listing numeric names only, never looks inside

# Names become directory names on every storage and appear in URLs: no separators, no "..",
# nothing hidden; 100 characters leave room under the center's 200-character column.
MODEL_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}"
_MODEL_NAME = re.compile(MODEL_NAME_PATTERN)
# Canonical decimal only ("7", not "007"): TF Serving would read both as 7, so two directories
# could claim one version.
_VERSION = re.compile(r"[1-9][0-9]{0,17}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ModelRepoError(WeiflowError):
    """A model, version, manifest or routing change is invalid; ``hint`` says how to fix it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message + (f"\n    hint: {hint}" if hint else ""))


class RoutingConflict(ModelRepoError):
    """Someone else changed a model's routing since it was read: read it again and retry."""


def check_model_name(name: str) -> str:
    """``name`` if it is a valid model name, else a :class:`ModelRepoError` saying why."""
    if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name) or ".." in name:
        raise ModelRepoError(
            f"invalid model name {name!r}",
            f"use 1-100 letters, digits, '_', '.' or '-', starting with a letter or digit, without '..' "
            f"(pattern {MODEL_NAME_PATTERN})",
        )
    return name


def check_version(version: object) -> int:
    """``version`` if it is a valid version number (an int from 1), else a :class:`ModelRepoError`."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1 or version >= 10**18:
        raise ModelRepoError(f"invalid model version {version!r}", "versions are integers from 1")
    return version


def parse_version(name: str) -> int | None:
    """The version a directory name stands for, or None when it is not one (hidden, files, "007")."""
    return int(name) if _VERSION.fullmatch(name) else None


def model_path(repository: str, model: str) -> str:
    """``<repository>/<model>`` for a path or URI; the name is checked, so it cannot escape."""
    return f"{repository.rstrip('/')}/{check_model_name(model)}"


def version_path(repository: str, model: str, version: int) -> str:
    """``<repository>/<model>/<version>``: what TF Serving loads as that version."""
    return f"{model_path(repository, model)}/{check_version(version)}"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def utc_now() -> str:
    """Now, as the ISO 8601 UTC time every WeiFlow repository file uses."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _check_time(value: object, what: str) -> str:
    if isinstance(value, str):
        try:
            if datetime.fromisoformat(value).tzinfo is not None:
                return value
        except ValueError:
            pass
    raise ValueError(f"{what} must be an ISO 8601 time with a UTC offset, like '2026-11-20T08:00:00+00:00'")


@dataclass(frozen=True)
class Manifest:
    """What a model version is and where it came from; stored at ``<version>/assets.extra/``.

    ``featuremap_sha256`` is the hash of the version's ``featuremap.json`` bytes: the repository
    refuses a version whose feature map does not match it, so serving can trust the pairing.
    ``metrics`` are the run's evaluate results (finite numbers only: JSON has no NaN).
    """

    pipeline: str
    run_id: str
    featuremap_sha256: str
    publisher: str
    metrics: Mapping[str, float] = field(default_factory=dict)
    published_at: str = field(default_factory=utc_now)
    source: str = ""  # the URI the SavedModel was copied from (lineage), when known

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise ModelRepoError(f"invalid manifest: {problem}", "build it from the run's pipeline, run id and metrics")
        object.__setattr__(self, "metrics", {k: float(v) for k, v in self.metrics.items()})  # a private copy

    def _problem(self) -> str | None:
        fields: dict[str, Any] = dict(vars(self))  # typed loosely: from_json passes whatever the file held
        for name in ("pipeline", "run_id", "publisher"):
            if not isinstance(fields[name], str) or not fields[name].strip():
                return f"'{name}' must be a non-empty string"
        if not isinstance(fields["source"], str):
            return "'source' must be a string"
        if not isinstance(fields["featuremap_sha256"], str) or not _SHA256.fullmatch(fields["featuremap_sha256"]):
            return "'featuremap_sha256' must be 64 lowercase hex digits (hashlib.sha256(...).hexdigest())"
        try:
            _check_time(fields["published_at"], "'published_at'")
        except ValueError as exc:
            return str(exc)
        if not isinstance(fields["metrics"], Mapping):
            return "'metrics' must map metric names to numbers"
        for key, value in fields["metrics"].items():
            if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, int | float):
                return f"metric {key!r}: {value!r} is not a number"
            if not math.isfinite(value):
                return f"metric {key!r} is {value}: only finite metrics can be stored"
        return None

    def to_json(self) -> str:
        document = {
            "schema": MANIFEST_SCHEMA,
            "pipeline": self.pipeline,
            "run_id": self.run_id,
            "source": self.source,
            "metrics": dict(sorted(self.metrics.items())),
            "featuremap_sha256": self.featuremap_sha256,
            "publisher": self.publisher,
            "published_at": self.published_at,
        }
        return json.dumps(document, indent=1, ensure_ascii=False, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "<manifest>") -> Manifest:
        """Read a manifest written by :meth:`to_json`; errors name ``source``."""
        fix = f"the version is damaged: publish the model again, or restore {MANIFEST_PATH} from a copy"
        try:
            document: Any = json.loads(text)
        except ValueError as exc:
            raise ModelRepoError(f"{source}: not a model manifest (invalid JSON: {exc})", fix) from None
        if not isinstance(document, dict):
            raise ModelRepoError(f"{source}: not a model manifest (a JSON object expected)", fix)
        if document.get("schema") != MANIFEST_SCHEMA:
            raise ModelRepoError(
                f"{source}: manifest schema {document.get('schema')!r} is not supported; "
                f"this WeiFlow reads {MANIFEST_SCHEMA}",
                "read the repository with the WeiFlow version that wrote it",
            )
        fields = {"pipeline", "run_id", "source", "metrics", "featuremap_sha256", "publisher", "published_at"}
        unknown = sorted(set(document) - fields - {"schema"})
        missing = sorted(fields - {"source", "metrics"} - set(document))
        if unknown or missing:
            wrong = [f"unknown key(s) {', '.join(unknown)}"] * bool(unknown)
            wrong += [f"missing key(s) {', '.join(missing)}"] * bool(missing)
            raise ModelRepoError(f"{source}: {'; '.join(wrong)}", fix)
        try:
            return cls(**{k: v for k, v in document.items() if k != "schema"})
        except ModelRepoError as exc:
            raise ModelRepoError(f"{source}: {exc.message}", fix) from None
