"""A small fake SavedModel (the repository copies bytes; it never loads a model) and its manifest."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from weiflow.features.featuremap import FeatureMap
from weiflow.modelrepo import FEATURE_MAP_PATH, Manifest

FEATURE_MAP = FeatureMap.declare(
    [
        {"name": "age_b", "fn": "piecewise", "source": "age", "boundaries": "18,25,35,50"},
        {"name": "city", "fn": "pickcat", "source": "city", "values": "bj,sh,gz"},
    ],
    label="label",
    keep=[],
).to_json()


def write_saved_model(path: Path, *, weights: bytes = b"\x01" * 4096, featuremap: str | None = FEATURE_MAP) -> Path:
    (path / "variables").mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(b"\x08\x01fake-graph")
    (path / "variables" / "variables.index").write_bytes(b"index")
    (path / "variables" / "variables.data-00000-of-00001").write_bytes(weights)
    if featuremap is not None:
        (path / FEATURE_MAP_PATH).parent.mkdir()
        (path / FEATURE_MAP_PATH).write_text(featuremap)
    return path


def manifest_for(path: Path, run_id: str = "run-1", **changes: object) -> Manifest:
    digest = hashlib.sha256((path / FEATURE_MAP_PATH).read_bytes()).hexdigest()
    fields: dict[str, object] = {
        "pipeline": "feed_ctr",
        "run_id": run_id,
        "featuremap_sha256": digest,
        "publisher": "alice",
        "metrics": {"auc": 0.75, "logloss": 0.41},
        "published_at": "2026-11-20T08:00:00+00:00",
        "source": str(path),
    }
    fields.update(changes)
    return Manifest(**fields)  # type: ignore[arg-type]


@pytest.fixture
def saved_model(tmp_path: Path) -> Callable[..., tuple[Path, Manifest]]:
    """Make a fake SavedModel directory and its manifest; each call a new one."""
    count = 0

    def make(run_id: str = "run-1", **kwargs: object) -> tuple[Path, Manifest]:
        nonlocal count
        count += 1
        path = write_saved_model(tmp_path / "exports" / f"m{count}", **kwargs)  # type: ignore[arg-type]
        return path, manifest_for(path, run_id)

    return make
