"""Hardened XML parsing of pipeline specs, schema validation, and the positioned model.

Security (shared/DESIGN.md, rules that do not bend): no DTD is loaded, no entity is
resolved, no network is touched, and a file over the size cap is refused before parsing.
A spec that carries a DOCTYPE at all is rejected: WeiFlow specs never need one, and it is
the carrier of every entity attack (XXE, billion laughs).

libxml2 reports schema errors with a line but no column, and lxml elements carry no
column either, so positions come from one regex pass over the (already well-formed)
source: the n-th start tag in the text is the n-th element lxml yields in document order.
"""

from __future__ import annotations

import bisect
import codecs
import difflib
import hashlib
import re
from collections.abc import Callable, Mapping
from functools import cache
from importlib import resources
from pathlib import Path

from lxml import etree

from weiflow.errors import Diagnostic, SpecError
from weiflow.spec.model import (
    Attr,
    DatasetSpec,
    Element,
    ModuleSpec,
    NodeSpec,
    ParamSpec,
    PipelineSpec,
    Pos,
)

__all__ = ["DEFAULT_MAX_SPEC_BYTES", "NAMESPACE", "parse_spec", "read_spec_bytes", "split_list"]

NAMESPACE = "urn:weiflow:pipeline:1"
DEFAULT_MAX_SPEC_BYTES = 1024 * 1024
_NS = "{" + NAMESPACE + "}"


@cache
def _schema() -> etree.XMLSchema:
    source = resources.files("weiflow.schemas").joinpath("pipeline-1.xsd").read_bytes()
    return etree.XMLSchema(etree.fromstring(source, _hardened_parser()))


def _hardened_parser() -> etree.XMLParser:
    # A new parser per document: lxml parsers keep per-parse state and are not thread-safe.
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=False,
        collect_ids=False,
    )


def split_list(value: str | None) -> list[str]:
    """Split a comma-separated attribute (``input``, ``depends``, ``sources``) into its items."""
    if not value:
        return []
    return [item.strip() for item in value.split(",") if item.strip()]


def whole_number(value: str | None) -> int | None:
    """An xs:nonNegativeInteger as the schema accepts it ("+3", " 2 "); None when absent or invalid."""
    if value is None:
        return None
    text = value.strip().removeprefix("+")
    return int(text) if text.isascii() and text.isdigit() else None


def read_spec_bytes(path: str | Path, max_bytes: int = DEFAULT_MAX_SPEC_BYTES) -> bytes:
    """Read a spec file, refusing files over ``max_bytes`` without reading them whole."""
    name = str(path)
    try:
        with Path(path).open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise SpecError([Diagnostic(name, 1, 1, f"cannot read spec: {exc.strerror or exc}")]) from exc
    if len(data) > max_bytes:
        raise SpecError(
            [
                Diagnostic(
                    name,
                    1,
                    1,
                    f"spec is larger than the {max_bytes:,}-byte limit",
                    hint="split the pipeline, or raise max_spec_bytes in weiflow.toml",
                )
            ]
        )
    return data


# --- source positions -------------------------------------------------------------------

_OPAQUE = re.compile(r"<!--.*?-->|<!\[CDATA\[.*?\]\]>|<\?.*?\?>", re.DOTALL)
_START_TAG = re.compile(r"<([^\s/>!?]+)((?:\s+[^\s=/>]+\s*=\s*(?:\"[^\"]*\"|'[^']*'))*)\s*/?>", re.DOTALL)
_ATTRIBUTE = re.compile(r"([^\s=/>]+)\s*=\s*(?:\"[^\"]*\"|'[^']*')")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # as XML counts lines: CR LF, CR and LF each end one
_PROLOG_ITEM = re.compile(r"\s+|<\?.*?\?>|<!--.*?-->", re.DOTALL)
_DECLARED_ENCODING = re.compile(rb"""^<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._:-]+)["']""")
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def _decode(data: bytes) -> str:
    """The document as text, for positions and the prolog check (lxml parses the bytes itself)."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return data[len(bom) :].decode(encoding, errors="replace")
    if data.startswith(b"<\x00\x00\x00"):
        return data.decode("utf-32-le", errors="replace")
    if data.startswith(b"\x00\x00\x00<"):
        return data.decode("utf-32-be", errors="replace")
    if data.startswith(b"<\x00"):
        return data.decode("utf-16-le", errors="replace")
    if data.startswith(b"\x00<"):
        return data.decode("utf-16-be", errors="replace")
    declared = _DECLARED_ENCODING.match(data)
    try:
        return data.decode(declared.group(1).decode() if declared else "utf-8", errors="replace")
    except LookupError:
        return data.decode("utf-8", errors="replace")


class _Lines:
    """Offsets to line and column; the line table is built on the first question."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._starts: list[int] | None = None

    def at(self, offset: int) -> Pos:
        if self._starts is None:
            self._starts = [0] + [m.end() for m in _LINE_BREAK.finditer(self._text)]
        line = bisect.bisect_right(self._starts, offset)
        return Pos(line, offset - self._starts[line - 1] + 1)


