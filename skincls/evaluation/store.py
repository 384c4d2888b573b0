"""Store what evaluation fitted (threshold, temperature, their provenance) and measured in a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..models.checkpoint import Checkpoint, update_checkpoint
from .measure import OperatingPoint
from .report import EvalReport

__all__ = ["report_summary", "store_in_checkpoint"]


def report_summary(report: EvalReport) -> dict[str, Any]:
    """A report's numbers as a checkpoint keeps them (`metrics[split]`): no per-class rows or plots."""
    return report.model_dump(exclude={"per_class", "plots", "calibration", "threshold_choice"})


def store_in_checkpoint(
    checkpoint: Checkpoint, point: OperatingPoint, report: EvalReport | None = None
) -> Path:
    """Write `point` (and `report`'s summary under its split) into the checkpoint file; its path.

    A calibration that was discarded (`kept=False`) is not stored. Refused (`CheckpointError`) when
    the file is no longer the version `checkpoint` was read from, and (`LockError`) while a
    training run holds its folder; see `update_checkpoint`.
    """
    choice = point.threshold_choice
    fields: dict[str, Any] = {
        "threshold": point.threshold,
        "threshold_info": choice.model_dump() if choice else None,
        "temperature": point.temperature,
    }
    if point.calibration is not None and point.calibration.kept:
        fields["calibration"] = point.calibration.model_dump()
    if report is not None:
        fields["metrics"] = {**checkpoint.metrics, report.split: report_summary(report)}
    update_checkpoint(checkpoint, **fields)
    return checkpoint.path
