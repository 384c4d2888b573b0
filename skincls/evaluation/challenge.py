"""The ISIC challenges' own ranking metrics, computed the way each challenge's scorer computes them.

- ISIC 2018 task 3 and ISIC 2019: balanced multiclass accuracy, the mean over classes of recall, with
  each image's prediction the argmax of its probabilities (the `isic-challenge-scoring` package,
  `metrics.balanced_multiclass_accuracy`).
- ISIC 2020 (SIIM-ISIC on Kaggle): ROC-AUC of the melanoma score.
- ISIC 2024 (Kaggle): partial AUC above 80% true positive rate, as the challenge's metric code
  defines it: labels and scores are flipped, so that "TPR >= 0.8" becomes "FPR <= 0.2", and the area
  under the flipped ROC curve over FPR in [0, 0.2] is taken (range [0, 0.2]; 0.02 for a random score).

Every challenge also gets sensitivity at 90% and 95% specificity of its positive class, read off
the ROC curve (the best sensitivity among thresholds whose specificity reaches the target).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel
from sklearn.metrics import auc, roc_auc_score, roc_curve

from ..errors import ConfigError

__all__ = [
    "CHALLENGES",
    "ChallengeResult",
    "balanced_multiclass_accuracy",
    "challenge_metrics",
    "partial_auc_above_tpr",
    "sensitivity_at_specificity",
]

# name: (metric key, what it is in words, the challenge's own classes)
CHALLENGES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "isic2018": (
        "balanced_multiclass_accuracy",
        "balanced multiclass accuracy (mean per-class recall, argmax decisions)",
        ("mel", "nv", "bcc", "akiec", "bkl", "df", "vasc"),
    ),
    "isic2019": (
        "balanced_multiclass_accuracy",
        "balanced multiclass accuracy (mean per-class recall, argmax decisions)",
        ("mel", "nv", "bcc", "akiec", "bkl", "df", "vasc", "scc"),
    ),
    "isic2020": ("roc_auc", "ROC-AUC of the melanoma score", ("benign", "malignant")),
    "isic2024": (
        "pauc_above_80_tpr",
        "partial ROC-AUC above 80% sensitivity (range 0-0.2)",
        ("benign", "malignant"),
    ),
}
SPECIFICITIES = (0.90, 0.95)


class ChallengeResult(BaseModel):
    """One challenge's ranking metric on one split, and sensitivity at fixed specificities."""

    challenge: str
    metric: str  # e.g. "balanced_multiclass_accuracy"
    description: str
    value: float | None  # None: undefined on this split (e.g. one class only)
    scored_class: str | None = None  # the class whose score ranks (binary metrics)
    classes: list[str]  # the model's classes the metric was computed over
    note: str | None = None  # where this differs from the challenge's own setting
    sensitivity_class: str | None = None  # whose sensitivity at fixed specificity is given
    sensitivity_at_specificity: dict[str, float | None] = {}  # {"0.90": sens, "0.95": sens}

    def line(self, split: str) -> str:
        value = "n/a" if self.value is None else f"{self.value:.4f}"
        scored = f" of {self.scored_class}" if self.scored_class else ""
        out = f"{split.capitalize()} {self.challenge} metric, {self.description}{scored}: {value}"
        sens = [
            f"{v:.3f} at {float(k):.0%} specificity"
            for k, v in self.sensitivity_at_specificity.items()
            if v is not None
        ]
        if sens:
            out += f"; sensitivity of {self.sensitivity_class} " + ", ".join(sens)
        return out + (f" ({self.note})" if self.note else "")


def balanced_multiclass_accuracy(y: np.ndarray, probs: np.ndarray) -> float:
    """Mean recall over the classes present in `y`, predictions by argmax of `probs` (N, C).

    Classes with no image in `y` are left out of the mean, as the ISIC scorer's NaN-skipping mean
    does. The scorer counts an argmax tie as wrong ("undecided"); NumPy's argmax takes the first
    of the tied classes, so the two agree only without exact ties.
    """
    y = np.asarray(y).astype(int)
    pred = np.asarray(probs).argmax(axis=1)
    present = np.unique(y)
    return float(np.mean([(pred[y == k] == k).mean() for k in present]))


