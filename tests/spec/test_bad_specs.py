"""The corpus of invalid specs: each file names, in its first line, the first error it must get.

Every file in ``bad/`` starts with ``<!-- expect: LINE:COL: MESSAGE -->``; MESSAGE is the full
message of the first error-severity diagnostic, LINE:COL where it points (an element's ``<``
or the offending attribute's name).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from weiflow.dag import check_file
from weiflow.errors import Diagnostic

BAD_DIR = Path(__file__).parent / "bad"
REPO_ROOT = Path(__file__).resolve().parents[2]
BAD_FILES = sorted(BAD_DIR.glob("*.xml"))
HEADER = re.compile(r"<!-- expect: (?P<line>\d+):(?P<col>\d+): (?P<message>.+) -->")


def _expectation(path: Path) -> tuple[int, int, str]:
    first_line = path.read_text(encoding="utf-8").split("\n", 1)[0]
    match = HEADER.fullmatch(first_line)
    assert match, f"{path.name}: first line must be <!-- expect: LINE:COL: MESSAGE -->, got {first_line!r}"
    return int(match["line"]), int(match["col"]), match["message"]


def _errors(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    return [d for d in diagnostics if d.severity == "error"]


def _clean_env() -> dict[str, str]:
    """The environment without a developer's WEIFLOW_* settings (a lower size cap, say)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("WEIFLOW_") or k == "WEIFLOW_VAR_DIR"}


def test_corpus_is_large_enough() -> None:
    assert len(BAD_FILES) >= 30, f"only {len(BAD_FILES)} files in {BAD_DIR}"


@pytest.mark.parametrize("path", BAD_FILES, ids=[p.name for p in BAD_FILES])
def test_first_error_is_the_expected_one(path: Path) -> None:
    line, col, message = _expectation(path)
    errors = _errors(check_file(path))
    assert errors, f"{path.name}: no error reported"
    first = errors[0]
    assert (first.line, first.col, first.message) == (line, col, message)
    assert first.file == str(path)
    assert str(first).startswith(f"{path}:{line}:{col}: error: {message}")


def test_expectations_are_distinct() -> None:
    """Each file targets its own problem: no two files expect the same message."""
    messages = [_expectation(p)[2] for p in BAD_FILES]
    repeated = {m for m in messages if messages.count(m) > 1}
    # sql_without_query / sql_query_twice share one message on purpose (one rule, both ways).
    assert repeated <= {"module 'keep': a sql module needs its query once, as query=\"...\" or a <query> element"}, (
        repeated
    )


