"""The module registry: which engines exist, which module types each offers, and their attributes.

Engines (built-in and third-party alike) are plug-ins found through the ``weiflow.modules``
entry-point group. An entry point loads to a :class:`Plugin` (or a list of them). A plug-in
either brings a new engine (with an ``executor``), or adds module types to an engine another
plug-in brings — a custom algorithm is a plug-in, not a change to WeiFlow.

Declarations are plain data: loading them never imports an engine's heavy library. The
executor is a ``"package.module:attribute"`` path imported only when a node of that engine
runs.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache, cached_property
from importlib import metadata
from typing import Any, Literal

from weiflow.errors import EngineNotAvailable, RegistryError
from weiflow.spec.model import ModuleSpec
from weiflow.spec.params import parse_param_value
from weiflow.spec.report import Reporter

__all__ = [
    "ENTRY_POINT_GROUP",
    "AttrDecl",
    "DeclaresAttrs",
    "ElementDecl",
    "EngineEntry",
    "ModuleCheck",
    "ModuleType",
    "Plugin",
    "Registry",
    "default_registry",
    "resolve_object",
]

ENTRY_POINT_GROUP = "weiflow.modules"

AttrKind = Literal[
    "string", "int", "float", "bool", "enum", "ints", "floats", "strings", "dataset", "datasets", "callable"
]
DatasetRole = Literal["read", "write"]

_CALLABLE = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*\Z")


@dataclass(frozen=True)
class AttrDecl:
    """One attribute a module type (or a child element) accepts, and how its text is typed."""

    name: str
    kind: AttrKind = "string"
    required: bool = False
    default: Any = None
    choices: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None
    min_items: int = 1
    role: DatasetRole | None = None
    help: str = ""

    def parse(self, raw: str) -> Any:
        """Type ``raw``; raises ``ValueError`` with a message fit for the user."""
        kind = self.kind
        if kind in ("ints", "floats", "strings", "datasets"):
            items = [item.strip() for item in raw.split(",")]
            if any(not item for item in items) or len(items) < self.min_items:
                need = f"at least {self.min_items} " if self.min_items > 1 else ""
                raise ValueError(f"expected a comma-separated list of {need}values, got '{raw}'")
            scalar = {"ints": "int", "floats": "float", "strings": "string", "datasets": "dataset"}[kind]
            return [self._scalar(scalar, item) for item in items]
        return self._scalar(kind, raw.strip() if kind != "string" else raw)

    def _scalar(self, kind: str, raw: str) -> Any:
        value: Any
        if kind in ("int", "float", "bool"):
            value = parse_param_value(kind, raw)
            if kind == "bool":
                return value
        elif kind == "enum":
            if raw not in self.choices:
                raise ValueError(f"expected one of {', '.join(self.choices)}, got '{raw}'")
            return raw
        elif kind == "callable":
            if not _CALLABLE.match(raw):
                raise ValueError(f"expected 'package.module:function', got '{raw}'")
            return raw
        elif kind in ("string", "dataset"):
            if not raw.strip():
                raise ValueError("expected a non-empty value")
            return raw
        else:  # pragma: no cover - AttrKind is closed
            raise AssertionError(kind)
        if self.min is not None and value < self.min:
            raise ValueError(f"must be at least {_number(self.min)}, got {raw}")
        if self.max is not None and value > self.max:
            raise ValueError(f"must be at most {_number(self.max)}, got {raw}")
        return value

    def describe(self) -> str:
        """A short type description for hints and `weiflow modules`."""
        text = {
            "string": "text",
            "int": "whole number",
            "float": "number",
            "bool": "true|false",
            "enum": "|".join(self.choices),
            "ints": "whole numbers, comma-separated",
            "floats": "numbers, comma-separated",
            "strings": "names, comma-separated",
            "dataset": f"dataset name ({self.role})",
            "datasets": f"dataset names, comma-separated ({self.role})",
            "callable": "package.module:function",
        }[self.kind]
        bounds = []
        if self.min is not None:
            bounds.append(f">= {_number(self.min)}")
        if self.max is not None:
            bounds.append(f"<= {_number(self.max)}")
        return text + (f" ({', '.join(bounds)})" if bounds else "")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


class DeclaresAttrs:
    """Attribute lookup by name for declarations that hold ``attrs: tuple[AttrDecl, ...]``."""

    attrs: tuple[AttrDecl, ...]

    def attr(self, name: str) -> AttrDecl | None:
        return self._attrs_by_name.get(name)

    @cached_property
    def _attrs_by_name(self) -> dict[str, AttrDecl]:
        return {a.name: a for a in self.attrs}


@dataclass(frozen=True)
class ElementDecl(DeclaresAttrs):
    """A child element with typed attributes: ``<feature>`` in a module, ``<cluster>`` in a node."""

    tag: str
    attrs: tuple[AttrDecl, ...] = ()
    max_count: int | None = None
    help: str = ""


# A semantic check beyond attribute types (e.g. the feature functions' rules).
ModuleCheck = Callable[[ModuleSpec, Reporter], None]


@dataclass(frozen=True)
class ModuleType(DeclaresAttrs):
    """A module type: its attributes, how many inputs it takes, which children it allows.

    ``outputs_attr`` names the attribute that lists a module's named outputs (``split``'s
    ``names``), which downstream modules address as ``input="module.port"``.
    ``extra_attrs`` passes undeclared attributes through (to a user callable) unchecked.
    """

    name: str
    attrs: tuple[AttrDecl, ...] = ()
    inputs: tuple[int, int | None] = (0, 0)
    children: tuple[ElementDecl, ...] = ()
    check: ModuleCheck | None = None
    outputs_attr: str | None = None
    extra_attrs: bool = False
    help: str = ""

    def child(self, tag: str) -> ElementDecl | None:
        return next((c for c in self.children if c.tag == tag), None)

    def dataset_attrs(self) -> list[AttrDecl]:
        return [a for a in self.attrs if a.kind in ("dataset", "datasets")]


@dataclass(frozen=True)
class Plugin:
    """What one entry point contributes to one engine."""

    engine: str
    modules: tuple[ModuleType, ...] = ()
    executor: str | None = None
    node_elements: tuple[ElementDecl, ...] = ()
    formats: tuple[str, ...] = ()
    unavailable: str | None = None
    help: str = ""
    # Named objects the engine looks up at run time, as "package.module:attribute" (the
    # TensorFlow engine's custom models: <module type="train" model="my_model"/>).
    models: Mapping[str, str] = field(default_factory=dict)


@dataclass
class EngineEntry:
    """An engine as the merged view of every plug-in that contributes to it."""

    name: str
    modules: dict[str, ModuleType] = field(default_factory=dict)
    executor: str | None = None
    node_elements: dict[str, ElementDecl] = field(default_factory=dict)
    formats: set[str] = field(default_factory=set)
    unavailable: str | None = None
    help: str = ""
    sources: dict[str, str] = field(default_factory=dict)  # module type -> plug-in that declared it
    models: dict[str, str] = field(default_factory=dict)


class Registry:
    """Engines and module types by name. Build with :meth:`from_entry_points` or :meth:`from_plugins`."""

    def __init__(self) -> None:
        self.engines: dict[str, EngineEntry] = {}
        self.problems: list[str] = []  # plug-ins that failed to load, kept so validation can say why

    @classmethod
    def from_plugins(cls, plugins: Iterable[Plugin | tuple[str, Plugin]]) -> Registry:
        registry = cls()
        for item in plugins:
            source, plugin = item if isinstance(item, tuple) else (f"<{item.engine}>", item)
            registry.add(plugin, source)
        return registry

    @classmethod
    def from_entry_points(cls, group: str = ENTRY_POINT_GROUP) -> Registry:
        registry = cls()
        for entry_point in sorted(metadata.entry_points(group=group), key=lambda ep: ep.name):
            source = f"entry point '{entry_point.name} = {entry_point.value}'"
            try:
                loaded = entry_point.load()
            except Exception as exc:  # a broken third-party plug-in must not hide the others
                registry.problems.append(f"{source} failed to load: {type(exc).__name__}: {exc}")
                continue
            plugins = loaded if isinstance(loaded, list | tuple) else [loaded]
            for plugin in plugins:
                if not isinstance(plugin, Plugin):
                    registry.problems.append(f"{source} is a {type(plugin).__name__}, not a weiflow Plugin")
                    continue
                try:
                    registry.add(plugin, source)
                except RegistryError as exc:
                    registry.problems.append(str(exc))
        return registry

    def add(self, plugin: Plugin, source: str) -> None:
        entry = self.engines.setdefault(plugin.engine, EngineEntry(plugin.engine))
        for module in plugin.modules:
            if module.name in entry.modules:
                raise RegistryError(
                    f"{source}: module type '{module.name}' of engine '{plugin.engine}' is already declared"
                    f" by {entry.sources[module.name]}"
                )
        if plugin.executor and entry.executor and plugin.executor != entry.executor:
            raise RegistryError(
                f"{source}: engine '{plugin.engine}' already has executor {entry.executor}; "
                f"a plug-in may add module types to an engine but not replace its executor"
            )
        for name in plugin.models:
            if name in entry.models and entry.models[name] != plugin.models[name]:
                raise RegistryError(
                    f"{source}: model '{name}' of engine '{plugin.engine}' is already provided by {entry.models[name]}"
                )
        entry.models.update(plugin.models)
        for module in plugin.modules:
            entry.modules[module.name] = module
            entry.sources[module.name] = source
        entry.executor = entry.executor or plugin.executor
        entry.unavailable = entry.unavailable or plugin.unavailable
        entry.help = entry.help or plugin.help
        entry.formats.update(plugin.formats)
        for element in plugin.node_elements:
            entry.node_elements.setdefault(element.tag, element)

    def engine(self, name: str) -> EngineEntry | None:
        return self.engines.get(name)

    def module_type(self, engine: str, type_name: str) -> ModuleType | None:
        entry = self.engines.get(engine)
        return entry.modules.get(type_name) if entry else None

    def engines_offering(self, type_name: str) -> list[str]:
        return sorted(name for name, entry in self.engines.items() if type_name in entry.modules)

    @property
    def formats(self) -> set[str]:
        return set().union(*(entry.formats for entry in self.engines.values()))

    def load_executor(self, engine: str) -> Any:
        """Import the engine's executor object; only the runtime calls this."""
        entry = self.engines.get(engine)
        if entry is None:
            raise RegistryError(f"unknown engine '{engine}'")
        if not entry.executor:
            raise EngineNotAvailable(entry.unavailable or f"engine '{engine}' declares module types but no executor")
        try:
            return resolve_object(entry.executor)
        except (ImportError, AttributeError) as exc:
            raise EngineNotAvailable(
                f"engine '{engine}' cannot run here: its executor {entry.executor} failed to import ({exc})"
            ) from exc

    def describe(self) -> Mapping[str, EngineEntry]:
        return dict(sorted(self.engines.items()))


def resolve_object(path: str) -> Any:
    """The object at ``"package.module:attribute.path"``; raises ImportError or AttributeError."""
    module_name, _, attribute = path.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


@cache
def default_registry() -> Registry:
    """The registry of every installed plug-in, loaded once per process."""
    return Registry.from_entry_points()
