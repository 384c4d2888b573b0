"""Evaluation reports: what one measurement of one split says, as pydantic models (JSON-ready)."""

from __future__ import annotations

import math

from pydantic import BaseModel, computed_field

from ..data.provenance import Overlap
from ..errors import call, spell_options
from .challenge import ChallengeResult
from .classmap import ClassMapping
from .subgroups import SubgroupTable

__all__ = [
    "ECE_BINS",
    "CalibrationResult",
    "ClassResult",
    "EvalReport",
    "ThresholdChoice",
    "TrainingOverlap",
]

ECE_BINS = 15
# A threshold chosen for a target sensitivity holds when the sensitivity it reached where it was
# chosen is known to within ±this (the half-width of its 95% interval); fewer positive images than
# that needs (about 300 at 95%) leave the operating point to chance: the report says so.
SENSITIVITY_HALF_WIDTH = 0.025
OUT_OF_FOLD = "out-of-fold"  # the split name of cross-validation's predictions (experiments.oof)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (95% for z = 1.96); None when n is 0."""
    if n <= 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


class ClassResult(BaseModel):
    """One class: its images (`total`), those predicted as it (`predicted`), the right ones."""

    name: str
    correct: int
    total: int
    predicted: int | None = None
    roc_auc: float | None = None  # one-vs-rest (more than two classes)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")

    @computed_field
    @property
    def recall(self) -> float | None:
        """Share of this class's images predicted as it (None without images)."""
        return self.correct / self.total if self.total else None

    @computed_field
    @property
    def precision(self) -> float | None:
        """Share of the images predicted as this class that are it (None: never predicted)."""
        return self.correct / self.predicted if self.predicted else None


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
    data: str | None = None  # another dataset than the model's own it was chosen on (folder name)

    def describe(self) -> str:
        if self.method == "fixed":
            return "fixed by the user"
        of = f" of {self.data}" if self.data else ""
        return (
            f"largest with sensitivity >= {self.target_sensitivity:g} on {self.split}{of} "
            f"(n={self.n_images}, {self.n_positive} positive)"
        )

    @computed_field
    @property
    def sensitivity_ci(self) -> tuple[float, float] | None:
        """95% Wilson interval of `sensitivity` on the split the threshold was chosen on."""
        if self.sensitivity is None or not self.n_positive:
            return None
        return wilson_interval(round(self.sensitivity * self.n_positive), self.n_positive)

    def source_lines(self) -> list[str]:
        """What the threshold achieved where it was chosen, and a warning when too few positive
        images there to hold it (with what to do instead)."""
        if self.method != "target_sensitivity" or self.sensitivity is None:
            return []
        lo, hi = self.sensitivity_ci or (0.0, 1.0)
        lines = [
            f"At this threshold on {self.split} (n={self.n_images}, {self.n_positive} positive), "
            f"where it was chosen: sensitivity {self.sensitivity:.3f} [95% CI {lo:.3f}-{hi:.3f}], "
            f"specificity {self.specificity:.3f}"
        ]
        if (hi - lo) / 2 > SENSITIVITY_HALF_WIDTH:
            cv = spell_options(
                call("cross_validate", "...", target_sensitivity=self.target_sensitivity)
            )
            advice = (
                f"choose the threshold on out-of-fold predictions ({cv}: its ensemble.pt keeps "
                "that threshold)"
                if self.split != OUT_OF_FOLD
                else "it needs more labelled images"
            )
            lines.append(
                f"WARNING: {self.n_positive} positive images in {self.split} are too few to hold "
                f"this operating point: the sensitivity there is known only to {lo:.3f}-{hi:.3f} "
                "(95% CI), so on new images it may fall short of the target, or overshoot it at a "
                f"cost in specificity; {advice}"
            )
        return lines


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
    worse: list[str] = []  # "NLL", "ECE": what the fitted temperature made worse on `split`
    kept: bool = True  # False: it made calibration worse and was discarded (temperature unchanged)
    data: str | None = None  # another dataset than the model's own it was fitted on (folder name)

    @property
    def where(self) -> str:
        """E.g. "val" or "val of ddi" (another dataset's val split)."""
        return f"{self.split} of {self.data}" if self.data else self.split

    def describe_worse(self) -> str:
        """One line on what got worse, e.g. "ECE 0.0412 → 0.0588" (empty when nothing did)."""
        parts = []
        if "NLL" in self.worse:
            parts.append(f"NLL {self.nll_before:.4f} → {self.nll_after:.4f}")
        if "ECE" in self.worse:
            parts.append(f"ECE {self.ece_before:.4f} → {self.ece_after:.4f}")
        return ", ".join(parts)

    def worse_notice(self, in_use: float, option: str | None = None) -> str:
        """The one line saying what this fit made worse and what became of it.

        Args:
            in_use: The temperature in use after the fit (the fitted one, or the one kept).
            option: How the caller asks to keep a worse fit, in its own words, if any.
        """
        if self.kept:
            what = "kept as asked" + (f" ({option})" if option else "")
        else:
            what = f"temperature {self.temperature:.3f} discarded, keeping {in_use:.3f}"
            what += f" (give {option} to use it)" if option else ""
        return f"calibration made {self.where} {self.describe_worse()} (worse): {what}"


