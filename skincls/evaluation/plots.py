"""Plots: PNG figures for people who would rather look than read (matplotlib, headless)."""

from __future__ import annotations

from ..figures import new_figure, save_figure

# --- evaluation plots (ROC, PR, confusion matrix, reliability) -------------------------------------

__all__ = ["plot_confusion", "plot_pr", "plot_reliability", "plot_roc"]


def plot_roc(y, p, path, tag: str, threshold: float | None = None, positive: str = "positive"):
    """ROC curve of P(positive) with its AUC and the operating point marked; returns the path."""
    import numpy as np
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(y, p)
    fig, ax = new_figure(figsize=(4.2, 4))
    ax.plot(fpr, tpr, lw=1.8, label=f"AUC {roc_auc_score(y, p):.3f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    t = 0.5 if threshold is None else threshold
    pred = np.asarray(p) >= t
    sens, spec = pred[y == 1].mean(), 1 - pred[y == 0].mean()
    ax.plot(
        1 - spec, sens, "o", c="C3", label=f"threshold {t:.3f}: sens {sens:.2f}, spec {spec:.2f}"
    )
    ax.set(
        xlabel="1 − specificity (FPR)", ylabel="sensitivity (TPR)", title=f"ROC, {positive} ({tag})"
    )
    ax.legend(loc="lower right", fontsize=7)
    return _saved(fig, path)


def plot_pr(y, p, path, tag: str, threshold: float | None = None, positive: str = "positive"):
    """Precision-recall curve with average precision and prevalence baseline; returns the path."""
    import numpy as np
    from sklearn.metrics import average_precision_score, precision_recall_curve

    prec, rec, _ = precision_recall_curve(y, p)
    fig, ax = new_figure(figsize=(4.2, 4))
    ax.plot(rec, prec, lw=1.8, label=f"AP {average_precision_score(y, p):.3f}")
    ax.axhline(np.mean(y), ls="--", c="grey", lw=0.8, label=f"prevalence {np.mean(y):.2f}")
    t = 0.5 if threshold is None else threshold
    pred = np.asarray(p) >= t
    if pred.any():
        ax.plot(pred[y == 1].mean(), y[pred].mean(), "o", c="C3", label=f"threshold {t:.3f}")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", ylim=(0, 1.02))
    ax.set_title(f"Precision-recall, {positive} ({tag})", fontsize=9)
    ax.legend(loc="lower left", fontsize=7)
    return _saved(fig, path)


def plot_confusion(cm, classes, path, tag: str):
    """Confusion matrix (rows: true, columns: predicted) with counts; returns the path."""
    import numpy as np

    cm = np.asarray(cm)
    side = max(3.6, 0.55 * len(classes) + 1.8)
    fig, ax = new_figure(figsize=(side, side * 0.92))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", c="white" if v > cm.max() / 2 else "black")
    ax.set(
        xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted", ylabel="true"
    )
    ax.set_xticklabels(
        classes,
        rotation=45 if len(classes) > 2 else 0,
        ha="right" if len(classes) > 2 else "center",
    )
    ax.set_yticklabels(classes)
    ax.set_title(f"Confusion matrix ({tag})", fontsize=9)
    return _saved(fig, path)


def plot_reliability(
    y,
    probs,
    path,
    tag: str,
    probs_after=None,
    temperature=1.0,
    n_bins=15,
    positive="positive",
    positive_index=1,
):
    """Reliability diagram (equal-width bins), before and, if given, after temperature scaling.

    Binary: P(positive) against the observed positive rate; more classes: top-label confidence
    against accuracy (see `skincls.metrics.calibration_bins`).
    """
    from .metrics import calibration_bins, expected_calibration_error

    fig, ax = new_figure(figsize=(4.2, 4))
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    curves = [("uncalibrated", probs, "C0")]
    if probs_after is not None:
        curves.append((f"T = {temperature:.2f}", probs_after, "C3"))
    for name, pr, colour in curves:
        conf, freq, count = calibration_bins(y, pr, n_bins, positive_index)
        used = count > 0
        ece = expected_calibration_error(y, pr, n_bins, positive_index)
        ax.plot(conf[used], freq[used], "o-", c=colour, ms=3, label=f"{name}: ECE {ece:.3f}")
    binary = probs.shape[1] == 2
    ax.set(
        xlabel=f"predicted P({positive})" if binary else "top-class confidence",
        ylabel=f"observed {positive} rate" if binary else "accuracy",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.set_title(f"Reliability, {n_bins} bins ({tag})", fontsize=9)
    ax.legend(loc="upper left", fontsize=7)
    return _saved(fig, path)


def _saved(fig, path):
    from pathlib import Path

    save_figure(fig, path)
    return Path(path)
