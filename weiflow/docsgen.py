"""Generated documentation: the XML reference, from the schema and the module declarations.

``python -m weiflow.docsgen reference > docs/reference.md`` writes docs/reference.md; a test
regenerates it and compares byte for byte, so the page cannot drift from the contract.

The structure (elements, their attributes, types, defaults, which are required) is read from
``weiflow/schemas/pipeline-1.xsd``; the module types of each built-in engine, their attributes,
kinds, defaults, choices and help from the engines' declarations, found through the registry's
entry points as the CLI finds them (nothing here imports an engine at import time); the
feature functions from :data:`weiflow.features.FUNCTIONS`. The schema carries no prose, so the
help of its elements and attributes is here, in :data:`SCHEMA_HELP`: an element or attribute
the schema gains without help here makes the generator fail, and with it the test.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata, resources
from typing import Any

from lxml import etree

from weiflow.features import FUNCTIONS
from weiflow.registry import ENTRY_POINT_GROUP, AttrDecl, ElementDecl, EngineEntry, Plugin, Registry
from weiflow.spec.parser import NAMESPACE
from weiflow.spec.templating import CONTEXT_VARIABLES

__all__ = ["SCHEMA_HELP", "builtin_registry", "main", "reference"]

_XS = "{http://www.w3.org/2001/XMLSchema}"
COMMAND = "python -m weiflow.docsgen reference > docs/reference.md"

# Help for the schema's elements ("pipeline") and attributes ("pipeline@name"): the XSD holds none.
SCHEMA_HELP: Mapping[str, str] = {
    "pipeline": "The root: one pipeline, compiled into one outer DAG (one Airflow DAG, its id the name).",
    "pipeline@name": "the pipeline's name: the Airflow DAG id and `${pipeline}`",
    "pipeline@owner": "the owning team or person; Airflow's owner",
    "pipeline@schedule": "an Airflow preset (`@daily`, `@hourly`, ...) or a 5-field cron expression; "
    "none: triggered by hand",
    "pipeline@start-date": "the first logical date Airflow schedules, YYYY-MM-DD",
    "pipeline@priority": "Airflow's priority weight and pool (`weiflow_high`, `weiflow_medium`, `weiflow_low`)",
    "pipeline@retries": "retries of every node that does not set its own",
    "pipeline@tags": "Airflow DAG tags",
    "description": "Free text shown in Airflow and the console.",
    "params": "The pipeline's parameters: Airflow's trigger form, `--param NAME=VALUE` on the command line.",
    "param": "One parameter, referenced as `${name}` in attribute values.",
    "param@name": "referenced as `${name}`",
    "param@type": "how the value is typed and checked",
    "param@default": "the value when none is given; may use `${...}` of the run context and of earlier params",
    "param@description": "shown beside the field in Airflow's trigger form",
    "datasets": "The data that crosses nodes: every dataset a module reads or writes is declared here.",
    "dataset": "A name for data on shared storage; a node that reads it runs after the node that writes it.",
    "dataset@name": "what modules name in `dataset=`, `source=`, `reads=`, `writes=`",
    "dataset@uri": "where it lives: `${storage}/...`, an absolute path, or a storage URI (file, hdfs, s3, gs, "
    "abfs, ...)",
    "dataset@format": "the data's format; each engine declares the formats it reads and writes",
    "dataset@external": "written outside this pipeline: never written here, must exist when read",
    "dataset@retention": "when the control center deletes it: `ttl:<days>`, `idle:<days>`, `consumed`, "
    "`keep-last:<n>` or `pinned`; none: kept",
    "dataset@description": "shown in the console",
    "node": "An outer node: one Airflow task, running its modules (the inner DAG) in one engine.",
    "node@id": "unique in the pipeline; the Airflow task id",
    "node@engine": "the engine that runs the node's modules (see Engines below)",
    "node@depends": "nodes that must succeed first, besides those writing the datasets this node reads",
    "node@resources": "the Airflow queue the task goes to",
    "node@retries": "retries of this node; default: the pipeline's",
    "node@description": "shown in Airflow and the console",
    "cluster": "Settings of a distributed engine; its attributes are declared by the engine (see Engines).",
    "conf": "One engine setting, e.g. a Spark configuration key.",
    "conf@name": "the setting's key",
    "conf@value": "its value; may use `${...}`",
    "module": "An inner node: one processing step of the node's engine; its other attributes are its type's.",
    "module@id": "unique in its node; what other modules name in `input=`",
    "module@type": "a module type of the node's engine (see Engines below)",
    "module@input": "modules of the same node whose output this one takes; `split.train` names one output",
    "module@description": "shown in the console",
    "feature": "One feature of a `features` module; its other attributes are its function's.",
    "feature@name": "the output column, unique in the module",
    "feature@fn": "the feature function (see Feature functions below)",
    "query": "The SQL of a `sql` module, as element text (instead of `query=`).",
}

_BUILTIN_TYPES: Mapping[str, str] = {
    "xs:string": "text",
    "xs:date": "a date, YYYY-MM-DD",
    "xs:nonNegativeInteger": "a whole number, 0 or more",
    "xs:boolean": "`true`, `false`, `1` or `0`",
    "xs:NMTOKEN": "a name: letters, digits, `.`, `-`, `_`, `:`",
}

_ANY_ATTRIBUTE: Mapping[str, str] = {
    "##other": "Attributes of other XML namespaces are allowed and ignored (annotations for tools).",
    "##local": "Further attributes (no namespace) are allowed here and typed by {what}.",
    "##any": "Further attributes are allowed here and typed by {what}; those of other namespaces are ignored.",
}
_TYPED_BY: Mapping[str, str] = {
    "cluster": "the node's engine (its `<cluster>` under Engines below)",
    "feature": "the feature function (Feature functions below)",
    "module": "the module type (Engines below)",
}


def builtin_registry() -> Registry:
    """The registry of WeiFlow's own engines only, so installed third-party plug-ins do not change the page."""
    plugins: list[tuple[str, Plugin]] = []
    for entry_point in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
        if not entry_point.value.startswith("weiflow."):
            continue
        loaded = entry_point.load()
        for plugin in loaded if isinstance(loaded, list | tuple) else [loaded]:
            plugins.append((f"entry point '{entry_point.name}'", plugin))
    return Registry.from_plugins(plugins)