class TrainingOverlap(BaseModel):
    """What of the measured split the model saw in training: images (by content hash), or lesions.

    `lesion_in_train`/`lesion_in_val` count other images of a lesion or patient seen in training
    (matched by the dataset's lesion/patient ids): another photo of it.
    """

    split: str
    n_images: int
    in_train: int  # used as training images
    in_val: int  # used as validation images (model selection, early stopping)
    same_data_dir: bool  # the data dir has the fingerprint of the one it was trained on
    lesion_in_train: int = 0  # another photo of a lesion or patient the model trained on
    lesion_in_val: int = 0  # another photo of a lesion or patient used only for validation
    message: str | None = None  # set when anything overlaps

    @classmethod
    def of(cls, overlap: Overlap) -> TrainingOverlap:
        """The report's record of a `find_overlap` result."""
        fields = {f: getattr(overlap, f) for f in cls.model_fields if f != "message"}
        return cls(**fields, message=overlap.describe() if overlap.any else None)


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
    roc_auc_classes: int | None = None  # more classes: how many the macro ROC-AUC averages
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
    training_overlap: TrainingOverlap | None = None  # None: the checkpoint has no training record
    plots: list[str] = []
    challenge: ChallengeResult | None = None  # a challenge's own ranking metric (`challenge=`)
    subgroups: list[SubgroupTable] = []  # per manifest column asked for (`by=`)
    # Data whose classes differ from the model's: how they were matched, what was left out.
    class_mapping: ClassMapping | None = None
    # Data that is not what the model was trained on (`provenance.is_training_data`): the data
    # dir's folder name and its absolute path. None: the model's own data, or nothing tells.
    data: str | None = None
    data_dir: str | None = None
    # A fused model's metadata columns no image of the split has a value for: unknown throughout.
    missing_inputs: list[str] = []

    @computed_field
    @property
    def metrics_key(self) -> str:
        """Where a checkpoint keeps this report's summary: the split (`test`) for the model's own
        data, `<data dir name>:<split>` (`ddi:test`) for another dataset's, so that never replaces
        the model's own."""
        return self.split if self.data is None else f"{self.data}:{self.split}"

    def lines(self) -> list[str]:
        """Loss and accuracy lines in the original script's format ("Test Accuracy of Benign: ...")."""
        name = self.split.capitalize()
        out = [f"{name} split: {self.n_images} images"]
        if self.data is not None:
            out[0] += (
                f" of {self.data} ({self.data_dir}), not the data the model was trained on; "
                f"checkpoint metrics key {self.metrics_key}, apart from the model's own"
            )
        if self.class_mapping is not None:
            out += self.class_mapping.lines()
        if self.training_overlap is not None and self.training_overlap.message:
            out.append(f"WARNING: {self.training_overlap.message}")
        if self.missing_inputs:
            out.append(self.missing_note())
        out.append(f"{name} Loss: {self.loss:.6f}")
        for c in self.per_class:
            pct = f"{100 * c.accuracy:.0f}%" if c.total else "n/a"
            out.append(f"{name} Accuracy of {c.name.capitalize()}: {pct} ({c.correct}/{c.total})")
        correct = sum(c.correct for c in self.per_class)
        out.append(
            f"{name} Accuracy (Overall): {100 * self.accuracy:.0f}% ({correct}/{self.n_images})"
        )
        return out

    def missing_note(self) -> str:
        """The one line saying which of the model's metadata columns the data lacked."""
        cols = ", ".join(self.missing_inputs)
        return (
            f"note: the model also takes metadata, and no {self.split} image has {cols}: unknown "
            f"for every image, so these metrics are for the model without {cols}"
        )

    def metric_lines(self) -> list[str]:
        """The decision rule, clinical metrics with confidence intervals, and calibration."""
        name = self.split.capitalize()
        out = []
        pos = self.positive_class
        rule = "argmax" if self.threshold is None else f"P({pos}) >= {self.threshold:.4f}"
        source = "" if self.threshold_source == rule else f" ({self.threshold_source})"
        out.append(
            f"Decision: {rule}{source}; temperature {self.temperature:.3f}"
            + (", TTA (8 flips/turns)" if self.tta else "")
            + ("" if self.precision == "fp32" else f"; model run in {self.precision}")
        )
        if self.threshold is not None and self.threshold_choice is not None:
            out += self.threshold_choice.source_lines()
        for key, label in _LINE_METRICS:
            value = getattr(self, key)
            if value is None:
                continue
            ci = self.ci.get(key)
            band = f"  [{100 * self.ci_level:.0f}% CI {ci[0]:.3f}-{ci[1]:.3f}]" if ci else ""
            out.append(f"{name} {label}: {value:.3f}{band}")
        if len(self.classes) > 2:
            out += self._class_lines()
        if self.ece is not None:
            before = (
                f" (uncalibrated {self.ece_uncalibrated:.3f})" if self.temperature != 1.0 else ""
            )
            out.append(f"{name} ECE ({self.ece_bins} bins): {self.ece:.3f}{before}")
        if self.challenge is not None:
            out.append(self.challenge.line(self.split))
        for table in self.subgroups:
            out += table.lines(rule, self.ci_level)
        if self.ci:
            out.append(
                f"CIs: percentile bootstrap, {self.bootstrap_resamples} resamples, "
                f"seed {self.bootstrap_seed}"
            )
        return out

    def _class_lines(self) -> list[str]:
        """More than two classes: what the macro ROC-AUC averages, and each class's numbers."""
        name, k = self.split.capitalize(), len(self.classes)
        out = []
        if self.roc_auc_classes is not None and self.roc_auc_classes < k:
            out.append(
                f"  (macro one-vs-rest ROC-AUC over the {self.roc_auc_classes} of {k} classes "
                f"present in {self.split}; the others have no image there)"
            )
        for c in self.per_class:
            recall = "n/a" if c.recall is None else f"{c.recall:.3f}"
            precision = (
                "n/a (never predicted)"
                if c.precision is None
                else f"{c.precision:.3f} ({c.correct}/{c.predicted})"
            )
            auc = "" if c.roc_auc is None else f", ROC-AUC {c.roc_auc:.3f}"
            out.append(
                f"{name} {c.name}: recall {recall} ({c.correct}/{c.total}), precision {precision}{auc}"
            )
        return out


_LINE_METRICS = [
    ("sensitivity", "Sensitivity"),
    ("specificity", "Specificity"),
    ("ppv", "PPV"),
    ("npv", "NPV"),
    ("balanced_accuracy", "Balanced accuracy"),
    ("roc_auc", "ROC-AUC"),  # macro one-vs-rest with more than two classes
    ("pr_auc", "PR-AUC (average precision)"),
    ("brier", "Brier score"),
    ("accuracy", "Accuracy"),
]
