"""Helpers shared by the serving tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from weiflow.errors import ConfigError


def assert_config_error(parse: Callable[[], object], source: str, where: str, expected: str, hint: str) -> None:
    """``parse`` raises a ConfigError at ``source:where`` whose message has ``expected`` and hint ``hint``."""
    with pytest.raises(ConfigError) as caught:
        parse()
    message = str(caught.value)
    assert message.startswith(f"{source}:{where}: error: "), message
    assert expected in message.split("\n    hint:", 1)[0], message
    assert hint in message.split("\n    hint:", 1)[1], message
