"""Out-of-fold predictions: a fold model's logits on the images it did not train on, all folds' put
together, the operating point chosen on them, and what they measure.

Every function after `heldout_logits` works on arrays (`Outputs`): no model runs there.
"""

from __future__ import annotations

import copy
import csv
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_write
from ..config import TrainConfig
from ..data.dataset import ManifestDataset
from ..errors import ConfigError, opt
from ..evaluation.calibration import fit_calibration
from ..evaluation.evaluator import Evaluator
from ..evaluation.measure import OperatingPoint, measure
from ..evaluation.outputs import Outputs
from ..evaluation.report import EvalReport
from ..evaluation.subgroups import MIN_GROUP_N, column_values, subgroup_tables
from ..evaluation.threshold import choose_threshold, fixed_threshold
from ..inference.decision import positive_index, predict_labels
from ..models.checkpoint import Checkpoint
from ..runtime import resolve_device
from ..training.contract import cache_split
from ..training.pool import FeaturePool
from .folds import record_group
from .report import summarise_folds

__all__ = [
    "OOF_SPLIT",
    "OOFMeasured",
    "fit_operating_point",
    "gather_oof",
    "heldout_logits",
    "measure_oof",
    "plot_oof_subgroups",
    "subgroup_columns",
    "write_oof_csv",
]

OOF_SPLIT = "out-of-fold"

log = logging.getLogger(__name__)


def heldout_logits(
    ckpt: Checkpoint,
    held_out: ManifestDataset,
    pool: FeaturePool,
    train: TrainConfig,
    *,
    tta: bool = False,
    backbone: nn.Module | None = None,
) -> tuple[np.ndarray, str]:
    """Logits of `ckpt`'s model on `held_out`: (N, C), or (N, 8, C) with TTA; and where they came from.

    A frozen backbone whose features the pool holds already (extracted once for every fold) needs
    only its head run on them: the same numbers the trainer validated on. Otherwise (fine-tuned
    backbone, TTA) the model runs on the images, as `evaluate` runs it.
    """
    model = ckpt.build_model(copy.deepcopy(backbone) if backbone is not None else None)
    device = resolve_device(train.device)
    if not tta:
        fs = pool.lookup(model, held_out)
        if fs is not None:
            # The part after the cached features: the head (with metadata: its branch and head).
            head = (cache_split(model) or (None, model.head))[1].to(device).eval()
            out = []
            with torch.inference_mode():
                for i in range(0, len(fs), train.inference_batch_size):
                    x, _ = fs.batch(torch.arange(i, min(i + train.inference_batch_size, len(fs))))
                    out.append(head(x.to(device)).float().cpu())
            return torch.cat(out).numpy(), "head on the pooled features"
    ev = Evaluator(
        model,
        classes=ckpt.classes,
        preprocessing=ckpt.preprocessing,
        device=train.device,
        batch_size=train.inference_batch_size,
        tta=tta,
        precision=train.precision,
    )
    return ev.outputs(held_out).logits, "model on the images" + (" with TTA" if tta else "")


def gather_oof(cv_dir: Path, completed: list[dict[str, Any]], n: int) -> Outputs:
    """Every fold's held-out logits (its `oof` file) put back in pool order: each image exactly once.

    Args:
        cv_dir: The CV directory the entries' `oof` paths are relative to.
        completed: The folds' entries in `cv_state.json` (`oof`: an .npz of rows, logits, labels).
        n: Images in the pool.
    """
    logits: np.ndarray | None = None
    labels = np.full(n, -1, dtype=np.int64)
    seen = np.zeros(n, dtype=np.int64)
    for entry in completed:
        with np.load(cv_dir / entry["oof"]) as z:
            rows, lg, lb = z["rows"], z["logits"], z["labels"]
        if logits is None:
            logits = np.zeros((n, *lg.shape[1:]), dtype=np.float32)
        logits[rows], labels[rows] = lg, lb
        seen[rows] += 1
    if logits is None or not (seen == 1).all():
        raise ConfigError(f"{cv_dir}: out-of-fold predictions do not cover every image once")
    return Outputs(OOF_SPLIT, logits, labels)