# --- markdown helpers -------------------------------------------------------------------


def _prose(text: str) -> str:
    """Markdown for declared text: outside code spans, no raw tag and no emphasis by accident."""
    parts = " ".join(text.split()).split("`")
    for index in range(0, len(parts), 2):  # even parts lie outside code spans
        parts[index] = parts[index].replace("<", "&lt;").replace("*", "\\*")
    return "`".join(parts)


def _cell(text: str) -> str:
    """Text safe in a table cell: GitHub's tables split on '|' even inside code spans."""
    return _prose(text).replace("|", "\\|")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) if c else "" for c in row) + " |" for row in rows]
    return lines


def _code(text: str) -> str:
    return f"`{text}`"


def _value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return _code("true" if value else "false")
    if isinstance(value, list | tuple):
        return _code(",".join(str(v) for v in value))
    return _code(str(value))


# --- the schema -------------------------------------------------------------------------


class _Schema:
    def __init__(self, root: etree._Element) -> None:
        self.root = root
        self.elements = {e.get("name") or "": e for e in root.findall(f"{_XS}element")}
        self.types = {t.get("name") or "": t for t in root.findall(f"{_XS}simpleType")}

    def resolve(self, element: etree._Element) -> etree._Element:
        ref = element.get("ref")
        return self.elements[ref] if ref else element

    def walk(self, name: str = "pipeline") -> Iterator[etree._Element]:
        """Every element declaration reachable from ``name``, each once, parents first."""
        seen: set[str] = set()
        queue = [self.elements[name]]
        while queue:
            element = queue.pop(0)
            if element.get("name") in seen:
                continue
            seen.add(element.get("name") or "")
            yield element
            for child in element.iter(f"{_XS}element"):
                if child is not element and self._owner(child) is element:
                    queue.append(self.resolve(child))

    @staticmethod
    def _owner(child: etree._Element) -> etree._Element | None:
        parent = child.getparent()
        while parent is not None and parent.tag != f"{_XS}element":
            parent = parent.getparent()
        return parent

    def content(self, element: etree._Element) -> str:
        complex_type = element.find(f"{_XS}complexType")
        if complex_type is None:
            return "text, " + self.type_name(element.get("type") or "xs:string")
        group = next((c for c in complex_type if c.tag in (f"{_XS}sequence", f"{_XS}choice")), None)
        if group is None:
            return "empty"
        return _code(self._particle(group, top=True))

    def _particle(self, particle: etree._Element, top: bool = False) -> str:
        occurs = _occurs(particle)
        tag = etree.QName(particle).localname
        if tag == "element":
            return f"<{self.resolve(particle).get('name')}>{occurs}"
        if tag == "any":
            return f"elements of other namespaces{occurs}"
        parts = [self._particle(c) for c in particle if isinstance(c.tag, str) and c.tag.startswith(_XS)]
        text = (", " if tag == "sequence" else " | ").join(parts)
        return text if top and not occurs and tag == "sequence" else f"({text}){occurs}"

    def type_name(self, name: str) -> str:
        return _code(name) if name.startswith("xs:") else f"[`{name}`](#value-types)"

    def attributes(self, element: etree._Element) -> list[etree._Element]:
        complex_type = element.find(f"{_XS}complexType")
        return [] if complex_type is None else complex_type.findall(f"{_XS}attribute")

    def any_attribute(self, element: etree._Element) -> str | None:
        complex_type = element.find(f"{_XS}complexType")
        found = None if complex_type is None else complex_type.find(f"{_XS}anyAttribute")
        return None if found is None else found.get("namespace")


