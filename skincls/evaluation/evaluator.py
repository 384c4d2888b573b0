"""Evaluate: measure a trained model on one split, choose its operating point and calibrate it on val.

The model runs once per split (logits are collected, then cached); every number after that comes from
arrays through `skincls.metrics`. Threshold and temperature are fitted on the validation split only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..data.dataset import ManifestDataset, build_transform
from ..data.provenance import Overlap, find_overlap
from ..data.splits import load_manifest
from ..errors import ConfigError, DataError
from ..inference.decision import positive_index, predict_labels
from ..models.checkpoint import Checkpoint, load_checkpoint, update_checkpoint
from ..preprocessing import Preprocessing
from ..runtime import plan_precision, resolve_device
from . import metrics as M
from .calibration import fit_temperature, nll
from .outputs import Outputs, collect_outputs
from .report import (
    ECE_BINS,
    CalibrationResult,
    ClassResult,
    EvalReport,
    ThresholdChoice,
    TrainingOverlap,
)

__all__ = [
    "CalibrationResult",
    "ClassResult",
    "EvalReport",
    "Evaluator",
    "Outputs",
    "ThresholdChoice",
    "TrainingOverlap",
]


class Evaluator:
    """Evaluates a model, given as a checkpoint path, a `Checkpoint`, or a module with its metadata.

    Args:
        model: Checkpoint file, `Checkpoint`, or `nn.Module` (then `classes` and `preprocessing`).
        backbone: The backbone module of a custom-backbone checkpoint.
        device: auto, cpu, cuda, cuda:N or mps.
        batch_size: Images per forward pass.
        tta: Average softmax over the 8 flips and 90° turns.
        progress: Called as `progress(done, total, what)` after each batch the model runs on.
    """

    def __init__(
        self,
        model: str | Path | Checkpoint | nn.Module,
        *,
        backbone: nn.Module | None = None,
        classes: list[str] | None = None,
        preprocessing: Preprocessing | None = None,
        device: str = "auto",
        batch_size: int = 32,
        tta: bool = False,
        precision: str = "auto",
        num_workers: int = 0,
        progress: Callable[[int, int, str], None] | None = None,
    ):
        self.checkpoint: Checkpoint | None = None
        self.progress = progress
        self.threshold: float | None = None
        self.threshold_choice: ThresholdChoice | None = None
        self.temperature = 1.0
        self.calibration: CalibrationResult | None = None
        self.training_data: dict[str, Any] | None = None  # what the checkpoint was trained on
        if isinstance(model, (str, Path)):
            model = load_checkpoint(model)
        if isinstance(model, Checkpoint):
            self.checkpoint = model
            classes = classes or model.classes
            preprocessing = preprocessing or model.preprocessing
            self.temperature = model.temperature
            self.threshold = model.threshold
            info = model.data.get("threshold_info")
            self.threshold_choice = ThresholdChoice.model_validate(info) if info else None
            self.training_data = model.data.get("training_data")
            model = model.build_model(backbone=backbone)
        if classes is None or preprocessing is None:
            raise ValueError("a bare module needs classes= and preprocessing=")
        self.device = resolve_device(device)
        plan = plan_precision(precision, self.device)
        self.precision, self._dtype = plan.inference, plan.dtype("inference")
        self.model = model.to(self.device).eval().to(memory_format=torch.channels_last)
        self.num_workers = num_workers
        self.classes = list(classes)
        self.positive = positive_index(self.classes)
        self.preprocessing = preprocessing
        self.batch_size = batch_size
        self.tta = tta
        self._cache: dict[tuple, Outputs] = {}

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    def outputs(self, data: str | Path | Dataset | Outputs, split: str = "test") -> Outputs:
        """Run the model once over a split (cached): a data dir plus split name, or a `Dataset`.

        Given `Outputs` (logits computed elsewhere, e.g. out-of-fold ones), they are used as they are.
        """
        if isinstance(data, Outputs):
            return data
        if isinstance(data, (str, Path)):
            key = (str(data), split, self.tta)
        else:  # the dataset itself (not its id, which a new object could reuse) keys the cache
            split = getattr(data, "split", split)
            key = (data, split, self.tta)
        if key not in self._cache:
            ds = self._dataset(data, split)
            out = collect_outputs(
                self.model,
                ds,
                split,
                device=self.device,
                batch_size=self.batch_size,
                tta=self.tta,
                dtype=self._dtype,
                num_workers=self.num_workers,
                progress=self.progress,
            )
            self._cache[key] = out
        return self._cache[key]

    def _dataset(self, data: str | Path | Dataset, split: str) -> Dataset:
        if not isinstance(data, (str, Path)):
            return data
        manifest = load_manifest(data)
        if manifest.classes != self.classes:
            raise DataError(
                f"data classes {manifest.classes} differ from the model's {self.classes}"
            )
        return ManifestDataset(manifest, split, build_transform(self.preprocessing))

    def calibrate(
        self, data: str | Path | Dataset, split: str = "val", *, keep_worse: bool = False
    ) -> CalibrationResult:
        """Fit the temperature on `split` (validation) and use it from now on.

        A threshold chosen for a target sensitivity is chosen again on its split at the new
        temperature (its stored sensitivity and specificity stay true, with TTA too); a fixed one is
        moved so that its decisions on single-view probabilities stay the same.

        A temperature that makes `split`'s NLL or ECE worse is discarded (the result says so:
        `kept=False`, `worse`) unless `keep_worse`. Images the model was trained on are refused.
        """
        split = _not_test(data, split, "calibrate")
        self._refuse_training_images(data, split, "calibrate")
        out = self.outputs(data, split)
        t = fit_temperature(out.logits, out.labels)
        before = (self.temperature, self.threshold, self.threshold_choice)
        old_t, self.temperature = self.temperature, t
        choice = self.threshold_choice
        if self.threshold is not None and self.binary:
            if choice is not None and choice.method == "target_sensitivity":
                self.choose_threshold(
                    data, choice.split or split, target_sensitivity=choice.target_sensitivity
                )
            else:
                self.threshold = M.rescale_threshold(self.threshold, old_t, t)
                if choice is not None:
                    self.threshold_choice = choice.model_copy(
                        update={"threshold": self.threshold, "temperature": t}
                    )
        nll_before, nll_after = nll(out.logits, out.labels), nll(out.logits, out.labels, t)
        ece_before = M.expected_calibration_error(out.labels, out.probs(), ECE_BINS, self.positive)
        ece_after = M.expected_calibration_error(out.labels, out.probs(t), ECE_BINS, self.positive)
        worse = [
            name
            for name, b, a in (("NLL", nll_before, nll_after), ("ECE", ece_before, ece_after))
            if a > b + 1e-9
        ]
        if worse and not keep_worse:  # leave the model as it was
            self.temperature, self.threshold, self.threshold_choice = before
        self.calibration = CalibrationResult(
            temperature=t,
            split=out.split,
            n_images=len(out.labels),
            tta=self.tta,
            nll_before=nll_before,
            nll_after=nll_after,
            ece_before=ece_before,
            ece_after=ece_after,
            worse=worse,
            kept=keep_worse or not worse,
        )
        return self.calibration

    def choose_threshold(
        self,
        data: str | Path | Dataset | None = None,
        split: str = "val",
        *,
        target_sensitivity: float | None = None,
        threshold: float | None = None,
    ) -> ThresholdChoice:
        """Set the binary operating threshold: fixed, or the largest reaching a target sensitivity.

        The target is met on `split` (validation; test is refused). Only that split's labels and
        probabilities reach `metrics.select_threshold`.
        """
        if not self.binary:
            raise ConfigError("an operating threshold needs exactly two classes")
        if (target_sensitivity is None) == (threshold is None):
            raise ConfigError("give either a target sensitivity or a fixed threshold")
        if threshold is not None:
            if not 0 <= threshold <= 1:
                raise ConfigError(f"threshold must be in [0, 1], not {threshold}")
            choice = ThresholdChoice(
                threshold=threshold, method="fixed", temperature=self.temperature, tta=self.tta
            )
        else:
            if data is None:
                raise ConfigError("a target sensitivity needs data to choose the threshold on")
            split = _not_test(data, split, "choose a threshold")
            self._refuse_training_images(data, split, "choose a threshold")
            out = self.outputs(data, split)
            y_val = (out.labels == self.positive).astype(int)
            p_val = out.probs(self.temperature)[:, self.positive]
            try:
                t = M.select_threshold(y_val, p_val, target_sensitivity)
            except ValueError as exc:
                raise DataError(f"cannot choose a threshold on {out.split}: {exc}") from exc
            at = M.binary_metrics(y_val, p_val, t)
            choice = ThresholdChoice(
                threshold=t,
                method="target_sensitivity",
                target_sensitivity=target_sensitivity,
                split=out.split,
                n_images=len(y_val),
                n_positive=int(y_val.sum()),
                sensitivity=at["sensitivity"],
                specificity=at["specificity"],
                temperature=self.temperature,
                tta=self.tta,
            )
        self.threshold, self.threshold_choice = choice.threshold, choice
        return choice

    def evaluate(
        self,
        data: str | Path | Dataset,
        split: str = "test",
        *,
        n_bootstrap: int = 1000,
        seed: int = 0,
        plots_dir: str | Path | None = None,
    ) -> EvalReport:
        """All metrics of `split` at the current threshold and temperature.

        Args:
            data: A prepared data dir, or a `Dataset` of (image tensor, class index).
            split: Which split of the data dir.
            n_bootstrap: Bootstrap resamples for the 95% confidence intervals (0: none).
            seed: Bootstrap seed; the same seed gives the same intervals.
            plots_dir: If given, write ROC, PR, confusion and reliability PNGs there.
        """
        out = self.outputs(data, split)
        y, probs, probs_raw = out.labels, out.probs(self.temperature), out.probs()
        pred = predict_labels(probs, self.threshold if self.binary else None, self.positive)
        cm = np.zeros((len(self.classes),) * 2, dtype=int)
        np.add.at(cm, (y, pred), 1)
        report: dict[str, Any] = {
            "split": out.split,
            "n_images": len(y),
            "classes": self.classes,
            "positive_class": self.classes[self.positive],
            "loss": nll(out.logits, y),
            "accuracy": float((pred == y).mean()),
            "per_class": [
                ClassResult(
                    name=c,
                    correct=int(cm[k, k]),
                    total=int(cm[k].sum()),
                    predicted=int(cm[:, k].sum()),
                )
                for k, c in enumerate(self.classes)
            ],
            "confusion_matrix": cm.tolist(),
            "threshold": self.threshold if self.binary else None,
            "threshold_source": self._threshold_source(),
            "temperature": self.temperature,
            "tta": self.tta,
            "precision": self.precision,
            "nll": nll(out.logits, y, self.temperature),
            "ece": M.expected_calibration_error(y, probs, ECE_BINS, self.positive),
            "ece_uncalibrated": M.expected_calibration_error(y, probs_raw, ECE_BINS, self.positive),
            "calibration": self.calibration,
            "threshold_choice": self.threshold_choice,
            "training_overlap": self._overlap_report(data, out.split),
        }
        by_task = M.task_metrics(
            y, probs, self.positive, self.threshold, n_bootstrap=n_bootstrap, seed=seed
        )
        for row, auc in zip(report["per_class"], by_task.pop("class_roc_auc", ())):
            row.roc_auc = auc if np.isfinite(auc) else None
        report.update(by_task)
        result = EvalReport.model_validate(_nan_to_none(report))
        if plots_dir is not None:
            result.plots = self._plots(out, result, Path(plots_dir))
        return result

    def training_overlap(self, data: str | Path | Dataset, split: str) -> Overlap | None:
        """Images of `split` the model saw in training, by content hash (None: nothing to compare).

        Needs a checkpoint with a `training_data` record and a data dir (or a `ManifestDataset`).
        """
        if not self.training_data:
            return None
        if isinstance(data, (str, Path)):
            return find_overlap(self.training_data, load_manifest(data), split)
        manifest = getattr(data, "manifest", None)
        if manifest is None:
            return None
        return find_overlap(self.training_data, manifest, getattr(data, "split", split))

    def _overlap_report(self, data: str | Path | Dataset, split: str) -> TrainingOverlap | None:
        ov = self.training_overlap(data, split)
        if ov is None:
            return None
        return TrainingOverlap.of(ov)

    def _refuse_training_images(self, data: str | Path | Dataset, split: str, what: str) -> None:
        """Fitting on images the model was trained on, or on other photos of their lesions: refused."""
        ov = self.training_overlap(data, split)
        reason = ov.refusal(what) if ov is not None else None
        if reason:
            raise DataError(reason)

    def _threshold_source(self) -> str:
        if not self.binary or self.threshold is None:
            return "argmax"
        return self.threshold_choice.describe() if self.threshold_choice else "from checkpoint"

    def _plots(self, out: Outputs, report: EvalReport, folder: Path) -> list[str]:
        from .plots import plot_split

        return plot_split(
            out.labels,
            out.probs(),
            out.probs(self.temperature),
            report.confusion_matrix,
            self.classes,
            Path(folder) / out.split,
            f"{out.split} split, n={len(out.labels)}" + (", TTA" if self.tta else ""),
            temperature=self.temperature,
            threshold=self.threshold if self.binary else None,
            positive=self.positive,
        )

    def save_to_checkpoint(self, report: EvalReport | None = None) -> Path:
        """Store threshold, temperature, their provenance and `report`'s summary in the checkpoint.

        Refused (`CheckpointError`) when the file is no longer the version this evaluator read,
        and (`LockError`) while a training run holds its folder; see `update_checkpoint`.
        """
        if self.checkpoint is None:
            raise ConfigError("this Evaluator was built from a module, not a checkpoint file")
        fields: dict[str, Any] = {
            "threshold": self.threshold,
            "threshold_info": self.threshold_choice.model_dump() if self.threshold_choice else None,
            "temperature": self.temperature,
        }
        if self.calibration is not None and self.calibration.kept:
            fields["calibration"] = self.calibration.model_dump()
        if report is not None:
            summary = report.model_dump(
                exclude={"per_class", "plots", "calibration", "threshold_choice"}
            )
            fields["metrics"] = {**self.checkpoint.metrics, report.split: summary}
        update_checkpoint(self.checkpoint, **fields)
        return self.checkpoint.path


def _not_test(data: Any, split: str, what: str) -> str:
    """`split`, unless it (or the given dataset's own split) is test: fitting there would leak."""
    if "test" in (split, getattr(data, "split", None)):
        raise ConfigError(
            f"refusing to {what} on the test split: fit it on val, then measure test at it"
        )
    return split


def _nan_to_none(d: dict[str, Any]) -> dict[str, Any]:
    """Undefined metrics are NaN in the arrays and None (null in JSON) in the report."""
    return {k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in d.items()}
