"""Where a run's events go, from the settings: the run log, and the control center through its spool.

One place for every process that reports a run (``weiflow run``, ``weiflow run-node``, WeiFlow's
Airflow listener in the scheduler), so that they all write the same run log and the same spool.
"""

from __future__ import annotations

import threading
from pathlib import Path

from weiflow.config import Settings
from weiflow.errors import ConfigError
from weiflow.tracking import CenterTracker, FanoutTracker, JsonlTracker, Tracker, run_log_path

__all__ = ["center_trackers", "run_tracker"]

_shared: dict[tuple[str, Path, str | None], CenterTracker] = {}
_shared_lock = threading.Lock()


def _center(settings: Settings, background: bool) -> CenterTracker | None:
    if not settings.center_url:
        return None
    if not background:
        return CenterTracker(settings.center_url, settings.spool_dir, token=settings.center_token)
    # A long-lived process reports many runs: one courier thread per spool, and one memory of
    # whether the center is down, rather than one per run.
    key = (settings.center_url, settings.spool_dir, settings.center_token)
    with _shared_lock:
        tracker = _shared.get(key)
        if tracker is None:
            tracker = _shared[key] = CenterTracker(
                settings.center_url, settings.spool_dir, token=settings.center_token, background=True
            )
        return tracker


def run_tracker(settings: Settings, pipeline: str, run_id: str, *, background: bool = False) -> tuple[Tracker, Path]:
    """The run log of ``run_id`` (and its path), plus the center when ``center_url`` is set.

    ``background=True`` never waits for the center: events are spooled and a daemon thread
    delivers them (for a host process such as Airflow's scheduler).
    """
    path = run_log_path(settings.runs_dir, pipeline, run_id)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the run log directory {path.parent} (var_dir): {exc.strerror or exc}"
        ) from None
    tracker: Tracker = JsonlTracker(path)
    center = _center(settings, background)
    if center is not None:
        # The run log stays the local record; the center gets the same events through its spool.
        tracker = FanoutTracker(tracker, center)
    return tracker, path


def center_trackers(tracker: Tracker) -> list[CenterTracker]:
    """The center trackers among ``tracker`` (itself or the members of a fan-out)."""
    members = tracker.trackers if isinstance(tracker, FanoutTracker) else (tracker,)
    return [member for member in members if isinstance(member, CenterTracker)]
