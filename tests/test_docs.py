"""The docs that cannot drift: each page checked against the code it describes.

- docs/reference.md is generated (``python -m weiflow.docsgen reference``): byte for byte.
- docs/concepts.md: its ``>>>`` examples run against the online feature functions, and its
  engine table names the built-in engines.
- docs/troubleshooting.md: spec errors are produced here by validating the page's own spec
  with one change each; every other message names the file whose text it quotes.
- docs/operators.md: every ``weiflow`` command it names answers ``--help``, with the flags shown.
"""

from __future__ import annotations

import contextlib
import doctest
import io
import re
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.reliability_plugin import cells_in_source
from weiflow.cli import main
from weiflow.dag.compiler import check_file, compile_file
from weiflow.dag.render import to_text
from weiflow.docsgen import COMMAND, builtin_registry, reference

DOCS = REPO / "docs"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.DOTALL | re.MULTILINE)


def blocks(page: str, language: str) -> list[str]:
    return [m.group(2) for m in FENCE.finditer(page) if m.group(1) == language]


# --- reference.md ------------------------------------------------------------------------


def test_reference_is_generated_from_the_schema_and_declarations() -> None:
    written = (DOCS / "reference.md").read_text(encoding="utf-8")
    assert written == reference(), f"docs/reference.md is out of date: run `{COMMAND}`"


def test_reference_lists_every_module_type_and_attribute() -> None:
    page = (DOCS / "reference.md").read_text(encoding="utf-8")
    for name, engine in builtin_registry().describe().items():
        for module in engine.modules.values():
            section = page.split(f"#### `{name}` / `{module.name}`\n", 1)[1].split("\n#### ", 1)[0]
            for attr in module.attrs:
                assert f"| `{attr.name}` | `{attr.kind}` |" in section, (name, module.name, attr.name)


# --- concepts.md -------------------------------------------------------------------------


def test_concepts_examples_compute_what_they_say() -> None:
    page = (DOCS / "concepts.md").read_text(encoding="utf-8")
    examples = blocks(page, "python")
    assert len(examples) >= 6
    parser = doctest.DocTestParser()
    test = parser.get_doctest("\n".join(examples), {}, "docs/concepts.md", "docs/concepts.md", 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    output = io.StringIO()
    result = runner.run(test, out=output.write)
    assert result.attempted >= 12
    assert result.failed == 0, output.getvalue()


def test_concepts_graph_is_what_weiflow_graph_draws() -> None:
    page = (DOCS / "concepts.md").read_text(encoding="utf-8")
    drawn = to_text(compile_file(REPO / "xml_specs" / "feed_ctr.xml"))
    assert blocks(page, "")[0].rstrip("\n") == drawn.rstrip("\n"), (
        "docs/concepts.md's tree is not what `weiflow graph xml_specs/feed_ctr.xml` draws: paste its output"
    )


def test_concepts_engine_table_names_the_builtin_engines() -> None:
    page = (DOCS / "concepts.md").read_text(encoding="utf-8")
    table = page.split("## Engines\n", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"^\| `(\w+)` \|", table, re.MULTILINE))
    assert named == set(builtin_registry().engines)


# --- troubleshooting.md ------------------------------------------------------------------

# One change each to the page's spec: the text as written, then as changed.
SPEC_CHANGES = {
    "amp": ('uri="file:///data/events"', 'uri="file:///data/events?a=1&b=2"'),
    "doctype": ("<pipeline xmlns", "<!DOCTYPE pipeline>\n<pipeline xmlns"),
    "namespace": ('xmlns="urn:weiflow:pipeline:1" ', ""),
    "unknown_dataset": ('dataset="events"/>', 'dataset="event"/>'),
    "input": ('input="read"', 'input="reader"'),
    "reference": ('${ds}"', '${day}"'),
    "retention": ('retention="consumed"', 'retention="keep:5"'),
    "uri": ('uri="file:///data/events"', 'uri="data/events"'),
    "engine": ('engine="spark"', 'engine="sprak"'),
    "type": ('type="read"', 'type="load"'),
    "attr": ('type="read" dataset="events"', 'type="read" datset="events"'),
    "boundaries": ("18,25,35,50", "18,35,25,50"),
    "descartes": ('sources="age_b,city"', 'sources="age,city"'),
}
MARKER = re.compile(r"<!-- (produced|checked|not WeiFlow's): ?(.*?) -->")
CHECKED = re.compile(r'^(\S+) "(.+)"$')


