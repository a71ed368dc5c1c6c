"""The fault matrix as data: tests mark their cell, this plugin turns a run into docs/reliability.md.

A test that proves WeiFlow survives a fault or refuses a bad input says which cell of the matrix
it is::

    @pytest.mark.reliability(
        area="kill",                       # one of AREAS
        component="Spark run-node",        # what is hit
        fault="SIGKILL mid-write",         # what happens to it
        proves="no dataset looks complete; the rerun writes it whole",  # the check that nothing was lost
    )

``pytest --reliability-report=docs/reliability.md`` (what ``./dev reliability`` runs, over every
marked test) writes the report: per cell the number of cases (parametrized tests count each case),
their outcome, what the check proves, and the tests. ``WEIFLOW_RELIABILITY_LONG=1`` makes tests
that scale (interleavings tried, load duration) run their long version; :func:`long_run` says which.
"""

from __future__ import annotations

import ast
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests import secrets_plugin

__all__ = ["AREAS", "long_run"]

# The report's sections, in order: an unknown area is a mistake in the marker.
AREAS = {
    "kill": "Killed mid-work",
    "retry": "No duplicate work on retry",
    "dependency": "Dependencies failing under a run",
    "retention": "Retention under concurrency",
    "input": "Bad input",
    "access": "Access",
    "load": "Load",
}
FIELDS = ("area", "component", "fault", "proves")
LONG_ENV = "WEIFLOW_RELIABILITY_LONG"
TESTS = Path(__file__).resolve().parent
# (component, fault) of the cell the search of the run's logs for secrets fills (tests/secrets_plugin.py).
SECRETS_CELL = ("every log of the test run", "a token or password written to a log")


def long_run() -> bool:
    """Whether this run is the long one (``./dev reliability``), for tests that scale their effort."""
    return os.environ.get(LONG_ENV) == "1"


@dataclass
class _Cell:
    area: str
    component: str
    fault: str
    proves: str
    tests: set[str] = field(default_factory=set)
    outcomes: dict[str, str] = field(default_factory=dict)  # nodeid -> passed | failed | skipped
    seconds: float = 0.0
    run_at: str = ""  # when its cases last ran (UTC), and in which version
    version: str = ""

    def key(self) -> str:
        return " | ".join((self.area, self.component, self.fault))

    def to_json(self) -> dict[str, Any]:
        return {
            "area": self.area,
            "component": self.component,
            "fault": self.fault,
            "proves": self.proves,
            "tests": sorted(self.tests),
            "outcomes": dict(sorted(self.outcomes.items())),
            "seconds": round(self.seconds, 1),
            "run_at": self.run_at,
            "version": self.version,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _Cell:
        return cls(
            data["area"],
            data["component"],
            data["fault"],
            data["proves"],
            set(data["tests"]),
            dict(data["outcomes"]),
            float(data["seconds"]),
            data["run_at"],
            data["version"],
        )


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--reliability-report",
        metavar="PATH",
        default=None,
        help="write the fault matrix of the reliability-marked tests that ran to PATH (markdown)",
    )


def cells_in_source() -> set[tuple[str, str]]:
    """(component, fault) of every ``@pytest.mark.reliability`` in the test files, read from their source."""
    cells = set()
    for path in TESTS.rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "reliability":
                values = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg in ("component", "fault")}
                cells.add((values["component"], values["fault"]))
    return cells


def cell_of(item: pytest.Item) -> dict[str, str] | None:
    """The marker's fields of a test, checked; None for a test outside the matrix."""
    marker = item.get_closest_marker("reliability")
    if marker is None:
        return None
    values = dict(marker.kwargs)
    missing = [name for name in FIELDS if not values.get(name)]
    if missing or marker.args:
        raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.reliability needs keywords {', '.join(FIELDS)}")
    if values["area"] not in AREAS:
        raise pytest.UsageError(f"{item.nodeid}: reliability area {values['area']!r}; areas: {', '.join(AREAS)}")
    return {name: str(values[name]) for name in FIELDS}


