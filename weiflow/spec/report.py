"""Collects the diagnostics of one spec file."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from weiflow.errors import Diagnostic
from weiflow.spec.model import Pos

__all__ = ["Reporter", "did_you_mean"]


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """A hint naming the closest candidate, or listing the few there are."""
    options = sorted(set(candidates))
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    if not options:
        return None
    if len(options) <= 8:
        return "known: " + ", ".join(options)
    return None


class Reporter:
    """Diagnostics for one file; checks call :meth:`error` and :meth:`warning`."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.diagnostics: list[Diagnostic] = []

    def error(self, pos: Pos, message: str, hint: str | None = None) -> None:
        self.diagnostics.append(Diagnostic(self.file, pos.line, pos.col, message, hint, "error"))

    def warning(self, pos: Pos, message: str, hint: str | None = None) -> None:
        self.diagnostics.append(Diagnostic(self.file, pos.line, pos.col, message, hint, "warning"))

    @property
    def has_errors(self) -> bool:
        return any(d.is_error for d in self.diagnostics)
