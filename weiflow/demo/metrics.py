"""Ranking and calibration metrics in plain NumPy: the demo must not need scikit-learn.

:func:`roc_auc` is the Mann-Whitney statistic with tied scores given their average rank, which
is what ``sklearn.metrics.roc_auc_score`` and Keras' exact AUC compute (Keras' default AUC,
with 200 thresholds, is an approximation of it).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["auc_standard_error", "log_loss", "roc_auc"]


def _labels(labels: npt.ArrayLike, size: int) -> npt.NDArray[np.bool_]:
    values = np.asarray(labels)
    if values.ndim != 1 or values.shape[0] != size:
        raise ValueError(f"labels and scores differ in shape: {values.shape} vs ({size},)")
    if values.dtype != np.bool_ and not np.isin(values, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return values.astype(np.bool_)


def roc_auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """The area under the ROC curve: the chance that a random positive outranks a random negative.

    Ties count one half (average ranks). ``ValueError`` when either class is absent, where the
    area is undefined, or when a score is NaN, which has no rank.
    """
    ranked = np.asarray(scores, dtype=np.float64)
    if ranked.ndim != 1:
        raise ValueError(f"scores must be one-dimensional, got shape {ranked.shape}")
    positive = _labels(labels, ranked.shape[0])
    if np.isnan(ranked).any():
        raise ValueError("scores contain NaN")
    positives = int(positive.sum())
    negatives = int(positive.size) - positives
    if positives == 0 or negatives == 0:
        raise ValueError(f"AUC needs both classes; got {positives} positive(s) and {negatives} negative(s)")
    # The order within a run of equal scores does not matter (the run shares one rank): no stable sort needed.
    order = np.argsort(ranked)
    ordered = ranked[order]
    # Runs of equal scores: each row of a run gets the run's average 1-based rank.
    run_starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    run_ends = np.r_[run_starts[1:], ordered.shape[0]]
    average_rank = (run_starts + run_ends + 1) / 2.0
    positives_per_run = np.add.reduceat(positive[order].astype(np.int64), run_starts)
    wins = float(np.dot(average_rank, positives_per_run)) - positives * (positives + 1) / 2.0
    return wins / (positives * negatives)


def auc_standard_error(auc: float, positives: int, negatives: int) -> float:
    """Hanley & McNeil's (1982) standard error of an AUC measured on this many positives and negatives.

    How far the AUC of the same scorer moves between random samples of that size: the margin
    within which a model's holdout AUC and the Bayes AUC of other rows cannot be told apart.
    """
    if positives <= 0 or negatives <= 0:
        raise ValueError(f"needs both classes; got {positives} positive(s) and {negatives} negative(s)")
    q1 = auc / (2.0 - auc)
    q2 = 2.0 * auc * auc / (1.0 + auc)
    variance = (auc * (1.0 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)) / (
        positives * negatives
    )
    return math.sqrt(max(variance, 0.0))


def log_loss(labels: npt.ArrayLike, probabilities: npt.ArrayLike, *, eps: float = 1e-15) -> float:
    """Mean negative log-likelihood of 0/1 labels under the probabilities (clipped to [eps, 1 - eps])."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), eps, 1.0 - eps)
    if p.ndim != 1 or p.shape[0] == 0:
        raise ValueError(f"probabilities must be a non-empty one-dimensional array, got shape {p.shape}")
    positive = _labels(labels, p.shape[0])
    return float(-np.mean(np.where(positive, np.log(p), np.log1p(-p))))
