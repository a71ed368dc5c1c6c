"""Training curves: the binned training AUC, the progress file and the picture drawn from it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from lxml import etree

from weiflow.curves import MAX_POINTS_PER_SERIES, binned_auc, draw_curve, read_progress
from weiflow.demo.metrics import roc_auc

BINS = 1000


def binned(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the trainer's step computes: probabilities counted into BINS equal bins, by class."""
    bins = np.clip((probabilities * BINS).astype(int), 0, BINS - 1)
    return (
        np.bincount(bins, weights=labels, minlength=BINS),
        np.bincount(bins, weights=1 - labels, minlength=BINS),
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binned_auc_is_the_auc_of_the_binned_predictions(seed: int) -> None:
    rng = np.random.default_rng(seed)
    probabilities = rng.beta(1.2, 6.0, 20_000)
    labels = (rng.random(20_000) < probabilities).astype(float)
    positive, negative = binned(labels, probabilities)
    # Exactly the AUC of the bin numbers (ties: one half), and within a bin's width of the exact AUC.
    bin_numbers = np.clip((probabilities * BINS).astype(int), 0, BINS - 1)
    assert binned_auc(positive, negative) == pytest.approx(roc_auc(labels, bin_numbers), abs=1e-12)
    assert binned_auc(positive, negative) == pytest.approx(roc_auc(labels, probabilities), abs=2e-3)


def test_binned_auc_is_undefined_with_one_class() -> None:
    positive, negative = binned(np.ones(100), np.linspace(0, 1, 100))
    assert binned_auc(positive, negative) is None
    assert binned_auc(negative, positive) is None


def test_read_progress_skips_a_line_cut_short(tmp_path: Path) -> None:
    path = tmp_path / "progress.jsonl"
    points = [{"step": 100 * i, "worker": i % 2, "loss": 0.5 - i / 100} for i in range(1, 4)]
    path.write_text("".join(json.dumps(p) + "\n" for p in points) + '{"step": 400, "wor')
    assert read_progress(path) == points
    assert read_progress(tmp_path / "absent.jsonl") == []


def curve_points(workers: int, calls: int) -> list[dict[str, float]]:
    return [
        {"step": 100 * (i + 1), "worker": i % workers, "loss": 0.6 / (1 + i / 50), "auc": 0.6 + 0.15 * i / calls}
        for i in range(calls)
    ]


def svg_lines(svg: bytes) -> dict[str, int]:
    """Each worker line's group id and its number of points."""
    root = etree.fromstring(svg)
    ns = {"svg": "http://www.w3.org/2000/svg"}
    return {
        group.get("id"): group.xpath("string(svg:path/@d)", namespaces=ns).count("L") + 1
        for group in root.xpath("//svg:g[starts-with(@id, 'worker-')]", namespaces=ns)
    }


def test_the_svg_has_a_line_per_worker_in_each_panel_and_nothing_active() -> None:
    svg = draw_curve(curve_points(2, 80), title="feed_ctr: train/fit $x$ <b>", image_format="svg")
    assert svg_lines(svg) == {"worker-0-loss": 40, "worker-1-loss": 40, "worker-0-auc": 40, "worker-1-auc": 40}
    root = etree.fromstring(svg)
    assert not root.xpath("//*[local-name()='script']") and b"<!DOCTYPE" not in svg and b"<b>" not in svg


def test_without_any_auc_only_the_loss_panel_is_drawn() -> None:
    points = [{k: v for k, v in p.items() if k != "auc"} for p in curve_points(2, 20)]
    assert set(svg_lines(draw_curve(points, title="t", image_format="svg"))) == {"worker-0-loss", "worker-1-loss"}


def test_long_series_are_thinned() -> None:
    points = curve_points(1, 3 * MAX_POINTS_PER_SERIES + 7)
    drawn = svg_lines(draw_curve(points, title="t", image_format="svg"))
    assert 0 < drawn["worker-0-loss"] <= MAX_POINTS_PER_SERIES + 1


def test_the_same_points_draw_the_same_bytes() -> None:
    points = curve_points(2, 20)
    assert draw_curve(points, title="t") == draw_curve(points, title="t")
    assert draw_curve(points, title="t").startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="png or svg"):
        draw_curve(points, title="t", image_format="gif")
