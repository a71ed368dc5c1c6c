"""Typing of scalar values: `<param>` defaults and `--param k=v` values, and module attributes.

One place decides what a whole number, a number, a boolean and a date look like, and what
the error says when a value is not one.
"""

from __future__ import annotations

import math
from datetime import date

__all__ = ["PARAM_TYPES", "parse_param_value"]

PARAM_TYPES = ("string", "int", "float", "bool", "date")


def parse_param_value(type_name: str, raw: str) -> str | int | float | bool | date:
    """Type ``raw`` as a param of ``type_name``; raises ``ValueError`` with a message for the user."""
    text = raw.strip()
    if type_name == "string":
        return raw
    if type_name == "int":
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"expected a whole number, got '{raw}'") from None
    if type_name == "float":
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"expected a number, got '{raw}'") from None
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got '{raw}'")
        return value
    if type_name == "bool":
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError(f"expected true or false, got '{raw}'")
    if type_name == "date":
        try:
            return date.fromisoformat(text)
        except ValueError:
            raise ValueError(f"expected a date as YYYY-MM-DD, got '{raw}'") from None
    raise ValueError(f"unknown param type '{type_name}'; use one of {', '.join(PARAM_TYPES)}")
