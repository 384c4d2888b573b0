"""Evaluate: measure a trained model on one split, choose its operating point and calibrate it on val.

The model runs once per split (logits are collected, then cached); every number after that comes from
arrays, through functions over `Outputs`: `calibration.fit_calibration`, `threshold.choose_threshold`,
`measure.measure`, `plots.plot_report`, `store.store_in_checkpoint`. The `Evaluator` composes them
around one model and its current operating point. Threshold and temperature are fitted on the
validation split only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..data.cells import printable
from ..data.dataset import ManifestDataset, build_transform
from ..data.provenance import Overlap, find_overlap, is_training_data
from ..data.splits import MANIFEST_NAME, Manifest, load_manifest
from ..errors import ConfigError, DataError, opt
from ..inference.decision import positive_index
from ..inference.metadata import context_rows, metadata_encoder, uses_patient_context
from ..models.checkpoint import Checkpoint, load_checkpoint
from ..preprocessing import Preprocessing
from ..runtime import plan_precision, resolve_device
from .calibration import fit_calibration
from .challenge import challenge_metrics
from .classmap import ClassMapping, map_classes, mapped_dataset
from .measure import OperatingPoint, measure
from .outputs import Outputs, collect_outputs
from .report import (
    CalibrationResult,
    ClassResult,
    EvalReport,
    ThresholdChoice,
    TrainingOverlap,
)
from .store import store_in_checkpoint
from .subgroups import MIN_GROUP_N, column_values, subgroup_tables
from .threshold import choose_threshold, fixed_threshold, rescale_choice

__all__ = [
    "CalibrationResult",
    "ClassResult",
    "EvalReport",
    "Evaluator",
    "OperatingPoint",
    "Outputs",
    "ThresholdChoice",
    "TrainingOverlap",
]


def _point_field(name: str) -> property:
    return property(
        lambda self: getattr(self.point, name), lambda self, v: setattr(self.point, name, v)
    )


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
        self.point = OperatingPoint()  # temperature, threshold and how they were set
        self.training_data: dict[str, Any] | None = None  # what the checkpoint was trained on
        self.labels: dict[str, Any] | None = None  # how its classes were made (task, binary map)
        if isinstance(model, (str, Path)):
            model = load_checkpoint(model)
        if isinstance(model, Checkpoint):
            self.checkpoint = model
            classes = classes or model.classes
            preprocessing = preprocessing or model.preprocessing
            info = model.data.get("threshold_info")
            self.point = OperatingPoint(
                model.temperature,
                model.threshold,
                ThresholdChoice.model_validate(info) if info else None,
            )
            self.training_data = model.data.get("training_data")
            self.labels = model.data.get("labels")
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
        self._missing: dict[tuple, list[str]] = {}  # metadata columns no image of a split has
        # (split, name, data dir) of another dataset a threshold/temperature was fitted on
        self._fitted_on: tuple[str, str, str] | None = None
        self._other: dict[str, tuple[str, str] | None] = {}  # `other_data` of each data dir
        self._manifests: dict[tuple, Manifest] = {}  # each data dir's, read once while unchanged

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    # The operating point's parts, as attributes of the evaluator (read and set through `point`).
    temperature = _point_field("temperature")
    threshold = _point_field("threshold")
    threshold_choice = _point_field("threshold_choice")
    calibration = _point_field("calibration")

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
            self._missing[key] = _absent_columns(ds)
        return self._cache[key]

    def missing_inputs(
        self, data: str | Path | Dataset | Outputs, split: str = "test"
    ) -> list[str]:
        """The model's metadata columns that no image of the split has a value for (absent from
        the manifest, or empty throughout): encoded as `unknown` for every image, so its metrics
        are those of the model without them. Empty for an image-only model."""
        if isinstance(data, Outputs):
            return []
        if isinstance(data, (str, Path)):
            key = (str(data), split, self.tta)
        else:
            key = (data, getattr(data, "split", split), self.tta)
        if key not in self._missing:
            self.outputs(data, split)
        return list(self._missing.get(key, []))

    def _manifest(self, data: str | Path) -> Manifest:
        """`load_manifest(data)`, parsed once per data dir while its manifest file is unchanged
        (one evaluation asks for it several times: dataset, class mapping, records, overlap)."""
        try:
            st = os.stat(Path(data) / MANIFEST_NAME)
            key: tuple = (str(data), st.st_mtime_ns, st.st_size)
        except OSError:
            return load_manifest(data)  # its one-line error
        if key not in self._manifests:
            self._manifests = {key: load_manifest(data)}  # the latest data dir only
        return self._manifests[key]

    def _dataset(self, data: str | Path | Dataset, split: str) -> Dataset:
        if not isinstance(data, (str, Path)):
            return data
        manifest = self._manifest(data)
        mapping = None if manifest.classes == self.classes else self.class_mapping(data)
        encoder = metadata_encoder(self.checkpoint) if self.checkpoint is not None else None
        transform = build_transform(self.preprocessing)
        extra = None
        if encoder is not None and uses_patient_context(self.checkpoint):
            # From this split's own images only, as in training.
            extra = context_rows(self.model, manifest, split, transform, self.device)
        if mapping is None:
            return ManifestDataset(manifest, split, transform, metadata=encoder, extra=extra)
        return mapped_dataset(manifest, split, transform, mapping, metadata=encoder, extra=extra)

    def class_mapping(self, data: str | Path | Dataset) -> ClassMapping | None:
        """How a data dir's classes match the model's when they differ (`classmap.map_classes`);
        None when they are the same (or `data` is not a data dir).

        Raises:
            DataError: none of the data's classes matches one of the model's.
        """
        if not isinstance(data, (str, Path)):
            return None
        classes = self._manifest(data).classes
        if classes == self.classes:
            return None
        return map_classes(classes, self.classes, self.labels)

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
        result = fit_calibration(
            self.outputs(data, split), self.positive, tta=self.tta, keep_worse=keep_worse
        )
        result.data = self._other_name(data)
        if result.kept:  # else the model stays as it was
            self._use_temperature(result.temperature, data, split)
            self._note_fit(data, split)
        self.point.calibration = result
        return result

    def _use_temperature(self, t: float, data: str | Path | Dataset, split: str) -> None:
        """Apply temperature `t`; a threshold in use is chosen again at it, or moved to it."""
        p = self.point
        threshold, choice = p.threshold, p.threshold_choice
        if threshold is not None and self.binary:
            if choice is not None and choice.method == "target_sensitivity":
                target = choice.target_sensitivity
                choice = self._choose_on(data, choice.split or split, target, t)
                threshold = choice.threshold
            else:
                threshold, choice = rescale_choice(threshold, choice, p.temperature, t)
        self.point = OperatingPoint(t, threshold, choice, p.calibration)

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
            choice = fixed_threshold(threshold, temperature=self.temperature, tta=self.tta)
        else:
            if data is None:
                raise ConfigError("a target sensitivity needs data to choose the threshold on")
            choice = self._choose_on(data, split, target_sensitivity, self.temperature)
            self._note_fit(data, split)
        self.point.threshold, self.point.threshold_choice = choice.threshold, choice
        return choice

    def _choose_on(
        self, data: str | Path | Dataset, split: str, target: float, temperature: float
    ) -> ThresholdChoice:
        """The threshold reaching `target` on `split` (not test, nor images trained on)."""
        split = _not_test(data, split, "choose a threshold")
        self._refuse_training_images(data, split, "choose a threshold")
        out = self.outputs(data, split)
        choice = choose_threshold(out, target, self.positive, temperature=temperature, tta=self.tta)
        choice.data = self._other_name(data)
        return choice

    def evaluate(
        self,
        data: str | Path | Dataset,
        split: str = "test",
        *,
        n_bootstrap: int = 1000,
        seed: int = 0,
        plots_dir: str | Path | None = None,
        challenge: str | None = None,
        by: list[str] | None = None,
        min_group_n: int = MIN_GROUP_N,
    ) -> EvalReport:
        """All metrics of `split` at the current threshold and temperature.

        Args:
            data: A prepared data dir, or a `Dataset` of (image tensor, class index).
            split: Which split of the data dir.
            n_bootstrap: Bootstrap resamples for the 95% confidence intervals (0: none).
            seed: Bootstrap seed; the same seed gives the same intervals.
            plots_dir: If given, write ROC, PR, confusion and reliability PNGs there.
            challenge: Also compute this ISIC challenge's ranking metric (`challenge.CHALLENGES`).
            by: Manifest columns to report subgroups of (`subgroups`; `age_band` from `age`).
            min_group_n: Groups with fewer images are flagged and left out of the largest gap.
        """
        out = self.outputs(data, split)
        result = measure(
            out,
            self.classes,
            self.point,
            tta=self.tta,
            precision=self.precision,
            overlap=self._overlap_report(data, out.split),
            n_bootstrap=n_bootstrap,
            seed=seed,
        )
        other = self.other_data(data)
        if other is not None:  # stored apart from the model's own metrics (`metrics_key`)
            result.data, result.data_dir = other
        result.missing_inputs = self.missing_inputs(data, split)
        mapping = self.class_mapping(data)
        if mapping is not None:  # external data: which classes were measured, which left out
            result.class_mapping = mapping.counted(
                self._manifest(data).select(out.split), out.split
            )
        if challenge is not None:
            probs = out.probs(self.temperature)
            result.challenge = challenge_metrics(
                challenge, out.labels, probs, self.classes, self.positive
            )
        if by:
            records = self._records(data, out.split)
            result.subgroups = self._subgroups(out, records, by, min_group_n, n_bootstrap, seed)
        if plots_dir is not None:
            from .plots import plot_report  # matplotlib: only when plots are asked for

            result.plots = plot_report(out, result, plots_dir)
        return result

    def _subgroups(self, out, records, by, min_group_n, n_bootstrap, seed) -> list:
        if not self.binary:
            raise ConfigError("by= (subgroup reports) needs a two-class model")
        columns = {c: column_values(records, c) for c in by}
        y = (out.labels == self.positive).astype(int)
        p = out.probs(self.temperature)[:, self.positive]
        return subgroup_tables(
            y,
            p,
            self.threshold,
            columns,
            min_group_n=min_group_n,
            n_bootstrap=n_bootstrap,
            seed=seed,
        )

    def _records(self, data: str | Path | Dataset, split: str) -> list:
        """The manifest records of `split`, in the order the outputs hold them."""
        if isinstance(data, (str, Path)):
            mapping = self.class_mapping(data)
            records = self._manifest(data).select(split)
            return [r for r in records if mapping is None or r.label in mapping.mapped]
        records = getattr(data, "records", None)
        if records is None:
            raise ConfigError("by= needs a data dir or a ManifestDataset (a manifest to group by)")
        return records

    def other_data(self, data: str | Path | Dataset | Outputs) -> tuple[str, str] | None:
        """(folder name, absolute path) of a data dir that is not the one the checkpoint was
        trained on (`provenance.is_training_data`); None when it is, or when nothing tells (no
        training record, or data without a manifest)."""
        key = str(data) if isinstance(data, (str, Path)) else None
        if key is not None and key in self._other:  # a data dir is read once, not per question
            return self._other[key]
        manifest = self._manifest(data) if key is not None else getattr(data, "manifest", None)
        other = None
        if manifest is not None and is_training_data(self.training_data, manifest) is False:
            path = os.path.abspath(manifest.root)  # `..` resolved; a symbolic link keeps its name
            other = printable(os.path.basename(path)), printable(path)
        if key is not None:
            self._other[key] = other
        return other

    def _other_name(self, data: str | Path | Dataset) -> str | None:
        other = self.other_data(data)
        return other[0] if other is not None else None

    def _note_fit(self, data: str | Path | Dataset, split: str) -> None:
        other = self.other_data(data)
        if other is not None:
            self._fitted_on = (split, *other)

    def training_overlap(self, data: str | Path | Dataset, split: str) -> Overlap | None:
        """Images of `split` the model saw in training, by content hash (None: nothing to compare).

        Needs a checkpoint with a `training_data` record and a data dir (or a `ManifestDataset`).
        """
        if not self.training_data:
            return None
        if isinstance(data, (str, Path)):
            return find_overlap(self.training_data, self._manifest(data), split)
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

    def save_to_checkpoint(self, report: EvalReport | None = None) -> Path:
        """Store threshold, temperature, their provenance and `report`'s summary in the checkpoint.

        Refused (`CheckpointError`) when the file is no longer the version this evaluator read,
        and (`LockError`) while a training run holds its folder; see `update_checkpoint`.
        """
        if self.checkpoint is None:
            raise ConfigError("this Evaluator was built from a module, not a checkpoint file")
        if self._fitted_on is not None:
            raise ConfigError(refuse_storing_fit(*self._fitted_on, self.checkpoint.path))
        return store_in_checkpoint(self.checkpoint, self.point, report)


def refuse_storing_fit(split: str, name: str, data_dir: str, path: Path) -> str:
    """Why a threshold/temperature fitted on another dataset is not stored in the checkpoint."""
    return (
        f"not stored: the threshold/temperature was fitted on the {split} split of {name} "
        f"({data_dir}), not on data the model was trained on, and {path} would use it for every "
        f"prediction; measure with it without {opt('save')}, or fit it on the model's own val split"
    )


def _absent_columns(ds: Dataset) -> list[str]:
    """The encoder's columns whose missing indicator is set in every row of a fused model's
    dataset (none for an image-only one, or an empty split)."""
    matrix, encoder = getattr(ds, "metadata_matrix", None), getattr(ds, "metadata", None)
    if matrix is None or encoder is None or not len(matrix):
        return []
    out, end = [], 0
    for c in encoder.columns:  # each column's block ends with its missing indicator
        end += c.width
        if bool((matrix[:, end - 1] == 1.0).all()):
            out.append(c.name)
    return list(dict.fromkeys(out))  # an ensemble's encoder repeats its members' columns


def _not_test(data: Any, split: str, what: str) -> str:
    """`split`, unless it (or the given dataset's own split) is test, or all (which holds test):
    fitting there would leak."""
    given = (split, getattr(data, "split", None))
    if "test" in given:
        raise ConfigError(
            f"refusing to {what} on the test split: fit it on val, then measure test at it"
        )
    if "all" in given:
        raise ConfigError(
            f"refusing to {what} on the all split (it holds the test images): fit it on val, "
            "then measure at it"
        )
    return split
