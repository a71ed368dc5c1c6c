"""Tiny real SavedModels (built once, in a child process) laid out as an export module writes them."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.modelrepo.conftest import FEATURE_MAP, write_saved_model
from weiflow.modelrepo.contracts import EXPORT_METRICS_PATH, FEATURE_MAP_PATH

HERE = Path(__file__).resolve().parent


@pytest.fixture
def export(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Path]:
    """``export(kind, metrics=..., run_id=...)``: an export dataset ``<dir>/ctr/<version>/``; returns ``<dir>``.

    ``kind``: "fake" (files that look like a SavedModel: for gates before the load check, no
    TensorFlow), "good" or "nan" (real SavedModels, built once per session).
    """
    count = 0

    def make(
        kind: str = "fake",
        *,
        metrics: dict[str, float] | None = None,
        run_id: str = "r1",
        featuremap: bool = True,
    ) -> Path:
        nonlocal count
        count += 1
        dataset = tmp_path / f"export-{count}"
        version = dataset / "ctr" / str(1700000000 + count)
        if kind == "fake":
            write_saved_model(version, featuremap=None)
        else:
            shutil.copytree(request.getfixturevalue("built_models") / kind, version)
        if featuremap:
            (version / FEATURE_MAP_PATH).parent.mkdir(exist_ok=True)
            (version / FEATURE_MAP_PATH).write_text(FEATURE_MAP)
        if metrics is not None:
            (version / EXPORT_METRICS_PATH).parent.mkdir(exist_ok=True)
            carried = {"pipeline": "ctr", "run_id": run_id, "metrics": metrics}
            (version / EXPORT_METRICS_PATH).write_text(json.dumps(carried))
        return dataset

    return make


def tree_digest(root: Path) -> dict[str, str]:
    """Every file and directory under ``root`` with its content hash: equal means byte-for-byte unchanged."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }
