"""The prediction service, ``weiflow serve`` (shared/DESIGN.md, "Prediction service").

Not part of the core: it sits on top of it (features, model repository) and may load
TensorFlow, lazily. So far, the operator-facing configuration, read as TensorFlow Serving
reads it (:mod:`~weiflow.serving.config`): the flags, ``--model_config_file`` and
``--batching_parameters_file`` in protobuf text format, and version policies resolved against
the version directories on disk.
"""

from __future__ import annotations

from weiflow.serving.config import (
    AllVersions,
    BatchingParameters,
    LatestVersions,
    ModelConfig,
    ServerOptions,
    SpecificVersions,
    VersionPolicy,
    VersionSelection,
    parse_server_options,
    read_batching_parameters_file,
    read_model_config_file,
    resolve_versions,
    versions_on_disk,
)

__all__ = [
    "AllVersions",
    "BatchingParameters",
    "LatestVersions",
    "ModelConfig",
    "ServerOptions",
    "SpecificVersions",
    "VersionPolicy",
    "VersionSelection",
    "parse_server_options",
    "read_batching_parameters_file",
    "read_model_config_file",
    "resolve_versions",
    "versions_on_disk",
]
