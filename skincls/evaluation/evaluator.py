"""Evaluate: measure a trained model on one split, choose its operating point and calibrate it on val.

The model runs once per split (logits are collected, then cached); every number after that comes from
arrays through `skincls.metrics`. Threshold and temperature are fitted on the validation split only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.dataset import ManifestDataset, build_transform
from ..data.provenance import Overlap, find_overlap
from ..data.splits import load_manifest
from ..errors import ConfigError, DataError, ModelError
from ..inference.decision import positive_index, predict_labels, softmax
from ..inference.tta import model_logits
from ..models.checkpoint import Checkpoint, load_checkpoint, update_checkpoint
from ..preprocessing import Preprocessing
from ..runtime import plan_precision, resolve_device
from . import metrics as M
from .calibration import fit_temperature, nll
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
    "evaluate_checkpoint",
]


@dataclass
class Outputs:
    """A model's raw outputs on one split: logits (N, C), or (N, V, C) with TTA, and labels (N,)."""

    split: str
    logits: np.ndarray
    labels: np.ndarray

    def probs(self, temperature: float = 1.0) -> np.ndarray:
        return softmax(self.logits, temperature)


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
            logits, labels = [], []
            # Worker processes decode the next batches while the model runs on this one.
            loader = DataLoader(
                ds,
                batch_size=self.batch_size,
                num_workers=self.num_workers,
                pin_memory=self.device.type == "cuda",
            )
            done = 0
            for x, y in loader:
                x = x.to(self.device, non_blocking=True)
                logits.append(model_logits(self.model, x, self.tta, self._dtype).cpu())
                labels.append(torch.as_tensor(y))
                done += len(x)
                if self.progress is not None:
                    self.progress(done, len(ds), f"{split} split")
            if not labels:
                raise DataError(f"the {split} split has no images")
            out = Outputs(split, torch.cat(logits).numpy(), torch.cat(labels).numpy().astype(int))
            bad = int((~np.isfinite(out.logits)).reshape(len(out.labels), -1).any(1).sum())
            if bad:  # metrics on NaN would be a traceback or, worse, a number
                raise ModelError(
                    f"the model's outputs are NaN or infinite on {bad} of {len(out.labels)} "
                    f"{split} images, so nothing was measured (an overflow: try --precision fp32)"
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
        if self.binary:
            yb, pb = (y == self.positive).astype(int), probs[:, self.positive]
            binary = M.binary_metrics(yb, pb, self.threshold)
            binary.pop("confusion_matrix")  # the class-ordered one above is the same counts
            report.update(binary)
            if n_bootstrap:
                report["ci"] = M.bootstrap_ci(
                    yb, pb, self.threshold, n_resamples=n_bootstrap, seed=seed
                )
                report.update(bootstrap_resamples=n_bootstrap, bootstrap_seed=seed)
        else:
            multi = M.multiclass_metrics(y, probs)
            report.update(
                balanced_accuracy=multi["balanced_accuracy"],
                roc_auc=multi["roc_auc"],
                roc_auc_classes=multi["roc_auc_classes"],
                brier=multi["brier"],
            )
            for row, auc in zip(report["per_class"], multi["class_roc_auc"]):
                row.roc_auc = auc if np.isfinite(auc) else None
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
        return TrainingOverlap(
            split=ov.split,
            n_images=ov.n_images,
            in_train=ov.in_train,
            in_val=ov.in_val,
            same_data_dir=ov.same_data_dir,
            lesion_in_train=ov.lesion_in_train,
            lesion_in_val=ov.lesion_in_val,
            message=ov.describe() if ov.any else None,
        )

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
        from . import plots

        folder.mkdir(parents=True, exist_ok=True)
        tag = f"{out.split} split, n={len(out.labels)}" + (", TTA" if self.tta else "")
        stem = folder / out.split
        written = [
            plots.plot_confusion(
                report.confusion_matrix, self.classes, f"{stem}_confusion.png", tag
            )
        ]
        y = out.labels
        probs = out.probs(self.temperature)
        if self.binary and len(np.unique(y)) == 2:
            yb, pb = (y == self.positive).astype(int), probs[:, self.positive]
            pos = self.classes[self.positive]
            written.append(plots.plot_roc(yb, pb, f"{stem}_roc.png", tag, self.threshold, pos))
            written.append(plots.plot_pr(yb, pb, f"{stem}_pr.png", tag, self.threshold, pos))
        after = probs if self.temperature != 1.0 else None
        written.append(
            plots.plot_reliability(
                y,
                out.probs(),
                f"{stem}_reliability.png",
                tag,
                after,
                self.temperature,
                ECE_BINS,
                self.classes[self.positive],
                self.positive,
            )
        )
        return [str(p) for p in written]

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


def evaluate_checkpoint(
    checkpoint: str | Path | Checkpoint,
    data_dir: str | Path,
    split: str = "test",
    *,
    calibrate: bool = False,
    target_sensitivity: float | None = None,
    threshold: float | None = None,
    tta: bool = False,
    plots_dir: str | Path | None = None,
    device: str = "auto",
    backbone: nn.Module | None = None,
    save: bool = False,
    keep_worse_calibration: bool = False,
    n_bootstrap: int = 1000,
    seed: int = 0,
    precision: str = "auto",
    num_workers: int = 0,
    progress: Callable[[int, int, str], None] | None = None,
) -> EvalReport:
    """What `skincls evaluate` does: optionally calibrate and choose a threshold on val, then measure.

    Calibration comes first, so a threshold is chosen on the calibrated probabilities that predict
    shows; a temperature that makes val NLL or ECE worse is discarded unless
    `keep_worse_calibration`. Only with `save` is the checkpoint file changed: what was fitted or
    set and this report's summary are stored (refused if the file changed since it was read).
    """
    if save and isinstance(checkpoint, (str, Path)):
        checkpoint = load_checkpoint(checkpoint, for_update=True)
    ev = Evaluator(
        checkpoint,
        backbone=backbone,
        device=device,
        tta=tta,
        precision=precision,
        num_workers=num_workers,
        progress=progress,
    )
    if calibrate:
        ev.calibrate(data_dir, "val", keep_worse=keep_worse_calibration)
    if target_sensitivity is not None or threshold is not None:
        ev.choose_threshold(
            data_dir, "val", target_sensitivity=target_sensitivity, threshold=threshold
        )
    report = ev.evaluate(data_dir, split, n_bootstrap=n_bootstrap, seed=seed, plots_dir=plots_dir)
    if save:
        ev.save_to_checkpoint(report)
    return report
