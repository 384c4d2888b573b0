"""Cross-validation reports: per-fold metrics, their mean and spread, and the out-of-fold report."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel

from ..evaluation.report import EvalReport

__all__ = ["FOLD_METRICS", "CVReport", "FoldResult", "summarise_folds"]

# Metrics reported per fold and summarised as mean ± standard deviation across folds.
FOLD_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "roc_auc",
    "pr_auc",
    "loss",
    "nll",
    "brier",
    "ece",
)


class FoldResult(BaseModel):
    """One fold: what it trained on and held out, its best epoch, and its held-out metrics."""

    fold: int
    n_train: int
    n_heldout: int
    best_epoch: int | None
    checkpoint: str  # relative to the CV directory
    sha256: str
    seconds: float
    metrics: dict[str, float | None] = {}


class CVReport(BaseModel):
    """A K-fold cross-validation: the folds, the out-of-fold report and the artefacts written.

    `oof` is the report `skincls evaluate` gives, computed on the out-of-fold predictions (every
    non-test image predicted once, by the one model that did not train on it); the temperature and
    threshold in it were chosen on those same predictions, never on test. Per-fold metrics use that
    temperature and threshold; `mean`/`std` summarise them (sample standard deviation, ddof=1).
    """

    folds: int
    seed: int
    n_images: int
    n_groups: int
    grouping: str  # what kept images together: "group column", "duplicate clusters" or "none"
    fold_results: list[FoldResult]
    mean: dict[str, float | None]
    std: dict[str, float | None]
    oof: EvalReport
    member_temperature: float
    ensemble: str | None = None
    refit: str | None = None
    refit_epochs: int | None = None
    oof_csv: str
    wall_seconds: float

    def lines(self) -> list[str]:
        """Per-fold table rows, mean ± std, and where the artefacts are."""
        out = [
            f"{self.folds}-fold cross-validation over {self.n_images} non-test images in "
            f"{self.n_groups} groups ({self.grouping}); seed {self.seed}"
        ]
        keys = [k for k in FOLD_METRICS if self.mean.get(k) is not None]
        for f in self.fold_results:
            vals = ", ".join(f"{k} {_fmt(f.metrics.get(k))}" for k in keys)
            out.append(
                f"fold {f.fold}: train {f.n_train}, held out {f.n_heldout}, best epoch "
                f"{f.best_epoch}, {f.seconds:.1f}s; {vals}"
            )
        out.append(
            "mean ± std over folds: "
            + ", ".join(f"{k} {_fmt(self.mean[k])} ± {_fmt(self.std.get(k))}" for k in keys)
        )
        return out


def summarise_folds(per_fold: list[dict[str, Any]]) -> tuple[dict, dict]:
    """Mean and sample standard deviation of each of `FOLD_METRICS` over folds (None when undefined)."""
    mean: dict[str, float | None] = {}
    std: dict[str, float | None] = {}
    for key in FOLD_METRICS:
        values = [m.get(key) for m in per_fold]
        if any(v is None for v in values) or not values:
            mean[key] = std[key] = None
            continue
        arr = np.asarray(values, dtype=float)
        mean[key] = float(arr.mean())
        std[key] = float(arr.std(ddof=1)) if len(arr) > 1 else None
    return mean, std


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
