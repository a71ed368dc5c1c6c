"""``weiflow status``: the runs, datasets and models the control center knows, as tables in the terminal.

It reads the center's REST API (docs/center.md) with the standard library's HTTP client, as the
runtime's :class:`~weiflow.tracking.CenterTracker` posts to it: the command works wherever the core
is installed, against a center on another machine, without the ``[center]`` extra. The table
library (rich) is imported only when tables are drawn, so importing this module costs nothing.

Every request shares one deadline (``timeout_s``): a center that accepts connections and never
answers costs at most that long, never a hang.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from weiflow.errors import ConfigError, WeiflowError

if TYPE_CHECKING:  # only for annotations: rich loads when tables are drawn
    from rich.console import Console
    from rich.table import Table

__all__ = ["DATASET_STATE_ORDER", "SECTIONS", "CenterClient", "CenterUnavailable", "collect", "print_status"]

SECTIONS = ("runs", "datasets", "models")
# The order datasets are listed in: what is about to be deleted first, then what is live, then the rest.
DATASET_STATE_ORDER = ("pending-deletion", "live", "deleting", "deleted")
MAX_PAGE = 500  # the API's largest `limit` (weiflow.center.repository.MAX_PAGE; not imported: the core stays apart)
MAX_ANSWER_BYTES = 32 << 20  # a JSON answer larger than this is not a center's list page
_TOKEN_FIX = (
    "set center_token in weiflow.toml or WEIFLOW_CENTER_TOKEN, or pass --token, to an API token of the center "
    "(any role reads: 'weiflow center user NAME --role viewer' prints one)"
)
_URL_FIX = 'set center_url in weiflow.toml ([weiflow] center_url = "http://127.0.0.1:8765") or WEIFLOW_CENTER_URL'


class CenterUnavailable(WeiflowError):
    """The control center did not answer, or not as a control center does."""


class CenterClient:
    """GETs against the center's API at ``url`` with ``token``, all within ``timeout_s`` of the first request."""

    def __init__(self, url: str, token: str | None, *, timeout_s: float = 5.0) -> None:
        try:
            host = urllib.parse.urlsplit(url).hostname
        except ValueError as exc:
            raise ConfigError(f"control center URL {url!r} is not a valid URL: {exc}") from None
        if not url.startswith(("http://", "https://")) or not host:
            raise ConfigError(f"control center URL must be http://HOST[:PORT] or https://..., got {url!r}")
        if not 0 < timeout_s < math.inf:
            raise ConfigError(f"--timeout must be a number of seconds above 0, got {timeout_s:g}")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self._deadline: float | None = None  # set by the first request: one budget for the whole command

    def _remaining_s(self) -> float:
        if self._deadline is None:
            self._deadline = time.monotonic() + self.timeout_s
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise self._no_answer()
        return remaining

    def _no_answer(self) -> CenterUnavailable:
        return CenterUnavailable(
            f"the control center at {self.url} did not answer within {self.timeout_s:g} s: is 'weiflow center serve' "
            f"running there and the address right? ({_URL_FIX}, or pass --center; --timeout waits longer)"
        )

    def get(self, path: str, **query: object) -> Any:
        """The JSON answer to ``GET {url}{path}?{query}`` (None values left out)."""
        params = urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        address = f"{self.url}{path}" + (f"?{params}" if params else "")
        request = urllib.request.Request(address, headers={"Accept": "application/json"})
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self._remaining_s()) as response:
                body = self._read(response)
        except urllib.error.HTTPError as exc:
            raise self._refusal(exc.code, exc.read(2000).decode(errors="replace"), path) from None
        except TimeoutError:
            raise self._no_answer() from None
        except (http.client.InvalidURL, ValueError) as exc:  # a space or control character, a bad IPv6 address
            raise ConfigError(f"control center URL {self.url!r} is not a valid URL: {exc}") from None
        except http.client.HTTPException as exc:  # a broken status line or a body cut short: not a center's answer
            raise CenterUnavailable(f"{address} did not answer as an HTTP server does ({exc!r}); {_URL_FIX}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, TimeoutError):
                raise self._no_answer() from None
            raise CenterUnavailable(
                f"the control center at {self.url} is not reachable ({reason}): start it with 'weiflow center "
                f"serve', or point to where it runs ({_URL_FIX}, or pass --center)"
            ) from None
        try:
            return json.loads(body)
        except ValueError:
            raise CenterUnavailable(
                f"{address} did not answer JSON: is {self.url} the control center's address? ({_URL_FIX})"
            ) from None

    def _read(self, response: Any) -> bytes:
        """The body, in chunks, so a center that trickles it still stops at the deadline and the size cap."""
        chunks: list[bytes] = []
        size = 0
        while chunk := response.read(1 << 16):
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                raise CenterUnavailable(f"{self.url} answered more than {MAX_ANSWER_BYTES >> 20} MiB: not a center")
            chunks.append(chunk)
            self._remaining_s()
        return b"".join(chunks)

    def _refusal(self, status: int, body: str, path: str) -> WeiflowError:
        detail = body
        with contextlib.suppress(ValueError, AttributeError):  # FastAPI's {"detail": ...}, else the text as it is
            detail = str(json.loads(body).get("detail", body))
        detail = " ".join(detail.split())[:300]
        if status == 401:
            said = "no API token was sent" if not self.token else f"it refused the token ({detail})"
            return ConfigError(f"the control center at {self.url} answered 401: {said}; {_TOKEN_FIX}")
        if status == 404:
            return CenterUnavailable(
                f"{self.url}{path} answered 404: is {self.url} the control center's address? ({_URL_FIX})"
            )
        return CenterUnavailable(f"the control center at {self.url} answered {status} to GET {path}: {detail}")

    # ---- the lists `weiflow status` shows --------------------------------------------------------------------

    def _pages(self, path: str, limit: int, **query: object) -> list[dict[str, Any]]:
        """Up to ``limit`` items of a keyset-paginated list, newest first, a page of at most MAX_PAGE at a time."""
        items: list[dict[str, Any]] = []
        before: int | None = None
        while len(items) < limit:
            page = self.get(path, limit=min(limit - len(items), MAX_PAGE), before=before, **query)
            if not isinstance(page, dict) or not isinstance(page.get("items"), list):
                raise CenterUnavailable(f"{self.url}{path} answered something that is not a page of items")
            items.extend(page["items"])
            before = page.get("next")
            if before is None or not page["items"]:  # an empty page that says "more" would loop for ever
                break
        return items[:limit]

    def runs(self, limit: int) -> list[dict[str, Any]]:
        """The ``limit`` most recent runs, as ``GET /api/v1/runs`` gives them."""
        return self._pages("/api/v1/runs", limit)

    def datasets(self, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` datasets, newest first within each state, states in DATASET_STATE_ORDER."""
        found: list[dict[str, Any]] = []
        for state in DATASET_STATE_ORDER:
            if len(found) >= limit:
                break
            found += self._pages("/api/v1/datasets", limit - len(found), state=state)
        return found

    def models(self) -> list[dict[str, Any]]:
        """Every model with its routing and versions, as ``GET /api/v1/models`` gives them."""
        models = self.get("/api/v1/models")
        if not isinstance(models, list):
            raise CenterUnavailable(f"{self.url}/api/v1/models answered something that is not a list of models")
        return models

    def me(self) -> dict[str, Any]:
        answer = self.get("/api/v1/me")
        return answer if isinstance(answer, dict) else {}


def collect(client: CenterClient, sections: Sequence[str], *, runs: int, datasets: int) -> dict[str, Any]:
    """The API's answers for ``sections``, keyed by section: what ``--json`` prints and the tables show."""
    fetch: dict[str, Callable[[], list[dict[str, Any]]]] = {
        "runs": lambda: client.runs(runs),
        "datasets": lambda: client.datasets(datasets),
        "models": client.models,
    }
    return {section: fetch[section]() for section in sections}


# ---- tables ---------------------------------------------------------------------------------------------------

_STATE_STYLES = {
    "succeeded": "green",
    "live": "green",
    "running": "yellow",
    "queued": "cyan",
    "pending-deletion": "yellow",
    "deleting": "magenta",
    "failed": "red",
    "deleted": "dim",
}


def _when(iso: str | None) -> str:
    """``2026-12-02 19:28`` from the API's ISO time (UTC everywhere in the center)."""
    if not iso:
        return "—"
    try:
        return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return iso


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def _size(size_bytes: int | None) -> str:
    if size_bytes is None:
        return "—"
    value = float(size_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _version_key(version: str) -> tuple[int, str]:
    # Versions are integers in the repository; the center stores them as text, so "10" must sort after "9".
    return (int(version), "") if version.isdigit() else (-1, version)


def live_split(traffic: Mapping[str, float]) -> str:
    """``v2 10% · v1 90%``: each live version's share of requests, newest first."""
    return " · ".join(f"v{v} {traffic[v]:g}%" for v in sorted(traffic, key=_version_key, reverse=True)) or "—"


def labels_text(labels: Mapping[str, int]) -> str:
    """``stable v1 · canary v2``: the routing labels, the two WeiFlow moves traffic by first."""
    first = [name for name in ("stable", "canary") if name in labels]
    names = first + sorted(name for name in labels if name not in first)
    return " · ".join(f"{name} v{labels[name]}" for name in names) or "—"


def latest_metrics(versions: Sequence[Mapping[str, Any]]) -> str:
    """``v2: auc 0.7213 · logloss 0.4518``: what the newest version's evaluate module measured."""
    if not versions:
        return "—"
    newest = max(versions, key=lambda v: _version_key(str(v.get("version", ""))))
    metrics: Mapping[str, float] = newest.get("metrics") or {}
    shown = " · ".join(f"{name} {value:.4g}" for name, value in sorted(metrics.items())) or "no metrics"
    return f"v{newest.get('version')}: {shown}"


def _versions_count(versions: Sequence[Mapping[str, Any]]) -> str:
    removed = sum(1 for v in versions if v.get("removed_at"))
    return f"{len(versions)} ({removed} removed)" if removed else str(len(versions))


def _dataset_state(row: Mapping[str, Any]) -> str:
    state = str(row.get("state"))
    if state == "pending-deletion" and row.get("delete_after"):
        return f"{state} after {_when(row['delete_after'])}"
    return state


def _retention(row: Mapping[str, Any]) -> str:
    policy = row.get("retention") or "—"
    return f"{policy} · pinned" if row.get("pinned") else str(policy)


@dataclass(frozen=True)
class _Section:
    title: str
    columns: tuple[str, ...]
    cells: Callable[[Mapping[str, Any]], tuple[str, ...]]
    state_column: int | None  # the column coloured by state
    empty: str


_RUNS = _Section(
    "Recent runs",
    ("pipeline", "run id", "state", "started (UTC)", "duration"),
    lambda r: (r["pipeline"], r["run_id"], r["state"], _when(r.get("started_at")), _duration(r.get("duration_s"))),
    2,
    "no runs yet: runs reach the center when center_url is set where they run",
)
_DATASETS = _Section(
    "Datasets",
    ("id", "name", "owner", "state", "size", "retention", "last access (UTC)"),
    lambda d: (
        d["id"],  # one name has a copy per day or run; the id tells them apart (and is the console's /datasets/ID)
        d["name"],
        d.get("owner") or "—",
        _dataset_state(d),
        _size(d.get("size_bytes")),
        _retention(d),
        _when(d["last_access"]) if d.get("last_access") else "never read",
    ),
    3,
    "no datasets yet",
)
_MODELS = _Section(
    "Models",
    ("name", "live split", "labels", "versions", "latest version's metrics"),
    lambda m: (
        m["name"],
        live_split(m.get("traffic") or {}),
        labels_text(m.get("labels") or {}),
        _versions_count(m.get("versions") or []),
        latest_metrics(m.get("versions") or []),
    ),
    None,
    "no models yet: a pipeline's deploy node publishes them",
)
_SECTIONS = {"runs": _RUNS, "datasets": _DATASETS, "models": _MODELS}


def _table(section: _Section, rows: Iterable[Mapping[str, Any]]) -> Table:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(title=section.title, title_justify="left", box=box.SIMPLE_HEAD, header_style="bold")
    for name in section.columns:
        table.add_column(name, overflow="fold")
    for row in rows:
        cells = section.cells(row)
        # Text, never markup: a pipeline or dataset named "[red]x" is shown as it is.
        texts = [Text(str(cell)) for cell in cells]
        if section.state_column is not None:
            state = str(row.get("state"))
            texts[section.state_column].stylize(_STATE_STYLES.get(state, ""))
        table.add_row(*texts)
    return table


def _console(stream: TextIO) -> Console:
    from rich.console import Console

    if stream.isatty():
        return Console(file=stream, highlight=False)
    # Piped or redirected: no colour codes, and lines as wide as the rows (not folded at 80 columns),
    # so grep and less see one row per line. COLUMNS, when set, still wins.
    width = int(os.environ.get("COLUMNS") or 0) or 200
    return Console(file=stream, highlight=False, color_system=None, width=width, force_terminal=False)


def print_status(
    answers: Mapping[str, list[dict[str, Any]]],
    *,
    center: str,
    who: Mapping[str, Any] | None = None,
    limits: Mapping[str, int] | None = None,
    stream: TextIO | None = None,
) -> None:
    """Draw ``answers`` (from :func:`collect`) as one table per section on ``stream`` (default stdout)."""
    console = _console(stream or sys.stdout)
    heading = f"Control center {center}"
    if who and who.get("username"):
        heading += f" (as {who['username']}, {who.get('role', '?')})"
    console.print(heading, markup=False)
    for name, rows in answers.items():
        section = _SECTIONS[name]
        if not rows:
            console.print(f"\n{section.title}: {section.empty}", markup=False)
            continue
        console.print()
        console.print(_table(section, rows))
        limit = (limits or {}).get(name)
        if limit is not None and len(rows) >= limit:
            console.print(f"  showing {limit}; more with --{name} N, or in the console: {center}/{name}", markup=False)
