"""weiflow.serving's public surface."""

from __future__ import annotations

import weiflow.serving
import weiflow.serving.config


def test_exported_members_exist() -> None:
    for module in (weiflow.serving, weiflow.serving.config):
        assert module.__all__, module.__name__
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"
