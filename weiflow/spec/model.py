"""The parsed pipeline: plain data with the source position of everything a user wrote.

Nothing here knows engines or module types; the registry gives attributes their meaning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol


@dataclass(frozen=True)
class Pos:
    """1-based line and column in the spec file."""

    line: int
    col: int


class AttrLocator(Protocol):
    def attr_pos(self, name: str) -> Pos: ...


class Attr:
    """An attribute value as written, and where its name starts.

    The position is found on first use: only diagnostics need it, and a large spec has
    thousands of attributes (see bench/bench_compile.py).
    """

    __slots__ = ("_locator", "_name", "_pos", "value")

    def __init__(self, value: str, pos: Pos | None = None, locator: AttrLocator | None = None, name: str = ""):
        self.value = value
        self._pos = pos
        self._locator = locator
        self._name = name

    @property
    def pos(self) -> Pos:
        if self._pos is None:
            self._pos = self._locator.attr_pos(self._name) if self._locator is not None else Pos(1, 1)
        return self._pos

    def __repr__(self) -> str:
        return f"Attr({self.value!r}, {self.pos!r})"


class TagLocator(AttrLocator, Protocol):
    @property
    def pos(self) -> Pos: ...


class Element:
    """A generic element (a `<feature>`, a `<cluster>`, a `<conf>`) with positioned attributes.

    Like attribute positions, the element's own position is found on first use.
    """

    __slots__ = ("_locator", "attrs", "children", "tag", "text")

    def __init__(
        self,
        tag: str,
        locator: TagLocator,
        attrs: dict[str, Attr] | None = None,
        text: str = "",
        children: list[Element] | None = None,
    ) -> None:
        self.tag = tag
        self._locator = locator
        self.attrs = attrs if attrs is not None else {}
        self.text = text
        self.children = children if children is not None else []

    @property
    def pos(self) -> Pos:
        return self._locator.pos

    def __repr__(self) -> str:
        return f"Element({self.tag!r}, {self.pos!r}, {self.attrs!r})"

    def get(self, name: str, default: str | None = None) -> str | None:
        attr = self.attrs.get(name)
        return attr.value if attr is not None else default

    def pos_of(self, name: str) -> Pos:
        """Where attribute ``name`` is written, or the element itself when it is absent."""
        attr = self.attrs.get(name)
        return attr.pos if attr is not None else self.pos


@dataclass
class ParamSpec:
    name: str
    type: str
    default: str | None
    description: str
    element: Element


@dataclass
class DatasetSpec:
    name: str
    uri: str
    format: str
    external: bool
    retention: str | None
    description: str
    element: Element


@dataclass
class ModuleSpec:
    id: str
    type: str
    inputs: list[str]
    element: Element
    # Module-type attributes: everything but the structural id, type, input and description.
    attrs: dict[str, Attr] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.attrs = {k: v for k, v in self.element.attrs.items() if k not in MODULE_STRUCTURAL_ATTRS}

    @property
    def children(self) -> list[Element]:
        return self.element.children


MODULE_STRUCTURAL_ATTRS = frozenset({"id", "type", "input", "description"})


@dataclass
class NodeSpec:
    id: str
    engine: str
    depends: list[str]
    modules: list[ModuleSpec]
    config: list[Element]
    element: Element

    def module(self, module_id: str) -> ModuleSpec:
        for module in self.modules:
            if module.id == module_id:
                return module
        raise KeyError(module_id)


@dataclass
class PipelineSpec:
    """A whole spec file. ``file`` is the path as given; ``sha256`` hashes its bytes."""

    file: str
    sha256: str
    name: str
    owner: str | None
    schedule: str | None
    start_date: str | None
    priority: str
    retries: int
    description: str
    params: list[ParamSpec]
    datasets: list[DatasetSpec]
    nodes: list[NodeSpec]
    element: Element
    # Every attribute whose value holds a '$', with its element: what reference checks read.
    templated: list[tuple[Element, str, Attr]] = field(default_factory=list)

    def node(self, node_id: str) -> NodeSpec:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    def dataset(self, name: str) -> DatasetSpec:
        return self._datasets_by_name[name]

    @cached_property
    def _datasets_by_name(self) -> dict[str, DatasetSpec]:
        by_name: dict[str, DatasetSpec] = {}
        for dataset in self.datasets:
            by_name.setdefault(dataset.name, dataset)
        return by_name