def _prolog_problem(text: str, lines: _Lines) -> tuple[Pos, str, str] | None:
    """A DOCTYPE, or no element at all, found before libxml2 sees the document.

    Checked on the text because libxml2 opens external DTD subsets and parameter entities
    from the local file system even with load_dtd=False, before any check after parsing
    could refuse them.
    """
    offset = 0
    while match := _PROLOG_ITEM.match(text, offset):
        if match.end() == offset:
            break
        offset = match.end()
    if text.startswith("<!DOCTYPE", offset):
        return (
            lines.at(offset),
            "DOCTYPE declarations are not allowed in WeiFlow specs",
            "remove the <!DOCTYPE ...> block; specs use no DTDs or entities",
        )
    if offset >= len(text):
        return Pos(1, 1), "spec has no <pipeline> element", "start from a file in xml_specs/"
    return None


class _Tag:
    """One start tag: its name and where it is; attribute positions are found on demand."""

    __slots__ = ("_attrs", "_attrs_offset", "_attrs_text", "_lines", "_offset", "_pos", "name")

    def __init__(self, name: str, offset: int, attrs_offset: int, attrs_text: str, lines: _Lines) -> None:
        self.name = name
        self._offset = offset
        self._pos: Pos | None = None
        self._attrs_offset = attrs_offset
        self._attrs_text = attrs_text
        self._lines = lines
        self._attrs: dict[str, Pos] | None = None

    @property
    def pos(self) -> Pos:
        if self._pos is None:
            self._pos = self._lines.at(self._offset)
        return self._pos

    def attr_pos(self, name: str) -> Pos:
        if self._attrs is None:
            self._attrs = {
                m.group(1): self._lines.at(self._attrs_offset + m.start())
                for m in _ATTRIBUTE.finditer(self._attrs_text)
            }
        return self._attrs.get(name, self.pos)


class _Positions:
    """Where every start tag is, in document order."""

    def __init__(self, text: str, lines: _Lines) -> None:
        blanked = (
            _OPAQUE.sub(lambda m: re.sub(r"[^\r\n]", " ", m.group(0)), text) if "<!" in text or "<?" in text else text
        )
        self.tags = [_Tag(m.group(1), m.start(), m.start(2), m.group(2), lines) for m in _START_TAG.finditer(blanked)]


class _Unplaced:
    """Stands in for a tag the position pass could not match: lxml's line, column 1."""

    def __init__(self, line: int | None) -> None:
        self.pos = Pos(line or 1, 1)

    def attr_pos(self, name: str) -> Pos:
        return self.pos


def _qname(element: etree._Element) -> str:
    """The tag as written in the source (prefix:local), to match lxml elements to start tags."""
    local = str(element.tag).rpartition("}")[2]
    return f"{element.prefix}:{local}" if element.prefix else local


# --- schema errors, rewritten for people ------------------------------------------------

_CLARK = re.compile(r"\{" + re.escape(NAMESPACE) + r"\}(\w+)")
_ELEMENT_ATTR = re.compile(r"^Element '[^']*'(?:, attribute '([^']+)')?: (.*)$", re.DOTALL)
_EXPECTED = re.compile(r"Expected is (?:one of )?\( ([^)]*) \)")

_ATTRIBUTE_HINTS = {
    "retention": "use ttl:<days>, idle:<days>, consumed, keep-last:<n> or pinned",
    "start-date": "write the date as YYYY-MM-DD",
    "retries": "use a whole number, 0 or more",
    "name": "names start with a letter or '_' and hold only letters, digits, '_' and '-'",
    "id": "ids start with a letter or '_' and hold only letters, digits, '_' and '-'",
    "engine": "engine names start with a letter or '_' and hold only letters, digits, '_' and '-'",
    "depends": 'list node ids separated by commas, e.g. depends="features,train"',
    "input": 'list module ids separated by commas, e.g. input="left,right"',
}


