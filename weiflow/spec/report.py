"""Collects the diagnostics of one spec file."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from weiflow.errors import Diagnostic
from weiflow.spec.model import Pos

__all__ = ["Reporter", "closest", "did_you_mean"]


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate ``word`` is most likely a misspelling of, if any is close enough."""
    options = set(candidates)
    if len(options) > 200:
        # difflib is quadratic in practice on thousands of names; a misspelling is near in length.
        options = {o for o in options if abs(len(o) - len(word)) <= max(2, len(word) // 3)}
    close = difflib.get_close_matches(word, sorted(options), n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """A hint naming the closest candidate, or listing the few there are."""
    options = sorted(set(candidates))
    match = closest(word, options)
    if match is not None:
        return f"did you mean '{match}'?"
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
