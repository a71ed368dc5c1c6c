"""Shared fixtures. Every test runs with its own var directory and storage root."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "xml_specs"


@pytest.fixture(autouse=True)
def isolated_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No test reads the developer's weiflow.toml or writes into the repo's var/."""
    var = tmp_path / "var"
    monkeypatch.setenv("WEIFLOW_VAR_DIR", str(var))
    monkeypatch.delenv("WEIFLOW_CONFIG", raising=False)
    monkeypatch.delenv("WEIFLOW_STORAGE", raising=False)
    monkeypatch.chdir(tmp_path)
    yield var


@pytest.fixture
def make_spec(tmp_path: Path) -> Callable[..., Path]:
    """Write a spec file; ``body`` goes inside a <pipeline name="t"> root unless it has its own."""

    def make(body: str, name: str = "spec.xml") -> Path:
        text = (
            body
            if "<pipeline" in body
            else f'<pipeline xmlns="urn:weiflow:pipeline:1" name="t">\n{body}\n</pipeline>\n'
        )
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return make
