"""Training curves: loss and AUC by step, one line per worker, drawn with matplotlib as PNG or SVG.

The points are module.progress details (``weiflow.tracking.PROGRESS_FIELDS``): a training engine
appends them to a JSON-lines file while it trains and reports each as an event. The TensorFlow
engine draws the PNG kept beside the model; the console draws the same picture from the events.
matplotlib is imported only here, and only when a curve is drawn.
"""

from __future__ import annotations

import io
import json
import math
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

__all__ = ["MAX_POINTS_PER_SERIES", "binned_auc", "downsample", "draw_curve", "read_progress"]

# More points than a figure a few hundred pixels wide can show: a longer series keeps this many, evenly spread.
MAX_POINTS_PER_SERIES = 500
T = TypeVar("T")
# matplotlib keeps process-wide state (font caches, the rcParams it reads while drawing) and does not
# promise thread safety; a curve takes a fraction of a second, so one is drawn at a time.
_DRAWING = threading.Lock()
_DOCTYPE = re.compile(rb"<!DOCTYPE[^>]*>\s*")


def read_progress(path: str | Path) -> list[dict[str, Any]]:
    """The points of a progress file; a line cut short (the writer was killed mid-line) is skipped."""
    points = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        try:
            point = json.loads(line)
        except ValueError:
            continue
        if isinstance(point, dict) and isinstance(point.get("step"), int):
            points.append(point)
    return points


def binned_auc(positive: Any, negative: Any) -> float | None:
    """The ROC AUC of predictions counted into ascending bins by class; ties within a bin count one half.

    None when either class is absent (the AUC is undefined there).
    """
    pos, neg = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    pos_total, neg_total = float(pos.sum()), float(neg.sum())
    if pos_total <= 0 or neg_total <= 0:
        return None
    negatives_below = np.cumsum(neg) - neg
    return float(np.sum(pos * (negatives_below + neg / 2)) / (pos_total * neg_total))


def downsample(items: Sequence[T], limit: int = MAX_POINTS_PER_SERIES) -> list[T]:
    """At most ``limit`` of ``items``, evenly spread, always keeping the first and the last (the one people
    look for): more points than a chart's width in pixels draw nothing more."""
    if len(items) <= limit:
        return list(items)
    if limit < 2:
        return list(items[-limit:]) if limit > 0 else []
    last = len(items) - 1
    return [items[round(i * last / (limit - 1))] for i in range(limit)]


def _series(points: Iterable[Mapping[str, Any]], field: str) -> dict[int, tuple[list[int], list[float]]]:
    """``{worker: (steps, values)}`` of the finite values of ``field``, in step order, thinned to the cap."""
    by_worker: dict[int, list[tuple[int, float]]] = {}
    for point in points:
        value = point.get(field)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            by_worker.setdefault(int(point.get("worker", 0)), []).append((int(point["step"]), float(value)))
    series = {}
    for worker, pairs in sorted(by_worker.items()):
        kept = downsample(sorted(pairs))
        series[worker] = ([s for s, _ in kept], [v for _, v in kept])
    return series


def draw_curve(points: Sequence[Mapping[str, Any]], *, title: str, image_format: str = "png") -> bytes:
    """Loss (top) and AUC (bottom) by step, a line per worker, as ``image_format`` ("png" or "svg") bytes.

    Each worker keeps one colour in both panels; its lines are groups with ids ``worker-<n>-loss``
    and ``worker-<n>-auc`` in the SVG. The AUC panel is left out when no point has an AUC. Drawn on
    a :class:`matplotlib.figure.Figure`, never pyplot (whose global figure manager is not safe in a
    server's threads), one picture at a time. The only text is ``title`` (shown as it is: no TeX,
    matplotlib escapes it) and worker numbers; the SVG has no scripts and no DOCTYPE.
    """
    if image_format not in ("png", "svg"):
        raise ValueError(f"image_format must be png or svg, not {image_format!r}")
    from matplotlib.figure import Figure

    loss, auc = _series(points, "loss"), _series(points, "auc")
    figure = Figure(figsize=(7.0, 5.0 if auc else 3.2), dpi=100, layout="constrained")
    if auc:
        loss_axes, auc_axes = figure.subplots(2, 1, sharex=True)
        panels = [(loss_axes, loss, "loss", "training loss"), (auc_axes, auc, "auc", "training AUC")]
    else:
        loss_axes = figure.subplots(1, 1)
        panels = [(loss_axes, loss, "loss", "training loss")]
    workers = sorted({*loss, *auc})
    for axes, series, key, label in panels:
        for worker, (steps, values) in series.items():
            color = f"C{workers.index(worker) % 10}"
            axes.plot(steps, values, color=color, linewidth=1.2, label=f"worker {worker}", gid=f"worker-{worker}-{key}")
        axes.set_ylabel(label)
        axes.grid(True, alpha=0.3)
    if loss:
        loss_axes.legend(loc="best", fontsize="small", frameon=False)
    else:
        loss_axes.text(0.5, 0.5, "no points", ha="center", va="center", transform=loss_axes.transAxes, color="grey")
    panels[-1][0].set_xlabel("step")
    figure.suptitle(title, parse_math=False)
    out = io.BytesIO()
    # No creation date or software tag: the same points give the same bytes.
    metadata: dict[str, Any] = {"Date": None} if image_format == "svg" else {"Software": None}
    with _DRAWING:
        figure.savefig(out, format=image_format, metadata=metadata)
    if image_format == "svg":
        # The DOCTYPE only names an external DTD, which nothing needs and a careless parser might fetch.
        return _DOCTYPE.sub(b"", out.getvalue(), count=1)
    return out.getvalue()