def fit_operating_point(
    oof: Outputs,
    classes: list[str],
    *,
    calibrate: bool = True,
    target_sensitivity: float | None = None,
    threshold: float | None = None,
    tta: bool = False,
) -> OperatingPoint:
    """Temperature, then threshold, chosen on the out-of-fold predictions (as `evaluate` does on val).

    A temperature that makes their NLL or ECE worse is discarded, and a warning says so in the
    words `evaluate` uses.
    """
    positive = positive_index(classes)
    point = OperatingPoint()
    if calibrate:
        cal = fit_calibration(oof, positive, tta=tta)
        point = OperatingPoint(cal.temperature if cal.kept else 1.0, calibration=cal)
        if not cal.kept:
            log.warning(cal.worse_notice(point.temperature))
    if target_sensitivity is None and threshold is None:
        return point
    if len(classes) != 2:
        raise ConfigError("an operating threshold needs exactly two classes")
    if threshold is not None:
        choice = fixed_threshold(threshold, temperature=point.temperature, tta=tta)
    else:
        choice = choose_threshold(
            oof, target_sensitivity, positive, temperature=point.temperature, tta=tta
        )
    point.threshold, point.threshold_choice = choice.threshold, choice
    return point


@dataclass
class OOFMeasured:
    """The out-of-fold report, each fold's held-out metrics, and their mean and spread over folds."""

    report: EvalReport
    per_fold: list[dict[str, Any]]
    mean: dict[str, float | None]
    std: dict[str, float | None]


def measure_oof(
    oof: Outputs,
    fold: np.ndarray,
    classes: list[str],
    point: OperatingPoint,
    *,
    tta: bool = False,
    precision: str = "fp32",
    n_bootstrap: int = 1000,
    seed: int = 0,
    columns: dict[str, Sequence[str]] | None = None,
    min_group_n: int = MIN_GROUP_N,
) -> OOFMeasured:
    """`evaluate`'s report on the out-of-fold predictions, and on each fold's share of them.

    `columns` (`subgroup_columns`: each value per OOF row) adds the report's subgroup tables, at
    `point`'s threshold, groups under `min_group_n` images flagged.
    """
    report = measure(
        oof, classes, point, tta=tta, precision=precision, n_bootstrap=n_bootstrap, seed=seed
    )
    if columns:
        positive = positive_index(classes)
        y = (oof.labels == positive).astype(int)
        p = oof.probs(point.temperature)[:, positive]
        report.subgroups = subgroup_tables(
            y, p, point.threshold, columns, min_group_n=min_group_n, n_bootstrap=n_bootstrap,
            seed=seed,
        )  # fmt: skip
    per_fold = []
    for k in range(int(fold.max()) + 1):
        sel = fold == k
        held = Outputs(f"fold {k}", oof.logits[sel], oof.labels[sel])
        r = measure(held, classes, point, tta=tta, precision=precision, n_bootstrap=0)
        per_fold.append(r.model_dump())
    mean, std = summarise_folds(per_fold)
    return OOFMeasured(report, per_fold, mean, std)


def subgroup_columns(
    records: Sequence, classes: list[str], by: list[str] | None
) -> dict[str, list[str]]:
    """Each `by` column's value per pool record (the OOF rows' order): checked before any fold
    trains, so that a column the manifest lacks costs no training."""
    if not by:
        return {}
    if len(classes) != 2:
        raise ConfigError(
            f"subgroup reports ({opt('by')}) need two classes; this data has {len(classes)}"
        )
    return {c: column_values(records, c) for c in by}


def plot_oof_subgroups(report: EvalReport, folder: Path) -> list[str]:
    """The subgroup tables' forest plots in `folder` (`out-of-fold_subgroups_<column>.png`), their
    paths also added to `report.plots`."""
    if not report.subgroups:
        return []
    from ..evaluation.plots import plot_subgroup_tables  # matplotlib: only when asked for

    tag = f"{report.split}, n={report.n_images}" + (", TTA" if report.tta else "")
    paths = plot_subgroup_tables(report.subgroups, folder, report.split, tag)
    report.plots = [*report.plots, *paths]
    return paths


def write_oof_csv(
    path: Path,
    records,
    fold: np.ndarray,
    oof: Outputs,
    classes: list[str],
    point: OperatingPoint,
    fold_groups: Sequence[str],
) -> None:
    """One row per pool image: its group (`record_group`: lesion, patient or duplicate cluster), the
    unit its fold held out whole (`fold_group`: the same, or with `group_by` e.g. `source:vienna`),
    its fold, calibrated probabilities and the decision at the threshold; as folds.csv has them."""
    probs = oof.probs(point.temperature)
    binary = len(classes) == 2
    pred = predict_labels(probs, point.threshold if binary else None, positive_index(classes))
    buf = io.StringIO()
    writer = csv.writer(buf)
    head = ["path", "label", "group", "fold_group", "fold"]
    writer.writerow([*head, *(f"p_{c}" for c in classes), "predicted"])
    for r, g, k, p, y in zip(records, fold_groups, fold, probs, pred):
        row = [r.path, r.label, record_group(r), g, int(k)]
        writer.writerow([*row, *(f"{v:.6f}" for v in p), classes[y]])
    with atomic_write(path, "w", newline="") as fh:
        fh.write(buf.getvalue())
