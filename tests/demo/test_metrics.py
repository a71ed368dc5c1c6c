"""The NumPy AUC, its standard error and log loss, against hand-computed cases and a brute-force count."""

from __future__ import annotations

import math

import numpy as np
import pytest

from weiflow.demo.metrics import auc_standard_error, log_loss, roc_auc


def pairwise_auc(labels: list[int], scores: list[float]) -> float:
    """The definition: over every (positive, negative) pair, 1 if the positive scores higher, 1/2 if tied."""
    positives = [s for s, y in zip(scores, labels, strict=True) if y]
    negatives = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


@pytest.mark.parametrize(
    ("labels", "scores", "expected"),
    [
        ([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], 1.0),
        ([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4], 0.0),
        ([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5], 0.5),  # all tied: a coin
        ([1, 0], [0.7, 0.7], 0.5),
        # positives 2, 3 against negatives 1, 2: 1 + 1/2 + 1 + 1 wins out of 4 pairs
        ([0, 0, 1, 1], [1, 2, 2, 3], 0.875),
        # positives .9, .1, .5 against negatives .9, .5: 1/2 + 1 + 0 + 0 + 0 + 1/2 out of 6
        ([1, 0, 1, 0, 1], [0.9, 0.9, 0.1, 0.5, 0.5], 1 / 3),
        ([True, False, True], [3, 1, 2], 1.0),  # boolean labels, integer scores
    ],
)
def test_roc_auc_hand_computed(labels: list[int], scores: list[float], expected: float) -> None:
    assert roc_auc(labels, scores) == pytest.approx(expected)


def test_roc_auc_equals_the_pairwise_definition_with_many_ties() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        size = int(rng.integers(2, 60))
        labels = rng.integers(0, 2, size)
        labels[:2] = (0, 1)
        scores = rng.integers(0, 6, size).astype(float)  # six distinct values: ties everywhere
        assert roc_auc(labels, scores) == pytest.approx(pairwise_auc(labels.tolist(), scores.tolist()))


def test_roc_auc_is_rank_based() -> None:
    labels = [0, 1, 1, 0, 1]
    scores = np.array([0.2, 0.9, 0.4, 0.3, 0.35])
    assert roc_auc(labels, scores) == roc_auc(labels, np.exp(10 * scores)) == roc_auc(labels, scores - 7)


@pytest.mark.parametrize(
    ("labels", "scores", "message"),
    [
        ([1, 1], [0.1, 0.2], "both classes"),
        ([0, 0], [0.1, 0.2], "both classes"),
        ([0, 1], [0.1, float("nan")], "NaN"),
        ([0, 1, 1], [0.1, 0.2], "differ in shape"),
        ([0, 2], [0.1, 0.2], "0 or 1"),
        ([0, 1], [[0.1], [0.2]], "one-dimensional"),
    ],
)
def test_roc_auc_refuses_what_has_no_auc(labels: list[int], scores: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        roc_auc(labels, scores)


def test_auc_standard_error_by_hand_and_by_size() -> None:
    # Hanley & McNeil at AUC 0.5, 50 + 50: Q1 = Q2 = 1/3, variance (0.25 + 49/12 + 49/12) / 2500
    assert auc_standard_error(0.5, 50, 50) == pytest.approx(math.sqrt((0.25 + 98 / 12) / 2500))
    # Four times the rows, half the error (nearly)
    assert auc_standard_error(0.77, 400, 3600) == pytest.approx(auc_standard_error(0.77, 100, 900) / 2, rel=0.02)
    with pytest.raises(ValueError, match="both classes"):
        auc_standard_error(0.7, 0, 10)


def test_auc_standard_error_matches_the_spread_between_samples() -> None:
    rng = np.random.default_rng(11)
    aucs = []
    for _ in range(300):
        labels = rng.random(2000) < 0.2
        scores = rng.normal(labels * 1.0, 1.0)
        aucs.append(roc_auc(labels, scores))
    predicted = auc_standard_error(float(np.mean(aucs)), 400, 1600)
    assert float(np.std(aucs)) == pytest.approx(predicted, rel=0.2)


def test_log_loss_by_hand() -> None:
    assert log_loss([1, 0], [0.8, 0.4]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    assert log_loss([1], [0.0]) == pytest.approx(-math.log(1e-15))  # clipped, not infinite
    with pytest.raises(ValueError, match="non-empty"):
        log_loss([], [])