def partial_auc_above_tpr(y: np.ndarray, p: np.ndarray, min_tpr: float = 0.80) -> float:
    """ISIC 2024's pAUC: the area of the ROC curve above `min_tpr` sensitivity, in [0, 1 − min_tpr].

    As the challenge's code: flip labels and scores, take the ROC curve of the flipped problem up to
    FPR = 1 − min_tpr (a point interpolated there), and its area. NaN without both classes.
    """
    y = np.asarray(y).astype(int)
    if len(np.unique(y)) < 2:
        return float("nan")
    max_fpr = 1.0 - min_tpr
    fpr, tpr, _ = roc_curve(1 - y, -np.asarray(p, dtype=np.float64))
    stop = np.searchsorted(fpr, max_fpr, "right")
    tpr_end = np.interp(max_fpr, fpr[stop - 1 : stop + 1], tpr[stop - 1 : stop + 1])
    return float(auc(np.append(fpr[:stop], max_fpr), np.append(tpr[:stop], tpr_end)))


def sensitivity_at_specificity(y: np.ndarray, p: np.ndarray, specificity: float) -> float:
    """The highest sensitivity among thresholds whose specificity is at least `specificity`."""
    y = np.asarray(y).astype(int)
    if len(np.unique(y)) < 2:
        return float("nan")
    fpr, tpr, _ = roc_curve(y, p, drop_intermediate=False)
    ok = fpr <= 1.0 - specificity + 1e-12
    return float(tpr[ok].max())


def _scored_class(challenge: str, classes: list[str], positive: int) -> tuple[int, str | None]:
    """Which class's score a binary challenge ranks: melanoma where the model has it, else the
    positive class of a two-class model (with a note)."""
    lower = [c.lower() for c in classes]
    if challenge == "isic2020" and "mel" in lower:
        return lower.index("mel"), None
    if len(classes) == 2:
        note = None
        if challenge == "isic2020":
            note = f"P({classes[positive]}) is scored as the melanoma score"
        return positive, note
    if "mel" in lower:
        k = lower.index("mel")
        return k, f"one-vs-rest on {classes[k]} of the model's {len(classes)} classes"
    raise ConfigError(
        f"challenge={challenge!r} scores a binary malignancy score: the model's classes "
        f"{classes} are not two and include no 'mel' class"
    )


def challenge_metrics(
    challenge: str, y: np.ndarray, probs: np.ndarray, classes: list[str], positive: int
) -> ChallengeResult:
    """`challenge`'s ranking metric of labels `y` (N,) and probabilities `probs` (N, C).

    Raises:
        ConfigError: an unknown challenge, or a model whose classes the challenge cannot score.
    """
    if challenge not in CHALLENGES:
        raise ConfigError(f"unknown challenge={challenge!r}; choose one of {', '.join(CHALLENGES)}")
    metric, description, own = CHALLENGES[challenge]
    y, probs = np.asarray(y).astype(int), np.asarray(probs, dtype=np.float64)
    if metric == "balanced_multiclass_accuracy":
        value, scored, note = balanced_multiclass_accuracy(y, probs), None, None
        if sorted(c.lower() for c in classes) != sorted(own):
            note = f"on the model's {len(classes)} classes, not the challenge's {len(own)}"
        k = _melanoma_or_positive(classes, positive)
    else:
        k, note = _scored_class(challenge, classes, positive)
        yk, pk = (y == k).astype(int), probs[:, k]
        both = len(np.unique(yk)) == 2
        if not both:
            value = float("nan")
        elif metric == "roc_auc":
            value = float(roc_auc_score(yk, pk))
        else:
            value = partial_auc_above_tpr(yk, pk)
        scored = classes[k]
    sens = {
        f"{s:.2f}": _none(sensitivity_at_specificity((y == k).astype(int), probs[:, k], s))
        for s in SPECIFICITIES
    }
    return ChallengeResult(
        challenge=challenge,
        metric=metric,
        description=description,
        value=_none(value),
        scored_class=scored,
        classes=list(classes),
        note=note,
        sensitivity_class=classes[k],
        sensitivity_at_specificity=sens,
    )


def _melanoma_or_positive(classes: list[str], positive: int) -> int:
    """The class whose sensitivity at fixed specificity a multiclass report gives: mel, if any."""
    lower = [c.lower() for c in classes]
    return lower.index("mel") if "mel" in lower else positive


def _none(v: float) -> float | None:
    return v if np.isfinite(v) else None
