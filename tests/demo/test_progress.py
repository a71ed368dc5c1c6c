"""The demo's progress display: training steps with loss, AUC and speed, on a terminal and in a log."""

from __future__ import annotations

import io

from rich.console import Console

from weiflow.demo.run import _Progress
from weiflow.tracking import Event, EventKind


def progress_events(steps: int, calls: int) -> list[Event]:
    events = [Event(EventKind.MODULE_STARTED, "r1", "feed_ctr", node="train", module="fit")]
    for i in range(1, calls + 1):
        point = {
            "step": steps * i // calls,
            "steps": steps,
            "worker": i % 2,
            "loss": 0.4 - i / 1000,
            "auc": 0.7 + i / 1000,
            "examples_per_s": 50_000.0 + i,
            "seconds": float(i),
        }
        events.append(Event(EventKind.PROGRESS, "r1", "feed_ctr", node="train", module="fit", detail=point))
    events.append(Event(EventKind.MODULE_SUCCEEDED, "r1", "feed_ctr", node="train", module="fit"))
    return events


def shown(terminal: bool, quiet: bool = False) -> str:
    out = io.StringIO()
    console = Console(file=out, force_terminal=terminal, width=120, color_system=None)
    progress = _Progress(console, quiet)
    for event in progress_events(8000, 80):
        progress.emit(event)
    return out.getvalue()


def test_in_a_log_a_line_at_every_tenth_of_the_steps() -> None:
    lines = [line for line in shown(terminal=False).splitlines() if "train/fit: step" in line]
    # The first point (training has started), then one per tenth.
    assert [line.split("step ")[1].split("/")[0] for line in lines] == ["100"] + [f"{800 * k:,}" for k in range(1, 11)]
    assert lines[-1].strip() == "train/fit: step 8,000/8,000  loss 0.3200  AUC 0.780  50,080 examples/s"
    assert "train/fit ok" in shown(terminal=False)


def test_on_a_terminal_a_bar_that_ends_at_the_target() -> None:
    text = shown(terminal=True)
    assert "8000/8000" in text and "loss 0.3200" in text and "AUC 0.780" in text
    assert "train/fit: step" not in text  # the bar replaces the lines


def test_quiet_shows_nothing() -> None:
    assert shown(terminal=False, quiet=True) == "" and shown(terminal=True, quiet=True) == ""