class _Report:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.cells: dict[tuple[str, str, str], _Cell] = {}
        self.by_test: dict[str, _Cell] = {}
        self.partial = False  # some marked tests left out (-k, -m): this run's logs are not the matrix's

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        if any(item.get_closest_marker("reliability") for item in items):
            self.partial = True

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            values = cell_of(item)
            if values is None:
                continue
            key = (values["area"], values["component"], values["fault"])
            cell = self.cells.setdefault(
                key, _Cell(values["area"], values["component"], values["fault"], values["proves"])
            )
            cell.tests.add(item.nodeid.split("[")[0])
            self.by_test[item.nodeid] = cell

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        cell = self.by_test.get(report.nodeid)
        if cell is None:
            return
        cell.seconds += report.duration
        if report.failed:
            cell.outcomes[report.nodeid] = "failed"
        elif report.skipped:
            cell.outcomes.setdefault(report.nodeid, "skipped")
        elif report.when == "call":
            cell.outcomes.setdefault(report.nodeid, "passed")

    def add_secrets_search(self, session: pytest.Session) -> None:
        """The search of every log of this run for its secrets (tests/secrets_plugin.py), as a cell of its own."""
        search = session.config.pluginmanager.get_plugin(secrets_plugin.PLUGIN)
        if not isinstance(search, secrets_plugin.Search) or not self.by_test or self.partial:
            return
        cell = _Cell(
            "access",
            *SECRETS_CELL,
            "no WeiFlow token and no registered password or JWT in any log file or captured stderr or log record "
            f"of the run (last: {search.files} files, {search.megabytes:.0f} MiB, {search.sections} sections)",
        )
        cell.tests.add("tests/secrets_plugin.py")
        cell.outcomes["the run's logs"] = "failed" if search.leaks else "passed"
        self.cells[(cell.area, cell.component, cell.fault)] = cell

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Merge this run's cells into the data beside the report (``.json``), then render it all.

        Cells this run did not touch keep their last results, with when they ran: a rerun of one
        cell (``./dev reliability -k ...``) updates its row, not the whole matrix.
        """
        self.add_secrets_search(session)
        ran = {key: cell for key, cell in ((c.key(), c) for c in self.cells.values()) if cell.outcomes}
        if not ran:
            return
        data_path = self.path.with_suffix(".json")
        known: dict[str, _Cell] = {}
        if data_path.is_file():
            known = {cell.key(): cell for cell in map(_Cell.from_json, json.loads(data_path.read_text()))}
        # A cell whose marker is gone from the tests (renamed, reworded, removed) leaves the report with it.
        current = cells_in_source() | {SECRETS_CELL} | {(cell.component, cell.fault) for cell in self.cells.values()}
        known = {key: cell for key, cell in known.items() if (cell.component, cell.fault) in current}
        stamp, version = f"{datetime.now(UTC):%Y-%m-%d %H:%M}", "long" if long_run() else "short"
        for key, cell in ran.items():
            cell.run_at, cell.version = stamp, version
            known[key] = cell
        cells = sorted(known.values(), key=lambda c: (list(AREAS).index(c.area), c.component, c.fault))
        data_path.write_text(json.dumps([c.to_json() for c in cells], indent=1) + "\n")
        # The load benches' sections (## Load: ..., bench/report.py) follow the matrix: keep them.
        previous = self.path.read_text() if self.path.is_file() else ""
        loads = previous.find("\n## Load: ")
        self.path.write_text(render(cells) + (previous[loads:] if loads >= 0 else ""))


def render(cells: list[_Cell]) -> str:
    lines = [
        "# Reliability: the fault matrix",
        "",
        "Generated by `./dev reliability` (every `@pytest.mark.reliability` test in its long version,",
        f"`{LONG_ENV}=1`, then the two load runs) from `docs/reliability.json`; do not edit by hand. Each row",
        "is a cell of the matrix: what is hit, how, how many cases were tried, how they ended, the check",
        "that proves nothing was lost, and when it last ran. Every test is also part of the ordinary test",
        "run (CI) in its short version. `./dev reliability -k NAME` reruns some cells and updates their rows.",
    ]
    grouped: dict[str, list[_Cell]] = defaultdict(list)
    for cell in cells:
        grouped[cell.area].append(cell)
    for area, title in AREAS.items():
        if area not in grouped:
            continue
        lines += [
            "",
            f"## {title}",
            "",
            "| component | fault | cases | outcome | proves | ran | tests |",
            "|---|---|---|---|---|---|---|",
        ]
        for cell in grouped[area]:
            counts: dict[str, int] = defaultdict(int)
            for outcome in cell.outcomes.values():
                counts[outcome] += 1
            outcome = ", ".join(f"{n} {name}" for name, n in sorted(counts.items())) or "not run"
            tests = "<br>".join(f"`{t}`" for t in sorted(cell.tests))
            ran = f"{cell.run_at} UTC, {cell.version}, {cell.seconds:.0f} s"
            row = (cell.component, cell.fault, str(len(cell.outcomes)), outcome, cell.proves, ran, tests)
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("--reliability-report")
    if path:
        config.pluginmanager.register(_Report(Path(path)), "weiflow-reliability-report")


def pytest_collection_modifyitems(config: pytest.Config, items: list[Any]) -> None:
    for item in items:
        cell_of(item)  # a malformed marker fails every run, not only the report's