def _occurs(particle: etree._Element) -> str:
    low, high = particle.get("minOccurs", "1"), particle.get("maxOccurs", "1")
    return {("0", "1"): "?", ("1", "1"): "", ("0", "unbounded"): "*", ("1", "unbounded"): "+"}.get(
        (low, high), f"{{{low},{high}}}"
    )


def _help(key: str, used: set[str]) -> str:
    used.add(key)
    try:
        return SCHEMA_HELP[key]
    except KeyError:
        raise SystemExit(
            f"weiflow.docsgen: the schema has '{key}' but SCHEMA_HELP in weiflow/docsgen.py does not; add its help"
        ) from None


def _simple_type(definition: etree._Element) -> str:
    restriction = definition.find(f"{_XS}restriction")
    assert restriction is not None
    enums = [e.get("value") or "" for e in restriction.findall(f"{_XS}enumeration")]
    if enums:
        return "one of " + ", ".join(_code(e) for e in enums)
    pattern = restriction.find(f"{_XS}pattern")
    if pattern is not None:
        return "text matching the regular expression " + _code(pattern.get("value") or "")
    min_length = restriction.find(f"{_XS}minLength")
    if min_length is not None:
        return f"text of at least {min_length.get('value')} character"
    return f"restriction of {restriction.get('base')}"  # pragma: no cover - the schema uses the three above


def _schema_section(schema: _Schema) -> list[str]:
    used: set[str] = set()
    out = [
        "## Pipeline elements",
        "",
        f"Namespace `{NAMESPACE}`; structure from `weiflow/schemas/pipeline-1.xsd`. Content models: "
        "`?` optional, `*` any number, `+` one or more, `,` in this order, `|` either.",
        "",
    ]
    for element in schema.walk():
        name = element.get("name") or ""
        out += [f"### `<{name}>`", "", _help(name, used), "", f"Content: {schema.content(element)}", ""]
        rows = []
        for attribute in schema.attributes(element):
            attr_name = attribute.get("name") or ""
            rows.append(
                [
                    _code(attr_name),
                    schema.type_name(attribute.get("type") or "xs:string"),
                    "yes" if attribute.get("use") == "required" else "",
                    _value(attribute.get("default")),
                    _help(f"{name}@{attr_name}", used),
                ]
            )
        if rows:
            out += [*_table(("attribute", "type", "required", "default", "help"), rows), ""]
        namespace = schema.any_attribute(element)
        if namespace:
            out += [_ANY_ATTRIBUTE[namespace].format(what=_TYPED_BY.get(name, "")), ""]
    stale = sorted(set(SCHEMA_HELP) - used)
    if stale:
        raise SystemExit(f"weiflow.docsgen: SCHEMA_HELP has {', '.join(stale)}, which the schema no longer has")
    out += ["### Value types", ""]
    rows = [[_code(name), _simple_type(schema.types[name])] for name in sorted(schema.types)]
    rows += [[_code(name), text] for name, text in sorted(_BUILTIN_TYPES.items())]
    out += [*_table(("type", "accepts"), rows), ""]
    out += ["### `${...}` references", ""]
    out.append(
        "An attribute value may hold `${name}`, a param of the pipeline or one of these run-context variables "
        "(`$$` is a literal `$`), except `dataset`, `datasets` and `callable` attributes, which decide the DAG:"
    )
    out += ["", *_table(("variable", "value"), [[_code(k), v] for k, v in CONTEXT_VARIABLES.items()]), ""]
    return out


# --- the engines ------------------------------------------------------------------------


