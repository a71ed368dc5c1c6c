"""No secret in any log: once the whole run is over, every log it wrote is searched for the secrets it used.

What is searched for:
- every token WeiFlow issued: API and console-session tokens all have the form ``wf_`` + 43 URL-safe
  characters (:func:`weiflow.center.repository.create_token`), so any such string in a log is a leak,
  whichever test or server made it;
- every other secret a test registers with :func:`register_secret` (the console password the center's
  tests log in with, Airflow's admin password and the JWT its API handed out).

Where: every log-like file (``*.log``, ``*.jsonl``, ``*.out``, ``*.err``, and any file in a ``logs``
folder: Airflow's task logs) under pytest's temporary directory and under each folder registered with
:func:`register_log_root`, once the session is over; and, as each test ends, what pytest captured of its
stderr and its logging. Captured stdout is not searched: ``weiflow center user`` prints the token it
creates there, once, by design.

A leak fails the run (exit status 1) and names the file or test, the line and which secret, never the
secret itself. The summary says how much was searched, so a run that found nothing to search shows.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["PLUGIN", "Leak", "Search", "find_leaks", "log_files", "register_log_root", "register_secret"]

# WeiFlow's tokens, and only them: "wf_" and secrets.token_urlsafe(32), not inside a longer word.
TOKEN = re.compile(rb"(?<![A-Za-z0-9_-])wf_[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")
LOG_SUFFIXES = {".log", ".jsonl", ".out", ".err"}
MAX_FILE_BYTES = 64 * 2**20  # a larger log is searched in its first 64 MiB
SECRET_MIN_LENGTH = 8  # a shorter "secret" would match by chance

_secrets: set[str] = set()
_log_roots: set[Path] = set()


def register_secret(value: str) -> None:
    """Count ``value`` among the secrets no log may hold (tokens need not be registered: all are found)."""
    if len(value) < SECRET_MIN_LENGTH:
        raise ValueError(f"a secret of {len(value)} characters would match by chance; use {SECRET_MIN_LENGTH}+")
    _secrets.add(value)


def register_log_root(path: Path) -> None:
    """Search the logs under ``path`` too (a folder outside pytest's temporary directory)."""
    _log_roots.add(path)


@dataclass(frozen=True)
class Leak:
    where: str  # a file, or a test's captured section
    line: int
    what: str  # "a WeiFlow token" or "registered secret #n": never the secret itself


def _leaks_in(data: bytes, where: str, secrets: list[bytes]) -> Iterator[Leak]:
    found = [(match.start(), "a WeiFlow token") for match in TOKEN.finditer(data)]
    for number, secret in enumerate(secrets, 1):
        start = data.find(secret)
        while start >= 0:
            found.append((start, f"registered secret #{number}"))
            start = data.find(secret, start + 1)
    for offset, what in sorted(found):
        yield Leak(where, data.count(b"\n", 0, offset) + 1, what)


def log_files(roots: Iterable[Path]) -> Iterator[Path]:
    """The log-like files under ``roots``. Links are not followed: a test may link to anything."""
    for root in roots:
        for folder, _dirs, names in os.walk(root, followlinks=False):
            in_logs = "logs" in Path(folder).parts
            for name in names:
                path = Path(folder, name)
                if (in_logs or path.suffix in LOG_SUFFIXES) and not path.is_symlink():
                    yield path


def find_leaks(files: Iterable[Path], texts: Iterable[tuple[str, str]], secrets: Iterable[str]) -> list[Leak]:
    """Every token and registered secret in ``files`` and in ``texts`` (pairs of where, text)."""
    wanted = sorted({secret.encode() for secret in secrets})
    leaks: list[Leak] = []
    for path in files:
        try:
            with path.open("rb") as file:
                data = file.read(MAX_FILE_BYTES)
        except OSError:  # gone, or made unreadable by a fault test: nothing to read is nothing leaked
            continue
        leaks.extend(_leaks_in(data, str(path), wanted))
    for where, text in texts:
        leaks.extend(_leaks_in(text.encode(errors="surrogatepass"), where, wanted))
    return leaks


class Search:
    """The plugin: searches each test's captured stderr and logging as it ends, and the files at the end."""

    def __init__(self) -> None:
        self.roots: set[Path] = set()
        self.leaks: list[Leak] = []
        self.sections = 0
        self.files = 0
        self.megabytes = 0.0

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # A report's sections include those of the test's earlier phases: each is searched in its own phase.
        texts = [
            (f"{report.nodeid} ({title})", text)
            for title, text in report.sections
            if title.endswith(f" {report.when}") and "stdout" not in title
        ]
        self.sections += len(texts)
        self.leaks += find_leaks((), texts, _secrets)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        files = sorted(set(log_files(root for root in self.roots | _log_roots if root.is_dir())))
        self.files = len(files)
        self.megabytes = sum(min(path.stat().st_size, MAX_FILE_BYTES) for path in files if path.exists()) / 2**20
        self.leaks += find_leaks(files, (), _secrets)
        if self.leaks and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        searched = (
            f"log files: {self.files} ({self.megabytes:.1f} MiB), captured sections: {self.sections}; "
            f"searched for WeiFlow tokens and {len(_secrets)} registered secrets"
        )
        if not self.leaks:
            terminalreporter.write_line(f"secrets in logs: none. {searched}")
            return
        terminalreporter.section("secrets in logs", red=True)
        terminalreporter.write_line(f"found: {len(self.leaks)}. {searched}:")
        for leak in self.leaks[:50]:
            terminalreporter.write_line(f"  {leak.where}:{leak.line}: {leak.what}")


PLUGIN = "weiflow-secrets-in-logs"


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(Search(), PLUGIN)


@pytest.fixture(scope="session", autouse=True)
def _search_this_runs_temporary_files(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> None:
    search = pytestconfig.pluginmanager.get_plugin(PLUGIN)
    assert isinstance(search, Search)
    search.roots.add(tmp_path_factory.getbasetemp())