def _quoted(page: str) -> list[tuple[str, str, str]]:
    """Each ```text block with the first marker after it: (block, kind, argument)."""
    out = []
    for match in FENCE.finditer(page):
        if match.group(1) != "text":
            continue
        marker = MARKER.match(page, match.end())
        assert marker is not None, f"this quoted message has no marker after it:\n{match.group(2)}"
        out.append((match.group(2), marker.group(1), marker.group(2)))
    return out


def test_troubleshooting_spec_errors_are_what_validate_prints(tmp_path: Path) -> None:
    page = (DOCS / "troubleshooting.md").read_text(encoding="utf-8")
    spec = blocks(page, "xml")[0]
    path = tmp_path / "spec.xml"
    path.write_text(spec)
    assert check_file(path) == [], "the page's spec must validate clean"
    produced = {kind_arg: block for block, kind, kind_arg in _quoted(page) if kind == "produced"}
    assert set(produced) == set(SPEC_CHANGES)
    for name, (before, after) in SPEC_CHANGES.items():
        assert before in spec, (name, before)
        path.write_text(spec.replace(before, after, 1))
        printed = "".join(f"{d}\n" for d in check_file(path)).replace(str(path), "spec.xml")
        assert printed == produced[name], f"{name}: validate prints\n{printed}"


def test_troubleshooting_messages_occur_in_the_code() -> None:
    page = (DOCS / "troubleshooting.md").read_text(encoding="utf-8")
    prose = MARKER.sub("", page)
    markers = [m.group(2) for m in MARKER.finditer(page) if m.group(1) == "checked"]
    assert len(markers) >= 15
    for marker in markers:
        found = CHECKED.match(marker)
        assert found is not None, marker
        file, fragment = found.groups()
        source = (REPO / file).read_text(encoding="utf-8")
        assert fragment in source, f"docs/troubleshooting.md quotes {fragment!r}, which {file} no longer has"
        # The page quotes the message with its placeholders filled in: every literal part must be there.
        for part in re.split(r"\{[^{}]*\}", fragment):
            assert part in prose, f"docs/troubleshooting.md no longer quotes {part!r} of {file}'s {fragment!r}"
    assert all(kind in ("produced", "checked", "not WeiFlow's") for _, kind, _ in _quoted(page))


# --- operators.md ------------------------------------------------------------------------

_GROUPS = ("center", "deploy", "retention", "demo")
_COMMAND = re.compile(r"\bweiflow ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?")


def _help(words: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            code = main([*words, "--help"])
        except SystemExit as exc:
            code = exc.code  # type: ignore[assignment]
    assert code in (0, None), f"weiflow {' '.join(words)} --help exited {code}"
    return out.getvalue()


def test_operators_guide_names_only_commands_that_exist() -> None:
    page = (DOCS / "operators.md").read_text(encoding="utf-8")
    commands: set[tuple[str, ...]] = set()
    for first, second in _COMMAND.findall(page):
        commands.add((first, second) if first in _GROUPS and second else (first,))
    assert ("deploy", "render") in commands and ("center", "migrate") in commands
    helps = {words: _help(list(words)) for words in sorted(commands)}
    for block in blocks(page, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            match = _COMMAND.search(line)
            if match is None or line.lstrip().startswith(("pip ", "createdb", "export")):
                continue
            first, second = match.groups()
            words = (first, second) if first in _GROUPS and second else (first,)
            command = line[match.start() :].split("#", 1)[0]
            for flag in re.findall(r"(?<!\S)(--?[a-z][a-z-]*)", command):
                assert flag in helps[words], f"weiflow {' '.join(words)} has no {flag}"


@pytest.mark.parametrize("page", ["concepts.md", "troubleshooting.md", "operators.md", "reference.md"])
def test_links_to_other_pages_resolve(page: str) -> None:
    text = (DOCS / page).read_text(encoding="utf-8")
    for target, anchor in re.findall(r"\]\(([\w.-]+\.md)(?:#([\w-]+))?\)", text):
        linked = DOCS / target
        assert linked.is_file(), f"{page} links to {target}"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", linked.read_text(encoding="utf-8"), re.MULTILINE)
            slugs = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
            assert anchor in slugs, f"{page} links to {target}#{anchor}"


def test_the_reliability_report_lists_every_cell_of_the_matrix() -> None:
    # docs/reliability.md is written by a run (./dev reliability); a cell added since must be run into it.
    report = (REPO / "docs" / "reliability.md").read_text()
    rows = {
        tuple(cell.strip() for cell in line.split("|")[1:3]) for line in report.splitlines() if line.startswith("| ")
    }
    cells = cells_in_source()
    assert len(cells) >= 20
    missing = sorted(cells - rows)
    assert not missing, f"cells not in docs/reliability.md (run ./dev reliability): {missing}"
