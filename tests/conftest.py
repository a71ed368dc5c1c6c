"""Shared fixtures. Every test runs with its own var directory and storage root."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# The fault matrix: @pytest.mark.reliability cells and --reliability-report (docs/reliability.md); and the
# search of the whole run's logs for the secrets it used.
pytest_plugins = ["tests.secrets_plugin", "tests.reliability_plugin"]

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "xml_specs"

# System tools some tests need, and the command that adds each: `./dev test` installs them with apt-get
# when it may, and otherwise prints these same commands.
SYSTEM_TOOLS = {
    "dot": "sudo apt-get install graphviz",
    "chromium": "sudo apt-get install chromium",
    "chromedriver": "sudo apt-get install chromium-driver",
}


def missing_tools(*tools: str) -> str | None:
    """A skip reason naming each of ``tools`` not on PATH and the command that adds it; None if all are there."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if not missing:
        return None
    adds = "; ".join(f"{tool} not found, add it with: {SYSTEM_TOOLS[tool]}" for tool in missing)
    return f"needs {' and '.join(tools)}: {adds}"


def needs_tools(*tools: str) -> pytest.MarkDecorator:
    """Skip the test, with :func:`missing_tools`'s reason, when any of ``tools`` is not on PATH."""
    reason = missing_tools(*tools)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def alive(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie (killed, not yet reaped by its parent or init) does not."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.fixture(autouse=True)
def isolated_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No test reads the developer's weiflow.toml or writes into the repo's var/."""
    var = tmp_path / "var"
    monkeypatch.setenv("WEIFLOW_VAR_DIR", str(var))
    monkeypatch.delenv("WEIFLOW_CONFIG", raising=False)
    monkeypatch.delenv("WEIFLOW_STORAGE", raising=False)
    monkeypatch.delenv("WEIFLOW_STORAGE_ROOTS", raising=False)
    # A developer's (or `./dev up`'s) center and Airflow must not receive the tests' events or links.
    monkeypatch.delenv("WEIFLOW_CENTER_URL", raising=False)
    monkeypatch.delenv("WEIFLOW_CENTER_TOKEN", raising=False)
    monkeypatch.delenv("WEIFLOW_AIRFLOW_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    yield var


@pytest.fixture(scope="session")
def built_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny real SavedModels over the test feature map (tests/engines/deploy/savedmodels.py), built once in a
    child process so the test process never imports TensorFlow: ``good`` (logistic) and ``nan``."""
    root = tmp_path_factory.mktemp("savedmodels")
    script = REPO / "tests" / "engines" / "deploy" / "savedmodels.py"
    proc = subprocess.run([sys.executable, str(script), str(root)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root


@pytest.fixture
def make_spec(tmp_path: Path) -> Callable[..., Path]:
    """Write a spec file; ``body`` goes inside a <pipeline name="t"> root unless it has its own."""

    def make(body: str, name: str = "spec.xml") -> Path:
        text = (
            body
            if "<pipeline" in body
            else f'<pipeline xmlns="urn:weiflow:pipeline:1" name="t">\n{body}\n</pipeline>\n'
        )
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return make


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium driven by Selenium through the system chromedriver (Selenium Manager's download fails here)."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.skip(missing_tools("chromium", "chromedriver") or "")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=chromedriver), options=options)
    driver.set_page_load_timeout(30)
    driver.implicitly_wait(15)  # a click that submits a form returns before the next page is there
    try:
        yield driver
    finally:
        driver.quit()
