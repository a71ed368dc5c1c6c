"""A module's training curve as SVG: loss and AUC by step, one line per worker, drawn with matplotlib.

The console serves it as an image of its own (``<img>``), so matplotlib's stylesheet and ids never
mix with the page's. Only the object-oriented API (:class:`~matplotlib.figure.Figure` with the SVG
canvas), never pyplot, whose global figure manager is not safe across the server's threads.
Matplotlib is imported on first use: a center that never draws a curve never loads it.

Nothing in the SVG comes from outside but numbers and three labels: node and module ids, shown
only through :func:`label` (a fixed alphabet), and worker numbers. Matplotlib escapes text as
well and writes no scripts; mathtext is off, so a ``$`` in an id is a dollar sign, not TeX.
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Mapping
from typing import Any

__all__ = ["label", "render_curve_svg"]

# Matplotlib keeps process-wide state (font caches, rcParams it reads while drawing) and does not promise
# thread safety; drawing one curve takes a fraction of a second, so curves are drawn one at a time.
_DRAWING = threading.Lock()
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")
_DOCTYPE = re.compile(rb"<!DOCTYPE[^>]*>\s*")


def label(value: str, limit: int = 60) -> str:
    """``value`` for a chart's text: spec ids' own alphabet (others become '?'), at most ``limit`` characters."""
    text = _UNSAFE.sub("?", value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_curve_svg(curve: Mapping[str, Any]) -> bytes:
    """The SVG of one curve from :func:`weiflow.center.progress.run_progress` (already downsampled).

    Each worker's lines are groups with ids ``worker-<n>-loss`` and ``worker-<n>-auc``; the AUC panel
    is left out when no point has an AUC.
    """
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure

    workers = curve["workers"]
    with_auc = any(p["auc"] is not None for series in workers for p in series["points"])
    figure = Figure(figsize=(8, 5.2 if with_auc else 3.4), layout="constrained")
    FigureCanvasSVG(figure)
    # (axes, the point's key, the axis label): the AUC panel only when there is an AUC to draw.
    if with_auc:
        loss_axes, auc_axes = figure.subplots(2, 1, sharex=True)
        panels = [(loss_axes, "loss", "loss"), (auc_axes, "auc", "AUC")]
    else:
        loss_axes = figure.subplots(1, 1)
        panels = [(loss_axes, "loss", "loss")]
    for index, series in enumerate(workers):
        worker = int(series["worker"])
        for axes, key, _ in panels:
            measured = [p for p in series["points"] if p[key] is not None]
            if measured:
                axes.plot(
                    [p["step"] for p in measured],
                    [p[key] for p in measured],
                    color=f"C{index % 10}",  # a worker has the same colour in both panels
                    linewidth=1.4,
                    label=f"worker {worker}",
                    gid=f"worker-{worker}-{key}",
                )
    for axes, _, name in panels:
        axes.set_ylabel(name)
        axes.grid(True, alpha=0.3)
    loss_axes.legend(loc="upper right", fontsize="small", frameon=False)
    panels[-1][0].set_xlabel("step")
    title = (
        f"{label(str(curve['node']))} · {label(str(curve['module']))}: training curve (attempt {int(curve['attempt'])})"
    )
    figure.suptitle(title, fontsize="medium", parse_math=False)
    buffer = io.BytesIO()
    with _DRAWING:
        # No date in the metadata: the same points give the same bytes.
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    # The DOCTYPE only names an external DTD, which nothing needs and a careless parser might fetch.
    return _DOCTYPE.sub(b"", buffer.getvalue(), count=1)
