"""A module's training curve as SVG: loss and AUC by step, one line per worker (weiflow.curves draws it).

The console serves it as an image of its own (``<img>``), so matplotlib's stylesheet and ids never
mix with the page's. Matplotlib is imported on first use: a center that never draws a curve never
loads it.

Nothing in the SVG comes from outside but numbers and three labels: node and module ids, shown
only through :func:`label` (a fixed alphabet), and worker numbers. Matplotlib escapes text as
well and writes no scripts; mathtext is off, so a ``$`` in an id is a dollar sign, not TeX.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from weiflow.curves import draw_curve

__all__ = ["label", "render_curve_svg"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def label(value: str, limit: int = 60) -> str:
    """``value`` for a chart's text: spec ids' own alphabet (others become '?'), at most ``limit`` characters."""
    text = _UNSAFE.sub("?", value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_curve_svg(curve: Mapping[str, Any]) -> bytes:
    """The SVG of one curve from :func:`weiflow.center.progress.run_progress` (already downsampled).

    Drawn by :func:`weiflow.curves.draw_curve`, the picture the TensorFlow engine puts beside the
    model: each worker's lines are groups ``worker-<n>-loss`` and ``worker-<n>-auc``.
    """
    points = [
        {"step": p["step"], "worker": int(series["worker"]), "loss": p["loss"], "auc": p["auc"]}
        for series in curve["workers"]
        for p in series["points"]
    ]
    title = (
        f"{label(str(curve['node']))} · {label(str(curve['module']))}: training curve (attempt {int(curve['attempt'])})"
    )
    return draw_curve(points, title=title, image_format="svg")
