"""Measure one split: its outputs at an operating point (temperature, threshold) as an `EvalReport`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..inference.decision import positive_index, predict_labels
from . import metrics as M
from .calibration import nll
from .report import ECE_BINS, CalibrationResult, ClassResult, EvalReport, ThresholdChoice

if TYPE_CHECKING:
    from .outputs import Outputs
    from .report import TrainingOverlap

__all__ = ["OperatingPoint", "measure"]


@dataclass
class OperatingPoint:
    """What turns a model's logits into decisions, and how each part of it was set.

    `threshold` on P(positive) at `temperature` (binary only; None: argmax); `threshold_choice` and
    `calibration` record where they were fitted (None: given, e.g. read from a checkpoint).
    """

    temperature: float = 1.0
    threshold: float | None = None
    threshold_choice: ThresholdChoice | None = None
    calibration: CalibrationResult | None = None

    def threshold_source(self, binary: bool = True) -> str:
        """How the threshold in use was set, in words ("argmax" when none is used)."""
        if not binary or self.threshold is None:
            return "argmax"
        return self.threshold_choice.describe() if self.threshold_choice else "from checkpoint"


def measure(
    out: Outputs,
    classes: list[str],
    point: OperatingPoint,
    *,
    tta: bool = False,
    precision: str = "fp32",
    overlap: TrainingOverlap | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> EvalReport:
    """Every metric of `out` at `point`: decisions, calibration and, with two classes, clinical ones.

    Args:
        out: Logits and labels of the split.
        classes: Class names, in the model's order.
        point: Temperature and threshold to apply (and their provenance, which the report carries).
        tta: Whether the outputs are test-time-augmented (recorded in the report).
        precision: What the model ran in (recorded in the report).
        overlap: What of the split the model saw in training (None: no training record).
        n_bootstrap: Bootstrap resamples for the 95% confidence intervals (0: none).
        seed: Bootstrap seed; the same seed gives the same intervals.
    """
    binary, positive = len(classes) == 2, positive_index(classes)
    threshold = point.threshold if binary else None
    y, probs, probs_raw = out.labels, out.probs(point.temperature), out.probs()
    pred = predict_labels(probs, threshold, positive)
    cm = np.zeros((len(classes),) * 2, dtype=int)
    np.add.at(cm, (y, pred), 1)
    report: dict[str, Any] = {
        "split": out.split,
        "n_images": len(y),
        "classes": classes,
        "positive_class": classes[positive],
        "loss": nll(out.logits, y),
        "accuracy": float((pred == y).mean()),
        "per_class": [
            ClassResult(
                name=c, correct=int(cm[k, k]), total=int(cm[k].sum()), predicted=int(cm[:, k].sum())
            )
            for k, c in enumerate(classes)
        ],
        "confusion_matrix": cm.tolist(),
        "threshold": threshold,
        "threshold_source": point.threshold_source(binary),
        "temperature": point.temperature,
        "tta": tta,
        "precision": precision,
        "nll": nll(out.logits, y, point.temperature),
        "ece": M.expected_calibration_error(y, probs, ECE_BINS, positive),
        "ece_uncalibrated": M.expected_calibration_error(y, probs_raw, ECE_BINS, positive),
        "calibration": point.calibration,
        "threshold_choice": point.threshold_choice,
        "training_overlap": overlap,
    }
    by_task = M.task_metrics(
        y, probs, positive, point.threshold, n_bootstrap=n_bootstrap, seed=seed
    )
    for row, auc in zip(report["per_class"], by_task.pop("class_roc_auc", ())):
        row.roc_auc = auc if np.isfinite(auc) else None
    report.update(by_task)
    return EvalReport.model_validate(_nan_to_none(report))


def _nan_to_none(d: dict[str, Any]) -> dict[str, Any]:
    """Undefined metrics are NaN in the arrays and None (null in JSON) in the report."""
    return {k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in d.items()}
