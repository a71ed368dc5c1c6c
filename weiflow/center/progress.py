"""Training curves: the progress points a run's modules reported, as the console and the API show them.

Storage is bounded at ingestion (:data:`MAX_POINTS_PER_MODULE`); what is read back is bounded again per
line (:data:`weiflow.curves.MAX_POINTS_PER_SERIES`), so a chart or an API answer stays small however long a run trained.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from weiflow.center.models import ProgressPoint
from weiflow.curves import downsample

__all__ = ["MAX_POINTS_PER_MODULE", "curve_summaries", "run_progress"]

# A training run reports 80 to 200 points (one per scheduled call of about a hundred steps, per worker);
# 5,000 per (run, node, module), across its attempts, leaves room for long runs and retries while a
# client that floods one run cannot fill the database: points past it are dropped at ingestion. (Batches applied
# at the same moment by two center processes each count before the other commits, so the bound can be passed by
# at most those batches' points: still bounded.)
MAX_POINTS_PER_MODULE = 5_000


def run_progress(
    session: Session, run_pk: int, *, node: str | None = None, module: str | None = None
) -> list[dict[str, Any]]:
    """Each module's curve in run ``run_pk`` (or only ``node``/``module``'s), in order of first report.

    Only the latest attempt that reported points: a retried training starts its steps again (or from
    a checkpoint), so drawing attempts together would fold the line back on itself. Each curve has
    ``node``, ``module``, ``attempt``, ``steps`` (the target) and ``workers``: one series per worker,
    ``{"worker", "points": [{"step", "loss", "auc", "examples_per_s", "seconds"}]}``, by step.
    """
    query = select(ProgressPoint).where(ProgressPoint.run_pk == run_pk)
    if node is not None:
        query = query.where(ProgressPoint.node == node)
    if module is not None:
        query = query.where(ProgressPoint.module == module)
    by_module: dict[tuple[str, str], list[ProgressPoint]] = {}
    for point in session.scalars(query.order_by(ProgressPoint.id)):
        by_module.setdefault((point.node, point.module), []).append(point)
    curves = []
    for (node_id, module_id), points in by_module.items():
        attempt = max(p.attempt for p in points)
        latest = [p for p in points if p.attempt == attempt]
        series: dict[int, list[ProgressPoint]] = {}
        for point in sorted(latest, key=lambda p: (p.step, p.id)):
            series.setdefault(point.worker, []).append(point)
        curves.append(
            {
                "node": node_id,
                "module": module_id,
                "attempt": attempt,
                "steps": latest[-1].steps,
                "workers": [
                    {
                        "worker": worker,
                        "points": [
                            {
                                "step": p.step,
                                "loss": p.loss,
                                "auc": p.auc,
                                "examples_per_s": p.examples_per_s,
                                "seconds": p.seconds,
                            }
                            for p in downsample(series[worker])
                        ],
                    }
                    for worker in sorted(series)
                ],
            }
        )
    return curves


def curve_summaries(session: Session, run_pk: int) -> list[dict[str, Any]]:
    """The modules of run ``run_pk`` that reported progress, in order of first report, without their points:
    ``node``, ``module``, ``points`` (stored, all attempts), ``attempt`` (the latest) and ``step`` (the furthest)."""
    rows = session.execute(
        select(
            ProgressPoint.node,
            ProgressPoint.module,
            func.count(ProgressPoint.id),
            func.max(ProgressPoint.attempt),
            func.max(ProgressPoint.step),
        )
        .where(ProgressPoint.run_pk == run_pk)
        .group_by(ProgressPoint.node, ProgressPoint.module)
        .order_by(func.min(ProgressPoint.id))
    )
    return [
        {"node": node, "module": module, "points": points, "attempt": attempt, "step": step}
        for node, module, points, attempt, step in rows
    ]
