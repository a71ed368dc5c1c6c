"""WeiFlow's one error tree.

Every failure WeiFlow reports on purpose is a :class:`WeiflowError`::

    WeiflowError
    ├── SpecError            a spec file is invalid; carries every Diagnostic found
    ├── ConfigError          weiflow.toml or a WEIFLOW_* variable is invalid
    ├── RegistryError        a plug-in declares something inconsistent
    ├── EngineNotAvailable   a node's engine cannot run in this installation
    ├── DatasetError         an input dataset is missing or incomplete, or a write failed
    └── ModuleFailed         a module failed inside an engine (framework side)
        └── UserCodeError    user code (a callable, a custom module) raised

User-code failures are wrapped in :class:`UserCodeError` so a reader can tell a bug in a
pipeline's own code from a failure of WeiFlow itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ConfigError",
    "DatasetError",
    "Diagnostic",
    "EngineNotAvailable",
    "ModuleFailed",
    "RegistryError",
    "SpecError",
    "UserCodeError",
    "WeiflowError",
]

Severity = Literal["error", "warning"]


@dataclass(frozen=True, order=True)
class Diagnostic:
    """One problem in one file, at one place, with a hint on how to fix it."""

    file: str
    line: int
    col: int
    message: str
    hint: str | None = None
    severity: Severity = "error"

    def __str__(self) -> str:
        text = f"{self.file}:{self.line}:{self.col}: {self.severity}: {self.message}"
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text

    @property
    def is_error(self) -> bool:
        return self.severity == "error"


class WeiflowError(Exception):
    """Base class of every error WeiFlow raises on purpose."""


class SpecError(WeiflowError):
    """A spec is invalid. ``diagnostics`` holds every problem found, in file order."""

    def __init__(self, diagnostics: Iterable[Diagnostic]) -> None:
        self.diagnostics: Sequence[Diagnostic] = sorted(diagnostics)
        errors = [d for d in self.diagnostics if d.is_error]
        shown = errors or list(self.diagnostics)
        summary = "\n".join(str(d) for d in shown)
        super().__init__(summary or "invalid spec")


class ConfigError(WeiflowError):
    """The configuration file or a WEIFLOW_* variable is invalid."""


class RegistryError(WeiflowError):
    """A plug-in declares an engine or a module type inconsistently."""


class EngineNotAvailable(WeiflowError):
    """A node's engine is declared (so specs validate) but cannot run here."""


class DatasetError(WeiflowError):
    """An input dataset is missing or incomplete, or an output could not be committed."""


class ModuleFailed(WeiflowError):
    """A module failed while its node ran."""

    def __init__(self, node: str, module: str, message: str) -> None:
        self.node = node
        self.module = module
        super().__init__(f"node '{node}', module '{module}': {message}")


class UserCodeError(ModuleFailed):
    """User code called by a module raised; the original exception is ``__cause__``."""