def _attr_rows(attrs: Sequence[AttrDecl]) -> list[list[str]]:
    return [
        [_code(a.name), _code(a.kind), a.describe(), "yes" if a.required else "", _value(a.default), a.help]
        for a in attrs
    ]


_ATTR_HEADER = ("attribute", "kind", "accepts", "required", "default", "help")


def _inputs(inputs: tuple[int, int | None]) -> str:
    low, high = inputs
    if high is None:
        return f"{low} or more"
    if low == high:
        return str(low)
    return f"{low} to {high}"


def _element_decl(decl: ElementDecl, heading: str) -> list[str]:
    out = [heading, ""]
    notes = [decl.help] if decl.help else []
    if decl.max_count is not None:
        notes.append(f"At most {decl.max_count}.")
    if notes:
        out += [_prose(" ".join(notes)), ""]
    if decl.attrs:
        out += [*_table(_ATTR_HEADER, _attr_rows(decl.attrs)), ""]
    return out


def _engine_section(name: str, engine: EngineEntry) -> list[str]:
    out = [f"### Engine `{name}`", ""]
    if engine.help:
        out += [_prose(engine.help[0].upper() + engine.help[1:] + "."), ""]
    out += [f"Dataset formats: {', '.join(_code(f) for f in sorted(engine.formats)) or 'none'}.", ""]
    for element in engine.node_elements.values():
        out += _element_decl(element, f"#### `<{element.tag}>` in a `{name}` node")
    for module in engine.modules.values():
        out += [f"#### `{name}` / `{module.name}`", ""]
        facts = [f"Inputs (`input=`): {_inputs(module.inputs)}."]
        if module.outputs_attr:
            facts.append(f"Named outputs: the values of `{module.outputs_attr}=`.")
        if module.children:
            facts.append("Children: " + ", ".join(_code(f"<{c.tag}>") for c in module.children) + ".")
        if module.extra_attrs:
            facts.append("Other attributes pass through unchecked.")
        if module.help:
            out += [_prose(module.help[0].upper() + module.help[1:].rstrip(".") + "."), ""]
        out += [" ".join(facts), ""]
        if module.attrs:
            out += [*_table(_ATTR_HEADER, _attr_rows(module.attrs)), ""]
        for child in module.children:
            if child.attrs:
                out += _element_decl(child, f"##### `<{child.tag}>` in `{module.name}`")
    return out


def _features_section() -> list[str]:
    out = [
        "## Feature functions",
        "",
        'Each `<feature name="..." fn="...">` of a `features` module; worked examples in '
        "[concepts.md](concepts.md#feature-functions).",
        "",
    ]
    for fn in FUNCTIONS.values():
        kind = "categorical ids" if fn.categorical else "real values"
        out += [f"### `{fn.name}`", "", _prose(f"{fn.help[0].upper() + fn.help[1:]}. Yields {kind}."), ""]
        out += [*_table(_ATTR_HEADER, _attr_rows(fn.attrs)), ""]
    return out


def reference(registry: Registry | None = None) -> str:
    """docs/reference.md's text."""
    registry = registry if registry is not None else builtin_registry()
    source = resources.files("weiflow.schemas").joinpath("pipeline-1.xsd").read_bytes()
    schema = _Schema(etree.fromstring(source, etree.XMLParser(resolve_entities=False, no_network=True)))
    out = [
        "# XML reference",
        "",
        f"<!-- Generated by `{COMMAND}`; do not edit. -->",
        "",
        "Every element and attribute of a pipeline spec (contract version 1), every module type of the "
        "built-in engines and every feature function. Generated from `weiflow/schemas/pipeline-1.xsd` and "
        "the module declarations (what `weiflow validate` checks and `weiflow modules` lists); for how it "
        "fits together see [concepts.md](concepts.md), for the checks beyond types [spec.md](spec.md).",
        "",
    ]
    out += _schema_section(schema)
    out += ["## Engines", ""]
    out += ["| engine | module types |", "|---|---|"]
    for name, engine in registry.describe().items():
        out.append(f"| [`{name}`](#engine-{name}) | {', '.join(_code(m) for m in engine.modules)} |")
    out.append("")
    for name, engine in registry.describe().items():
        out += _engine_section(name, engine)
    out += _features_section()
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m weiflow.docsgen", description="Generated documentation.")
    parser.add_argument("page", choices=("reference",), help="reference: docs/reference.md")
    parser.parse_args(argv)
    sys.stdout.write(reference())
    return 0


if __name__ == "__main__":
    sys.exit(main())
