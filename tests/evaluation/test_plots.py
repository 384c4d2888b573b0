"""Evaluation plots: reliability bin counts, legend off the data, one title style."""

from __future__ import annotations

import numpy as np

from skincls.evaluation.plots import plot_confusion, plot_pr, plot_roc, reliability_figure
from skincls.figures import TITLE_SIZE


def _probs(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p1 = np.clip(0.5 + (y - 0.5) * rng.uniform(0, 0.9, n), 0.01, 0.99)
    return y, np.stack([1 - p1, p1], axis=1)


def test_reliability_shows_bin_counts_and_keeps_the_legend_off_the_data():
    y, probs = _probs()
    fig = reliability_figure(y, probs, "test split, n=200", probs, 1.5, 10)
    curve, counts = fig.axes
    heights = [round(b.get_height()) for b in counts.patches]
    per_bin = np.histogram(probs[:, 1], bins=10, range=(0, 1))[0]
    assert sum(heights) == 2 * len(y)  # one bar per bin for each of the two curves
    assert sorted(heights[:10]) == sorted(per_bin)
    assert counts.get_ylabel() == "images"
    fig.canvas.draw()
    legend = curve.get_legend().get_window_extent()
    assert legend.y0 >= curve.get_window_extent().y1  # above the plot area, not over the points
    assert fig.get_suptitle() == "Reliability, 10 bins (test split, n=200)"


def test_every_evaluation_plot_uses_one_title_style(tmp_path):
    y, probs = _probs()
    plot_roc(y, probs[:, 1], tmp_path / "roc.png", "test split")
    plot_pr(y, probs[:, 1], tmp_path / "pr.png", "test split")
    plot_confusion([[5, 1], [2, 4]], ["benign", "malignant"], tmp_path / "cm.png", "test split")
    assert all((tmp_path / f).is_file() for f in ("roc.png", "pr.png", "cm.png"))
    fig = reliability_figure(y, probs, "test split")
    assert fig.texts[0].get_fontsize() == TITLE_SIZE  # the suptitle
