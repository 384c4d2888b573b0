"""Metrics: pure functions from label and probability arrays to the numbers a clinician asks for.

scikit-learn computes the standard metrics (confusion matrix, ROC-AUC, average precision, Brier
score): it is the reference implementation most papers use, works on plain NumPy arrays and has no
device or state to manage. Only what it lacks is written here: expected calibration error, the
decision rule at a threshold, threshold selection and percentile-bootstrap confidence intervals.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    roc_auc_score,
    roc_curve,
)

from ..inference.decision import predict_labels

__all__ = [
    "binary_metrics",
    "bootstrap_ci",
    "bootstrap_samples",
    "calibration_bins",
    "expected_calibration_error",
    "multiclass_metrics",
    "percentile_interval",
    "rescale_threshold",
    "select_threshold",
    "task_metrics",
]


def _safe_div(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float | None = None) -> dict:
    """Clinical metrics of a binary classifier; class 1 is the positive class (e.g. malignant).

    Args:
        y: True labels in {0, 1}, shape (N,).
        p: P(positive), shape (N,).
        threshold: Positive when `p >= threshold`; None means argmax (`p > 0.5`).

    Returns:
        accuracy, confusion matrix (rows = truth, columns = prediction), sensitivity, specificity,
        PPV, NPV, balanced accuracy, ROC-AUC, PR-AUC (average precision) and Brier score. Metrics
        that are undefined on this data (e.g. AUC with one class present) are NaN.
    """
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=np.float64)
    pred = predict_labels(np.stack([1 - p, p], axis=1), threshold)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    sens, spec = _safe_div(tp, tp + fn), _safe_div(tn, tn + fp)
    both = len(np.unique(y)) == 2
    return {
        "accuracy": _safe_div(tp + tn, len(y)),
        "confusion_matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
        "sensitivity": sens,
        "specificity": spec,
        "ppv": _safe_div(tp, tp + fp),
        "npv": _safe_div(tn, tn + fn),
        "balanced_accuracy": (sens + spec) / 2,
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if y.any() else float("nan"),
        "brier": float(brier_score_loss(y, p, pos_label=1)),
    }


def multiclass_metrics(y: np.ndarray, probs: np.ndarray) -> dict:
    """Accuracy, balanced accuracy, confusion matrix, per-class recall, precision and one-vs-rest
    ROC-AUC, and their macro average, for C > 2 classes (argmax decisions).

    A class's one-vs-rest AUC is undefined (NaN) when the split holds none of its images; the macro
    ROC-AUC then averages the classes that are present, and `roc_auc_classes` says how many.
    With every class present it equals scikit-learn's `roc_auc_score(multi_class="ovr")`.
    """
    y = np.asarray(y).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    c = probs.shape[1]
    pred = probs.argmax(axis=1)
    cm = confusion_matrix(y, pred, labels=list(range(c)))
    recall = [_safe_div(cm[k, k], cm[k].sum()) for k in range(c)]
    precision = [_safe_div(cm[k, k], cm[:, k].sum()) for k in range(c)]
    auc = [
        float(roc_auc_score(y == k, probs[:, k])) if 0 < (y == k).sum() < len(y) else float("nan")
        for k in range(c)
    ]
    present = [a for a in auc if np.isfinite(a)]
    recalls = [r for r in recall if np.isfinite(r)]
    return {
        "accuracy": _safe_div(int(np.trace(cm)), len(y)),
        "confusion_matrix": cm.tolist(),
        "balanced_accuracy": float(np.mean(recalls)) if recalls else float("nan"),
        "recall": recall,
        "precision": precision,
        "class_roc_auc": auc,
        "roc_auc": float(np.mean(present)) if present else float("nan"),
        "roc_auc_classes": len(present),
        # Multi-class Brier score (sum over classes, mean over images), by hand: scikit-learn only
        # accepts 2-D probabilities from 1.7 on.
        "brier": float(np.mean(np.sum((probs - np.eye(c)[y]) ** 2, axis=1))),
    }


def calibration_bins(
    y: np.ndarray, probs: np.ndarray, n_bins: int = 15, positive: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equal-width reliability bins over [0, 1]: (mean confidence, observed frequency, count) per bin.

    Binary: the confidence is P(positive) and the outcome is "is positive", so the bins describe the
    probability skincls shows users. More classes: top-label confidence against "argmax is right".
    Empty bins hold NaN confidence/frequency and count 0.
    """
    y = np.asarray(y).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape[1] == 2:
        conf, hit = probs[:, positive], (y == positive).astype(float)
    else:
        conf, hit = probs.max(axis=1), (probs.argmax(axis=1) == y).astype(float)
    # Left-closed bins [lo, hi) as in torchmetrics; a confidence of exactly 1 joins the last bin.
    idx = np.clip(np.floor(conf * n_bins).astype(int), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        freq = np.bincount(idx, weights=hit, minlength=n_bins) / count
    return mean_conf, freq, count


def expected_calibration_error(
    y: np.ndarray, probs: np.ndarray, n_bins: int = 15, positive: int = 1
) -> float:
    """ECE: count-weighted mean |confidence − observed frequency| over equal-width bins (see
    `calibration_bins` for what confidence means). 15 bins follows Guo et al. (2017)."""
    conf, freq, count = calibration_bins(y, probs, n_bins, positive)
    used = count > 0
    return float(np.sum(count[used] * np.abs(conf[used] - freq[used])) / count.sum())


def select_threshold(y_val: np.ndarray, p_val: np.ndarray, target_sensitivity: float) -> float:
    """The largest threshold whose sensitivity on these (validation) labels reaches the target.

    Larger thresholds mean fewer false positives, so the largest one that still meets the target
    gives the best specificity on this data. Callers pass validation arrays only: choosing the
    operating point on test labels would make the test sensitivity an optimistic, biased estimate.

    Raises:
        ValueError: no positive example (sensitivity undefined) or a target outside (0, 1].
    """
    y_val = np.asarray(y_val).astype(int)
    if not 0 < target_sensitivity <= 1:
        raise ValueError(f"target sensitivity must be in (0, 1], not {target_sensitivity}")
    if not y_val.any():
        raise ValueError("no positive example to measure sensitivity on")
    if y_val.all():  # roc_curve needs both classes; every threshold up to the smallest p works
        return float(np.min(p_val))
    _, tpr, thresholds = roc_curve(y_val, p_val, drop_intermediate=False)
    ok = (tpr >= target_sensitivity - 1e-12) & np.isfinite(thresholds)
    return float(thresholds[ok].max())


def rescale_threshold(threshold: float, old_temperature: float, new_temperature: float) -> float:
    """Move a binary threshold on P(positive) to a new temperature so that decisions stay the same.

    P(positive) = sigmoid(margin / T) with margin = logit₁ − logit₀; the decision margin ≥ T·logit(t)
    is what must not change.
    """
    t = min(max(threshold, 1e-12), 1 - 1e-12)
    margin = old_temperature * np.log(t / (1 - t))
    return float(1 / (1 + np.exp(-margin / new_temperature)))


def bootstrap_ci(
    y: np.ndarray,
    p: np.ndarray,
    threshold: float | None = None,
    *,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap confidence intervals of accuracy, ROC-AUC, sensitivity and specificity.

    Images are resampled with replacement `n_resamples` times. Seeded: the same inputs and seed give
    the same intervals. Resamples where a metric is undefined (e.g. no positive image, so no
    sensitivity or AUC) are left out of that metric's interval.
    """
    samples = bootstrap_samples(y, p, threshold, n_resamples=n_resamples, seed=seed)
    return {m: percentile_interval(s, level) for m, s in samples.items()}


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central `level` percentile interval of bootstrap samples, NaN ones left out."""
    s = samples[np.isfinite(samples)]
    if not len(s):
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    return float(np.percentile(s, tail)), float(np.percentile(s, 100 - tail))


def bootstrap_samples(
    y: np.ndarray,
    p: np.ndarray,
    threshold: float | None = None,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Accuracy, ROC-AUC, sensitivity and specificity of `n_resamples` bootstrap resamples, each
    (B,); NaN where a resample leaves a metric undefined. Seeded, as `bootstrap_ci`."""
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), size=(n_resamples, len(y)))  # (B, N)
    yb = y[idx]
    hit = predict_labels(np.stack([1 - p, p], axis=1), threshold)[idx] == yb
    pos = yb.sum(axis=1)
    neg = yb.shape[1] - pos
    with np.errstate(invalid="ignore", divide="ignore"):
        samples = {
            "accuracy": hit.mean(axis=1),
            "roc_auc": np.array(
                [
                    roc_auc_score(yb[b], p[idx[b]]) if 0 < pos[b] < len(y) else np.nan
                    for b in range(n_resamples)
                ]
            ),
            "sensitivity": (hit & (yb == 1)).sum(axis=1) / pos,
            "specificity": (hit & (yb == 0)).sum(axis=1) / neg,
        }
    return samples


def task_metrics(
    y: np.ndarray,
    probs: np.ndarray,
    positive: int,
    threshold: float | None,
    *,
    n_bootstrap: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """The metrics that depend on the task, for a report of one split.

    Two classes: `binary_metrics` of the positive class at `threshold` (argmax when None) without
    its confusion matrix, plus 95% bootstrap intervals (`ci`) when `n_bootstrap`. More classes:
    balanced accuracy, macro one-vs-rest ROC-AUC (and which classes it covers), Brier score, and
    each class's ROC-AUC (`class_roc_auc`, in class order).
    """
    if probs.shape[1] == 2:
        yb, pb = (y == positive).astype(int), probs[:, positive]
        out = binary_metrics(yb, pb, threshold)
        out.pop("confusion_matrix")  # a report keeps the class-ordered one
        if n_bootstrap:
            out["ci"] = bootstrap_ci(yb, pb, threshold, n_resamples=n_bootstrap, seed=seed)
            out.update(bootstrap_resamples=n_bootstrap, bootstrap_seed=seed)
        return out
    multi = multiclass_metrics(y, probs)
    keys = ("balanced_accuracy", "roc_auc", "roc_auc_classes", "brier", "class_roc_auc")
    return {k: multi[k] for k in keys}
