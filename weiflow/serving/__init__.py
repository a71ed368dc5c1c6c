"""The prediction service, ``weiflow serve`` (shared/DESIGN.md, "Prediction service"; docs/serving.md).

Not part of the core: it sits on top of it (features, model repository) and loads TensorFlow,
lazily. Its parts:

- :mod:`~weiflow.serving.config`: the flags, ``--model_config_file`` and
  ``--batching_parameters_file`` read as TensorFlow Serving reads them;
- :mod:`~weiflow.serving.servable`: one loaded model version (signatures, metadata, warm-up);
- :mod:`~weiflow.serving.tfjson`: TensorFlow Serving's REST JSON, requests and answers;
- :mod:`~weiflow.serving.manager`: which versions are loaded and which one serves a request
  (pins, the routing file's split, keys), with hot reload;
- :mod:`~weiflow.serving.batching`: the dynamic batcher;
- :mod:`~weiflow.serving.app` and :mod:`~weiflow.serving.metrics`: the HTTP server and its
  Prometheus metrics; :mod:`~weiflow.serving.cli`: ``weiflow serve``.
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
