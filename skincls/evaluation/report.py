"""Evaluation reports: what one measurement of one split says, as pydantic models (JSON-ready)."""

from __future__ import annotations

from pydantic import BaseModel

__all__ = ["ECE_BINS", "CalibrationResult", "ClassResult", "EvalReport", "ThresholdChoice"]

ECE_BINS = 15


class ClassResult(BaseModel):
    name: str
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")


class ThresholdChoice(BaseModel):
    """How the operating threshold on P(positive) was set, and what it achieved where it was chosen."""

    threshold: float
    method: str  # "target_sensitivity" or "fixed"
    target_sensitivity: float | None = None
    split: str | None = None  # where it was chosen (None for a fixed threshold)
    n_images: int | None = None
    n_positive: int | None = None
    sensitivity: float | None = None  # on `split`, at `threshold`
    specificity: float | None = None
    temperature: float = 1.0  # the probabilities it applies to
    tta: bool = False

    def describe(self) -> str:
        if self.method == "fixed":
            return "fixed by the user"
        return (
            f"largest with sensitivity >= {self.target_sensitivity:g} on {self.split} "
            f"(n={self.n_images}, {self.n_positive} positive)"
        )


class CalibrationResult(BaseModel):
    """Temperature scaling fitted on one split (validation)."""

    temperature: float
    split: str
    n_images: int
    tta: bool = False
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    ece_bins: int = ECE_BINS


class EvalReport(BaseModel):
    """Metrics of one split; `split` and `n_images` say what they were measured on.

    Binary metrics treat `positive_class` as positive and are None with more than two classes.
    """

    split: str
    n_images: int
    classes: list[str]
    positive_class: str
    loss: float  # mean cross-entropy at temperature 1, as during training
    accuracy: float
    per_class: list[ClassResult]
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted class
    threshold: float | None  # on P(positive); None: argmax
    threshold_source: str
    temperature: float
    tta: bool
    precision: str = "fp32"  # what the model ran in: fp32, bf16 or fp16
    sensitivity: float | None = None
    specificity: float | None = None
    ppv: float | None = None
    npv: float | None = None
    balanced_accuracy: float | None = None
    roc_auc: float | None = None  # binary; macro one-vs-rest with more classes
    pr_auc: float | None = None  # average precision of the positive class
    brier: float | None = None  # at `temperature`
    nll: float | None = None  # at `temperature`
    ece: float | None = None  # at `temperature`
    ece_uncalibrated: float | None = None  # at temperature 1
    ece_bins: int = ECE_BINS
    ci: dict[str, tuple[float, float]] = {}  # percentile bootstrap intervals
    ci_level: float = 0.95
    bootstrap_resamples: int = 0
    bootstrap_seed: int = 0
    calibration: CalibrationResult | None = None
    threshold_choice: ThresholdChoice | None = None
    plots: list[str] = []

    def lines(self) -> list[str]:
        """Loss and accuracy lines in the original script's format ("Test Accuracy of Benign: ...")."""
        name = self.split.capitalize()
        out = [f"{name} split: {self.n_images} images", f"{name} Loss: {self.loss:.6f}"]
        for c in self.per_class:
            pct = f"{100 * c.accuracy:.0f}%" if c.total else "n/a"
            out.append(f"{name} Accuracy of {c.name.capitalize()}: {pct} ({c.correct}/{c.total})")
        correct = sum(c.correct for c in self.per_class)
        out.append(
            f"{name} Accuracy (Overall): {100 * self.accuracy:.0f}% ({correct}/{self.n_images})"
        )
        return out

    def metric_lines(self) -> list[str]:
        """The decision rule, clinical metrics with confidence intervals, and calibration."""
        name = self.split.capitalize()
        out = []
        pos = self.positive_class
        rule = "argmax" if self.threshold is None else f"P({pos}) >= {self.threshold:.4f}"
        out.append(
            f"Decision: {rule} ({self.threshold_source}); temperature {self.temperature:.3f}"
            + (", TTA (8 flips/turns)" if self.tta else "")
            + ("" if self.precision == "fp32" else f"; model run in {self.precision}")
        )
        for key, label in _LINE_METRICS:
            value = getattr(self, key)
            if value is None:
                continue
            ci = self.ci.get(key)
            band = f"  [{100 * self.ci_level:.0f}% CI {ci[0]:.3f}-{ci[1]:.3f}]" if ci else ""
            out.append(f"{name} {label}: {value:.3f}{band}")
        if self.ece is not None:
            before = (
                f" (uncalibrated {self.ece_uncalibrated:.3f})" if self.temperature != 1.0 else ""
            )
            out.append(f"{name} ECE ({self.ece_bins} bins): {self.ece:.3f}{before}")
        if self.ci:
            out.append(
                f"CIs: percentile bootstrap, {self.bootstrap_resamples} resamples, "
                f"seed {self.bootstrap_seed}"
            )
        return out


_LINE_METRICS = [
    ("sensitivity", "Sensitivity"),
    ("specificity", "Specificity"),
    ("ppv", "PPV"),
    ("npv", "NPV"),
    ("balanced_accuracy", "Balanced accuracy"),
    ("roc_auc", "ROC-AUC"),
    ("pr_auc", "PR-AUC (average precision)"),
    ("brier", "Brier score"),
    ("accuracy", "Accuracy"),
]