def _friendly_schema_message(raw: str) -> tuple[str, str | None, str | None]:
    """Return (message, hint, attribute) for one libxml2 schema message."""
    match = _ELEMENT_ATTR.match(raw.strip())
    body = raw.strip()
    attribute = None
    if match:
        attribute, body = match.group(1), match.group(2)
    body = _CLARK.sub(r"<\1>", body).rstrip(".")
    hint: str | None = None
    if "This element is not expected" in body:
        expected = _EXPECTED.search(body)
        names = [n.strip() for n in expected.group(1).split(",")] if expected else []
        message = "element is not allowed here"
        if names:
            hint = "expected " + " or ".join(names)
        return message, hint, None
    if "Missing child element" in body:
        expected = _EXPECTED.search(body)
        names = [n.strip() for n in expected.group(1).split(",")] if expected else []
        if not names:
            return "element is incomplete", None, None
        # The required element comes last; the ones before it are optional.
        return f"needs at least one {names[-1]}", f"add {names[-1]}", None
    if body.startswith("The attribute") and body.endswith("is required but missing"):
        missing = body.split("'")[1]
        return f"missing required attribute '{missing}'", f'add {missing}="..."', None
    if body.startswith("The attribute") and body.endswith("is not allowed"):
        return f"unknown attribute '{attribute}'", None, attribute
    enum = re.search(r"The value '(.*)' is not an element of the set \{(.*)\}", body, re.DOTALL)
    if enum:
        choices = [c.strip().strip("'") for c in enum.group(2).split(",")]
        close = difflib.get_close_matches(enum.group(1), choices, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return (
            f"{attribute}='{enum.group(1)}' is not one of {', '.join(choices)}",
            hint.strip() or None,
            attribute,
        )
    pattern = re.search(r"The value '(.*)' is not accepted by the pattern", body, re.DOTALL)
    if pattern:
        return (
            f"{attribute}='{pattern.group(1)}' is not valid",
            _ATTRIBUTE_HINTS.get(attribute or ""),
            attribute,
        )
    value = re.search(r"'(.*)' is not a valid value of the (?:atomic|local atomic) type '([^']*)'", body, re.DOTALL)
    if value:
        return (
            f"{attribute}='{value.group(1)}' is not a valid {value.group(2).removeprefix('xs:')}",
            _ATTRIBUTE_HINTS.get(attribute or ""),
            attribute,
        )
    return body, None, attribute


# --- parse ------------------------------------------------------------------------------


def parse_spec(
    path: str | Path, data: bytes | None = None, *, max_bytes: int = DEFAULT_MAX_SPEC_BYTES
) -> tuple[PipelineSpec | None, list[Diagnostic]]:
    """Parse and schema-check one spec.

    Returns the model (``None`` when the file is not well-formed XML or is unsafe) and the
    structural diagnostics. The model is built even when the schema finds problems, so that
    semantic checks can report everything in one pass; elements missing their ids are kept
    with an empty id, which semantic checks skip.
    """
    name = str(path)
    if data is None:
        data = read_spec_bytes(path, max_bytes)
    elif len(data) > max_bytes:
        raise SpecError([Diagnostic(name, 1, 1, f"spec is larger than the {max_bytes:,}-byte limit")])
    if not data.strip():
        return None, [Diagnostic(name, 1, 1, "spec file is empty", hint="start from a file in xml_specs/")]
    text = _decode(data)
    lines = _Lines(text)
    problem = _prolog_problem(text, lines)
    if problem is not None:
        at, problem_message, problem_hint = problem
        return None, [Diagnostic(name, at.line, at.col, problem_message, problem_hint)]
    try:
        root = etree.fromstring(data, _hardened_parser())
    except etree.XMLSyntaxError as exc:
        line, col = exc.position if exc.position else (1, 1)
        message = re.sub(r",? line \d+, column \d+.*$", "", exc.msg or str(exc))
        fix = "write '&' as '&amp;' (also in URIs and SQL) and '<' as '&lt;'" if "EntityRef" in message else None
        return None, [Diagnostic(name, max(line, 1), max(col, 1), f"not well-formed XML: {message}", fix)]
    except ValueError as exc:  # e.g. a byte string that declares an unsupported encoding
        return None, [Diagnostic(name, 1, 1, f"not well-formed XML: {exc}")]
    tree = root.getroottree()
    positions = _Positions(text, lines)
    root_pos = positions.tags[0].pos if positions.tags else Pos(1, 1)
    if (
        tree.docinfo.internalDTD is not None or tree.docinfo.doctype
    ):  # defence in depth: the prolog check refuses these first
        return None, [Diagnostic(name, 1, 1, "DOCTYPE declarations are not allowed in WeiFlow specs")]
    if root.tag != _NS + "pipeline":
        qname = etree.QName(root)
        if qname.localname == "pipeline":
            message = f"root element <pipeline> is in namespace '{qname.namespace or ''}', not '{NAMESPACE}'"
        else:
            message = f"root element is <{qname.localname}>, expected <pipeline>"
        fix = f'write <pipeline xmlns="{NAMESPACE}" name="...">'
        return None, [Diagnostic(name, root_pos.line, root_pos.col, message, fix)]

    elements = list(root.iter(etree.Element))
    where: dict[etree._Element, _Tag | _Unplaced] = {}
    if len(positions.tags) == len(elements):
        for element, tag in zip(elements, positions.tags, strict=True):
            if tag.name == _qname(element):
                where[element] = tag

    def locate(element: etree._Element) -> _Tag | _Unplaced:
        found = where.get(element)
        if found is None:
            found = where[element] = _Unplaced(getattr(element, "sourceline", None))
        return found

    diagnostics: list[Diagnostic] = []
    schema = _schema()
    if not schema.validate(tree):
        seen: set[tuple[int, int, str]] = set()
        by_path = {tree.getpath(element): element for element in elements}
        for entry in schema.error_log:  # type: ignore[attr-defined]  # lxml-stubs lack _ErrorLog.__iter__
            element = by_path.get(entry.path or "")
            message, hint, attribute = _friendly_schema_message(entry.message)
            if element is not None:
                located = locate(element)
                at = located.attr_pos(attribute) if attribute else located.pos
                message = f"<{etree.QName(element).localname}>: {message}"
            else:
                at = Pos(entry.line or 1, 1)
            key = (at.line, at.col, message)
            if key not in seen:
                seen.add(key)
                diagnostics.append(Diagnostic(name, at.line, at.col, message, hint))

    model = _build(name, hashlib.sha256(data).hexdigest(), root, locate)
    return model, diagnostics


def _element(
    el: etree._Element, locate: Callable[[etree._Element], _Tag | _Unplaced], templated: list[tuple[Element, str, Attr]]
) -> Element:
    tag = locate(el)
    attrib: Mapping[str, str] = el.attrib  # type: ignore[assignment]  # str keys: we parse text, not bytes
    attrs = {
        key: Attr(value, None, tag, key)
        for key, value in attrib.items()
        if not key.startswith("{")  # attributes of other namespaces belong to extensions
    }
    children: list[Element] = []
    text = el.text or ""
    for child in el:
        if isinstance(child, etree._Comment | etree._ProcessingInstruction):
            text += child.tail or ""  # text a comment splits off, as inside a <query>
        elif child.tag.startswith(_NS):
            children.append(_element(child, locate, templated))
    element = Element(el.tag[len(_NS) :], tag, attrs, text.strip(), children)
    templated.extend((element, key, attr) for key, attr in attrs.items() if "$" in attr.value)
    return element


def _build(
    file: str, sha256: str, root: etree._Element, locate: Callable[[etree._Element], _Tag | _Unplaced]
) -> PipelineSpec:
    templated: list[tuple[Element, str, Attr]] = []
    pipeline = _element(root, locate, templated)

    def child(parent: Element, tag: str) -> Element | None:
        return next((c for c in parent.children if c.tag == tag), None)

    def text_of(parent: Element) -> str:
        found = child(parent, "description")
        return found.text if found is not None else ""

    params = [
        ParamSpec(p.get("name") or "", p.get("type") or "string", p.get("default"), p.get("description") or "", p)
        for block in pipeline.children
        if block.tag == "params"
        for p in block.children
    ]
    datasets = [
        DatasetSpec(
            name=d.get("name") or "",
            uri=d.get("uri") or "",
            format=d.get("format") or "parquet",
            external=(d.get("external") or "false").strip() in ("true", "1"),
            retention=d.get("retention"),
            description=d.get("description") or "",
            element=d,
        )
        for block in pipeline.children
        if block.tag == "datasets"
        for d in block.children
    ]
    nodes = []
    for node in (c for c in pipeline.children if c.tag == "node"):
        modules = [
            ModuleSpec(m.get("id") or "", m.get("type") or "", split_list(m.get("input")), m)
            for m in node.children
            if m.tag == "module"
        ]
        config = [c for c in node.children if c.tag in ("cluster", "conf")]
        nodes.append(
            NodeSpec(
                node.get("id") or "",
                node.get("engine") or "",
                split_list(node.get("depends")),
                modules,
                config,
                node,
            )
        )
    return PipelineSpec(
        file=file,
        sha256=sha256,
        name=pipeline.get("name") or "",
        owner=pipeline.get("owner"),
        schedule=pipeline.get("schedule"),
        start_date=pipeline.get("start-date"),
        priority=pipeline.get("priority") or "medium",
        retries=whole_number(pipeline.get("retries")) or 0,
        description=text_of(pipeline),
        params=params,
        datasets=datasets,
        nodes=nodes,
        element=pipeline,
        templated=templated,
    )
