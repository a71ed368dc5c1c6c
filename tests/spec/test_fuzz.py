"""Fuzzing the spec front end: whatever bytes a spec file holds, WeiFlow answers with diagnostics.

The property, for every input: ``check_file`` returns diagnostics and never raises;
``compile_file`` either returns a DAG or raises :class:`SpecError` (nothing else), whose
text is non-empty; every diagnostic has a line and a column >= 1 and a non-empty message.

Inputs: random bytes; the good specs in ``xml_specs/`` with byte-level mutations (mostly
breaking well-formedness); and the good specs with tree-level mutations through lxml (always
well-formed, so they reach the schema and the semantic checks).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from lxml import etree

from weiflow.dag import Dag, check_file, compile_file
from weiflow.errors import Diagnostic, SpecError

SPEC_DIR = Path(__file__).resolve().parents[2] / "xml_specs"
SPECS = {path.name: path.read_bytes() for path in sorted(SPEC_DIR.glob("*.xml"))}
NS = "urn:weiflow:pipeline:1"

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# --- the property -----------------------------------------------------------------------


def _check_diagnostics(diagnostics: list[Diagnostic] | tuple[Diagnostic, ...], path: Path) -> None:
    for diagnostic in diagnostics:
        assert isinstance(diagnostic, Diagnostic), diagnostic
        assert diagnostic.file == str(path)
        assert isinstance(diagnostic.line, int) and diagnostic.line >= 1, diagnostic
        assert isinstance(diagnostic.col, int) and diagnostic.col >= 1, diagnostic
        assert diagnostic.message.strip(), diagnostic
        assert diagnostic.severity in ("error", "warning"), diagnostic
        str(diagnostic)  # renders


def assert_only_spec_errors(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.xml"
    path.write_bytes(data)
    # Any exception other than SpecError escapes here and fails the test with its traceback.
    diagnostics = check_file(path)
    assert isinstance(diagnostics, list)
    _check_diagnostics(diagnostics, path)
    try:
        dag = compile_file(path)
    except SpecError as error:
        assert isinstance(error, SpecError)
        assert str(error).strip()
        assert error.diagnostics, "a SpecError lists at least one diagnostic"
        _check_diagnostics(error.diagnostics, path)
        assert any(d.is_error for d in error.diagnostics)
        assert list(error.diagnostics) == diagnostics
    else:
        assert isinstance(dag, Dag)
        assert diagnostics == list(dag.warnings)  # a valid spec reports its warnings, nothing else
        _check_diagnostics(dag.warnings, path)
        assert all(not d.is_error for d in dag.warnings)


def test_good_specs_compile(tmp_path: Path) -> None:
    assert SPECS, f"no specs in {SPEC_DIR}"
    for data in SPECS.values():
        assert_only_spec_errors(tmp_path, data)
        assert check_file(tmp_path / "fuzz.xml") == []


# --- random bytes -----------------------------------------------------------------------

ROOT_OPEN = f'<?xml version="1.0" encoding="UTF-8"?>\n<pipeline xmlns="{NS}" name="p">\n'.encode()


@FUZZ
@given(st.binary(max_size=4096))
@example(b"")
@example(b"   \n\t")
@example(b"\xef\xbb\xbf")
@example(b"\xff\xfe<\x00")
@example(b'<?xml version="1.0" encoding="bogus"?><pipeline/>')
@example(b'<?xml version="1.0" encoding="UTF-16"?><pipeline/>')
@example(b"<!DOCTYPE p [<!ENTITY e 'x'>]><pipeline>&e;</pipeline>")
@example(b"<pipeline/>")
@example(f'<pipeline xmlns="{NS}"/>'.encode())
@example(b"\x00")
def test_random_bytes(tmp_path: Path, data: bytes) -> None:
    assert_only_spec_errors(tmp_path, data)


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_inside_a_pipeline(tmp_path: Path, data: bytes) -> None:
    assert_only_spec_errors(tmp_path, ROOT_OPEN + data + b"\n</pipeline>\n")


# --- byte-level mutations of good specs -------------------------------------------------

TOKENS = [
    b"<",
    b">",
    b"/>",
    b"</",
    b'"',
    b"'",
    b"=",
    b"$",
    b"$$",
    b"${",
    b"${}",
    b"${ds}",
    b"${nope}",
    b"${a b}",
    b"&",
    b"&amp;",
    b"&lt;",
    b"&bogus;",
    b"&#0;",
    b"&#x10FFFF;",
    b"&#x110000;",
    b"]]>",
    b"<![CDATA[",
    b"<!--",
    b"-->",
    b"<?",
    b"?>",
    b"<?xml version='1.0'?>",
    b"<!DOCTYPE pipeline>",
    b'<!ENTITY x SYSTEM "file:///etc/passwd">',
    b"\x00",
    b"\xff",
    b"\xc3",
    b"\xef\xbb\xbf",
    b"\r",
    b"\r\n",
    b"\n",
    b"\t",
    b",",
    b".",
    b":",
    b"-1",
    b"1e999",
    b"nan",
    "²".encode(),
    "\u0661".encode(),
    "é".encode(),
    "\u202e".encode(),
    "\U0001f600".encode(),
    b' xmlns="urn:other"',
    b' xmlns:x="urn:x" x:a="1"',
    b' foo="bar"',
    b' id="dup"',
    b"<module/>",
    b'<node id="z" engine="python"><module id="m" type="call" callable="a:b"/></node>',
]

_ATTR_VALUE = re.compile(rb'="[^"]*"')
_ATTRIBUTE = re.compile(rb'\s[A-Za-z_:][-A-Za-z0-9_.:]*\s*=\s*"[^"]*"')

odd_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)),
    max_size=24,
)


@st.composite
def byte_mutation(draw: st.DrawFn, data: bytes) -> bytes:
    n = len(data)
    kind = draw(
        st.sampled_from(["delete", "duplicate", "token", "random", "swap_lines", "attr_value", "drop_attr", "text"])
    )
    if kind == "delete" and n:
        i = draw(st.integers(0, n - 1))
        j = draw(st.integers(i, min(n, i + 200)))
        return data[:i] + data[j:]
    if kind == "duplicate" and n:
        i = draw(st.integers(0, n - 1))
        j = draw(st.integers(i, min(n, i + 400)))
        k = draw(st.integers(0, n))
        return data[:k] + data[i:j] + data[k:]
    at = draw(st.integers(0, n))
    if kind == "token":
        return data[:at] + draw(st.sampled_from(TOKENS)) + data[at:]
    if kind == "random":
        return data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:]
    if kind == "text":
        return data[:at] + draw(odd_text).encode("utf-8", "surrogatepass") + data[at:]
    if kind == "swap_lines":
        lines = data.split(b"\n")
        if len(lines) > 1:
            i = draw(st.integers(0, len(lines) - 1))
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        return b"\n".join(lines)
    if kind == "attr_value":
        spans = [m.span() for m in _ATTR_VALUE.finditer(data)]
        if spans:
            start, end = draw(st.sampled_from(spans))
            value = draw(st.one_of(odd_text.map(lambda t: t.encode("utf-8", "surrogatepass")), st.sampled_from(TOKENS)))
            return data[: start + 2] + value + data[end - 1 :]
    if kind == "drop_attr":
        spans = [m.span() for m in _ATTRIBUTE.finditer(data)]
        if spans:
            start, end = draw(st.sampled_from(spans))
            return data[:start] + data[end:]
    return data


@st.composite
def mutated_spec(draw: st.DrawFn) -> bytes:
    data = SPECS[draw(st.sampled_from(sorted(SPECS)))]
    for _ in range(draw(st.integers(1, 4))):
        data = draw(byte_mutation(data))
    return data


@FUZZ
@given(mutated_spec())
def test_byte_mutations_of_good_specs(tmp_path: Path, data: bytes) -> None:
    assert_only_spec_errors(tmp_path, data)


# --- tree-level mutations (always well-formed) ------------------------------------------


def _parse(data: bytes) -> etree._Element:
    return etree.fromstring(data, etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False))


def _harvest() -> tuple[list[str], list[str], list[str]]:
    tags: set[str] = set()
    names: set[str] = set()
    values: set[str] = set()
    for data in SPECS.values():
        for element in _parse(data).iter(etree.Element):
            tags.add(etree.QName(element).localname)
            for key, value in element.attrib.items():
                names.add(str(key))
                values.add(str(value))
    return sorted(tags), sorted(names), sorted(values)


TAGS, ATTR_NAMES, ATTR_VALUES = _harvest()

INTERESTING_VALUES = [
    "",
    " ",
    "$",
    "$$",
    "${",
    "${}",
    "${ds}",
    "${nope}",
    "${ds",
    "$ds",
    "${a-b}",
    "0",
    "-1",
    "1",
    "2",
    "00",
    "999999999999999999999999",
    "1e999",
    "-1e999",
    "nan",
    "inf",
    "0.5",
    "1,2",
    "2,1",
    "1,1",
    "a,,b",
    ",",
    "a.b",
    "a.b.c",
    ".x",
    "x.",
    "true",
    "false",
    "yes",
    "2026-02-30",
    "9999-12-31",
    "0000-01-01",
    "@daily",
    "@never",
    "* * * * * * *",
    "61 25 * * *",
    "ttl:0",
    "keep-last:5",
    "pinned",
    "²",
    "\u0661\u0662",
    "½",
    "\u00a0",
    "\u202e",
    "x" * 300,
    "a:b",
    ":",
    "os:system",
]

safe_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Co")) | st.sampled_from("\t\n"),
    max_size=20,
).filter(lambda t: "\ufffe" not in t and "\uffff" not in t)

# Number-like text: Unicode digits (superscript two, Arabic-Indic one), signs, exponents, blanks.
numberish = st.text(
    alphabet=st.characters(categories=("Nd", "No", "Nl")) | st.sampled_from("+-.eE0123456789 "),
    min_size=1,
    max_size=6,
)
attr_values = st.one_of(
    st.sampled_from(ATTR_VALUES),
    st.sampled_from(INTERESTING_VALUES),
    safe_text,
    numberish,
    st.integers().map(str),
)
attr_names = st.one_of(st.sampled_from(ATTR_NAMES), st.from_regex(r"[a-z][a-z\-]{0,10}", fullmatch=True))


def _elements(root: etree._Element) -> list[etree._Element]:
    return list(root.iter(etree.Element))


@st.composite
def tree_mutation(draw: st.DrawFn, root: etree._Element) -> None:
    elements = _elements(root)
    element = draw(st.sampled_from(elements))
    kind = draw(
        st.sampled_from(
            ["set_attr", "set_attr", "rename_attr", "drop_attr", "add_attr", "dup", "remove", "move", "retag", "text"]
        )
    )
    keys = [str(k) for k in element.attrib]
    if kind == "set_attr" and keys:
        element.set(draw(st.sampled_from(keys)), draw(attr_values))
    elif kind == "rename_attr" and keys:
        old = draw(st.sampled_from(keys))
        new = draw(attr_names)
        value = element.attrib.pop(old)
        element.set(new, value)
    elif kind == "drop_attr" and keys:
        del element.attrib[draw(st.sampled_from(keys))]
    elif kind == "add_attr":
        element.set(draw(attr_names), draw(attr_values))
    elif kind == "dup" and element is not root:
        parent = draw(st.sampled_from(elements))
        parent.insert(draw(st.integers(0, len(parent))), copy.deepcopy(element))
    elif kind == "remove" and element is not root:
        parent = element.getparent()
        assert parent is not None
        parent.remove(element)
    elif kind == "move" and element is not root:
        targets = [e for e in elements if e is not element and element not in e.iterancestors()]
        if targets:
            parent = draw(st.sampled_from(targets))
            parent.insert(draw(st.integers(0, len(parent))), element)
    elif kind == "retag":
        tag = draw(st.one_of(st.sampled_from(TAGS), st.just("bogus")))
        namespace = draw(st.sampled_from([NS, NS, NS, "urn:other", None]))
        element.tag = f"{{{namespace}}}{tag}" if namespace else tag
    elif kind == "text":
        element.text = draw(safe_text)


@st.composite
def well_formed_mutant(draw: st.DrawFn) -> bytes:
    root = _parse(SPECS[draw(st.sampled_from(sorted(SPECS)))])
    for _ in range(draw(st.integers(1, 5))):
        draw(tree_mutation(root))
    encoding = draw(st.sampled_from(["UTF-8", "UTF-8", "UTF-8", "ASCII", "ISO-8859-1", "UTF-16"]))
    pretty = draw(st.booleans())
    return etree.tostring(root.getroottree(), xml_declaration=True, encoding=encoding, pretty_print=pretty)


@FUZZ
@given(well_formed_mutant())
def test_tree_mutations_of_good_specs(tmp_path: Path, data: bytes) -> None:
    assert_only_spec_errors(tmp_path, data)


# --- crashers found by the tests above, kept as strict regressions ----------------------


def _descartes_chain(length: int) -> bytes:
    """A features module whose descartes features each cross the previous one (about 55 bytes each)."""
    features = ['<feature name="f0" fn="piecewise" source="a" boundaries="1,2"/>']
    features += ['<feature name="b" fn="piecewise" source="a" boundaries="1"/>']
    features += [f'<feature name="f{i}" fn="descartes" sources="f{i - 1},b"/>' for i in range(1, length)]
    return (
        f'<pipeline xmlns="{NS}" name="p"><datasets>'
        '<dataset name="e" uri="file:///e" external="true"/><dataset name="o" uri="file:///o"/></datasets>'
        '<node id="n" engine="spark"><module id="r" type="read" dataset="e"/>'
        f'<module id="f" type="features" input="r">{"".join(features)}</module>'
        '<module id="w" type="write" input="f" dataset="o"/></node></pipeline>'
    ).encode()


KNOWN_CRASHERS = {
    # A foreign-namespace element where the schema allows none: libxml2 reports the error path
    # '/*/x:a', and tree.xpath() of it raises XPathEvalError (undefined prefix) in parse_spec.
    "foreign_element_with_prefix": (
        f'<pipeline xmlns="{NS}" name="p"><x:a xmlns:x="urn:other"/>'
        '<node id="n" engine="python"><module id="m" type="call" callable="a:b"/></node></pipeline>'
    ).encode(),
    # '²'.isdigit() is True but int('²') raises ValueError (parser._build, pipeline retries).
    "retries_superscript_two": (
        f'<pipeline xmlns="{NS}" name="p" retries="\u00b2">'
        '<node id="n" engine="python"><module id="m" type="call" callable="a:b"/></node></pipeline>'
    ).encode(),
    # 1000 chained descartes features (55 KB, far under the 1 MB cap): RecursionError in
    # weiflow.features.functions._reaches / card.
    "deep_descartes_chain": _descartes_chain(1000),
}


@pytest.mark.parametrize("name", sorted(KNOWN_CRASHERS))
def test_known_crashers(tmp_path: Path, name: str) -> None:
    assert_only_spec_errors(tmp_path, KNOWN_CRASHERS[name])
