"""`${name}` references in spec attributes.

A reference names a param or a run-context variable. ``$$`` writes a literal ``$``.
References are checked at validate time and substituted at run time; nothing else in a
value is interpreted (no expressions, no filters), so a value means what it says.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import NamedTuple

__all__ = ["CONTEXT_VARIABLES", "Reference", "TemplateError", "references", "substitute"]

# Run-context variables every spec may use; params are added per spec.
CONTEXT_VARIABLES: Mapping[str, str] = {
    "ds": "the run's logical date, YYYY-MM-DD",
    "ds_nodash": "the run's logical date, YYYYMMDD",
    "run_id": "the run id (Airflow's run id when Airflow runs the pipeline)",
    "storage": "the default storage root from the configuration (a URI, no trailing slash)",
    "pipeline": "the pipeline name",
}

_TOKEN = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<name>[^{}$]*)\}|(?P<bad>\{[^}]*$|))")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class TemplateError(ValueError):
    """A malformed reference; ``offset`` is where it starts in the value."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


class Reference(NamedTuple):
    name: str
    offset: int


def _tokens(value: str) -> Iterator[re.Match[str]]:
    for match in _TOKEN.finditer(value):
        if match.group("escaped"):
            continue
        name = match.group("name")
        if name is None:
            raise TemplateError(
                "'$' starts no reference: write ${name} for a value, or $$ for a literal '$'",
                match.start(),
            )
        if not _NAME.match(name):
            raise TemplateError(
                f"'${{{name}}}' is not a valid reference: names are letters, digits and '_'", match.start()
            )
        yield match


def references(value: str) -> list[Reference]:
    """Every ``${name}`` in ``value``; raises :class:`TemplateError` on a malformed one."""
    return [Reference(m.group("name"), m.start()) for m in _tokens(value)]


def substitute(value: str, values: Mapping[str, str]) -> str:
    """Replace every reference; a name missing from ``values`` raises ``KeyError``."""
    if "$" not in value:
        return value
    out: list[str] = []
    last = 0
    for match in _TOKEN.finditer(value):
        out.append(value[last : match.start()])
        last = match.end()
        if match.group("escaped"):
            out.append("$")
            continue
        name = match.group("name")
        if name is None or not _NAME.match(name):
            raise TemplateError(f"malformed reference at offset {match.start()}", match.start())
        out.append(values[name])
    out.append(value[last:])
    return "".join(out)