def test_cli_reports_every_file_in_one_pass(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "weiflow", "validate", *map(str, BAD_FILES)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_clean_env(),
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    missing = [p.name for p in BAD_FILES if p.name not in result.stdout]
    assert not missing, f"not reported: {missing}"
    for path in BAD_FILES:
        line, col, message = _expectation(path)
        assert f"{path}:{line}:{col}: error: {message}\n" in result.stdout, path.name
    assert f"{len(BAD_FILES)} file(s) checked" in result.stderr


def test_good_specs_stay_clean() -> None:
    """Control: the checker does not flag the example specs the corpus was derived from."""
    good = sorted((REPO_ROOT / "xml_specs").glob("*.xml"))
    assert good
    for path in good:
        assert _errors(check_file(path)) == [], path.name


MANY_ERRORS = """\
<pipeline xmlns="urn:weiflow:pipeline:1" name="demo" priority="urgent" schedule="@dayly">
  <datasets>
    <dataset name="events" uri="file:///data/events/${day}" external="true"/>
    <dataset name="samples" uri="${storage}/demo/samples/${ds}" retention="consumed"/>
    <dataset name="samples" uri="${storage}/demo/other/${ds}"/>
  </datasets>
  <node id="features" engine="spark">
    <module id="read" type="read" dataset="events"/>
    <module id="feats" type="features" input="read">
      <feature name="age_b" fn="piecewise" source="age" boundaries="50,18"/>
    </module>
    <module id="write" type="write" input="feats" dataset="samples"/>
  </node>
  <node id="train" engine="tensorfow">
    <module id="fit" type="train" dataset="samples" model="dnn"/>
  </node>
</pipeline>
"""


def test_independent_errors_are_all_reported_in_one_call(tmp_path: Path) -> None:
    path = tmp_path / "many.xml"
    path.write_text(MANY_ERRORS, encoding="utf-8")
    errors = _errors(check_file(path))
    found = {(d.line, d.message) for d in errors}
    expected = {
        (1, "<pipeline>: priority='urgent' is not one of high, medium, low"),
        (1, "unknown schedule preset '@dayly'"),
        (3, "uri: undefined reference ${day}"),
        (5, "duplicate dataset 'samples'"),
        (10, "feature 'age_b': boundaries must be strictly increasing, but 18 follows 50"),
        (14, "node 'train': unknown engine 'tensorfow'"),
    }
    assert expected <= found, expected - found
    assert len({d.line for d in errors}) >= 3
    assert errors == sorted(errors), "diagnostics come in file order"


@pytest.mark.parametrize("content", [b"", b"  \n\t\n"], ids=["zero-bytes", "whitespace"])
def test_empty_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.xml"
    path.write_bytes(content)
    errors = _errors(check_file(path))
    assert [(d.line, d.col, d.message) for d in errors] == [(1, 1, "spec file is empty")]
    assert str(errors[0]).startswith(f"{path}:1:1: error: spec file is empty")


def test_unreadable_path_is_a_diagnostic(tmp_path: Path) -> None:
    for path in (tmp_path / "missing.xml", tmp_path):
        errors = _errors(check_file(path))
        assert len(errors) == 1
        assert errors[0].message.startswith("cannot read spec: "), errors[0].message
        assert (errors[0].line, errors[0].col) == (1, 1)


# --- the root element and the prolog ---------------------------------------------------------

ROOT_PROBLEMS = [
    ('<workflow xmlns="urn:weiflow:pipeline:1" name="demo"/>', "root element is <workflow>, expected <pipeline>"),
    (
        '<pipeline name="demo"/>',
        "root element <pipeline> is in namespace '', not 'urn:weiflow:pipeline:1'",
    ),
    (
        '<pipeline xmlns="urn:weiflow:pipeline:2" name="demo"/>',
        "root element <pipeline> is in namespace 'urn:weiflow:pipeline:2', not 'urn:weiflow:pipeline:1'",
    ),
    ("<!DOCTYPE pipeline>\n<pipeline/>", "DOCTYPE declarations are not allowed in WeiFlow specs"),
]


@pytest.mark.parametrize(("root", "message"), ROOT_PROBLEMS, ids=["wrong-root", "no-ns", "wrong-ns", "doctype"])
def test_root_problems_point_at_the_offending_markup(tmp_path: Path, root: str, message: str) -> None:
    path = tmp_path / "root.xml"
    path.write_text(f"<!-- a comment line -->\n\n{root}\n", encoding="utf-8")
    errors = _errors(check_file(path))
    assert [(d.line, d.col, d.message) for d in errors[:1]] == [(3, 1, message)]


PREFIXED = """\
<wf:pipeline xmlns:wf="urn:weiflow:pipeline:1" name="demo">
  <wf:datasets>
    <wf:dataset name="events" uri="file:///data/events" external="true"/>
    <wf:dataset name="clean" uri="file:///data/clean" retention="7days"/>
  </wf:datasets>
  <wf:node id="prep" engine="spark">
    <wf:module id="read" type="read" dataset="events"/>
    <wf:module id="write" type="write" input="read" dataset="clean"/>
  </wf:node>
</wf:pipeline>
"""


def test_prefixed_namespace_spec_without_schema_errors_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "prefixed.xml"
    path.write_text(PREFIXED.replace(' retention="7days"', ""), encoding="utf-8")
    assert _errors(check_file(path)) == []


def test_prefixed_namespace_spec_with_schema_error_gets_a_diagnostic(tmp_path: Path) -> None:
    path = tmp_path / "prefixed.xml"
    path.write_text(PREFIXED, encoding="utf-8")
    errors = _errors(check_file(path))
    assert [(d.line, d.col, d.message) for d in errors[:1]] == [(4, 55, "<dataset>: retention='7days' is not valid")]
