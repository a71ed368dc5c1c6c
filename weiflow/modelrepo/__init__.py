"""The model repository: versions of trained models, and which of them serve what share of traffic.

One package that the deploy engine, the ``weiflow deploy`` CLI and the prediction service
share (shared/DESIGN.md, "Model repository and deploy"):

- :mod:`~weiflow.modelrepo.contracts`: the file names and layout engines, repository and
  serving agree on, the :class:`Manifest` of a version, model-name rules (standard library only);
- :mod:`~weiflow.modelrepo.routing`: :class:`Routing`, a model's traffic split, labels and
  history, with pure transitions (publish, promote, rollback) and the stable key -> version hash;
- :mod:`~weiflow.modelrepo.repository`: the :class:`Repository` interface and
  :class:`MemoryRepository`; :mod:`~weiflow.modelrepo.files`: :class:`FileRepository`, over
  fsspec URIs, loaded on first use (fsspec is not needed to read a routing file).

Named ``modelrepo``, not ``models``: the TensorFlow engine's ``models`` are network
architectures, and the center's are database tables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from weiflow.modelrepo.contracts import (
    FEATURE_MAP_PATH,
    MANIFEST_PATH,
    ROUTING_FILE,
    SAMPLE_SCHEMA_FILE,
    SAMPLES_FEATURE_MAP_FILE,
    Manifest,
    ModelRepoError,
    RoutingConflict,
    check_model_name,
    version_path,
)
from weiflow.modelrepo.repository import (
    MemoryRepository,
    Repository,
    known_versions,
    promote,
    rollback,
    update_routing,
)
from weiflow.modelrepo.routing import Change, Routing

if TYPE_CHECKING:
    from weiflow.modelrepo.files import FileRepository

__all__ = [
    "FEATURE_MAP_PATH",
    "MANIFEST_PATH",
    "ROUTING_FILE",
    "SAMPLES_FEATURE_MAP_FILE",
    "SAMPLE_SCHEMA_FILE",
    "Change",
    "FileRepository",
    "Manifest",
    "MemoryRepository",
    "ModelRepoError",
    "Repository",
    "Routing",
    "RoutingConflict",
    "check_model_name",
    "known_versions",
    "promote",
    "rollback",
    "update_routing",
    "version_path",
]


def __getattr__(name: str) -> Any:
    if name == "FileRepository":
        from weiflow.modelrepo.files import FileRepository

        return FileRepository
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
