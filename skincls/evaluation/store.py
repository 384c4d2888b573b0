"""Store what evaluation fitted (threshold, temperature, their provenance) and measured in a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..models.checkpoint import Checkpoint, update_checkpoint
from .measure import OperatingPoint
from .report import EvalReport

__all__ = ["report_summary", "store_in_checkpoint"]


def report_summary(report: EvalReport) -> dict[str, Any]:
    """A report's numbers as a checkpoint keeps them (`metrics[report.metrics_key]`): no per-class
    rows or plots."""
    exclude = {"per_class", "plots", "calibration", "threshold_choice", "metrics_key"}
    return report.model_dump(exclude=exclude)


def store_in_checkpoint(
    checkpoint: Checkpoint, point: OperatingPoint, report: EvalReport | None = None
) -> Path:
    """Write `point` (and `report`'s summary under its `metrics_key`) into the checkpoint file;
    its path. The key of another dataset's report names that data (`ddi:test`), so the model's
    own `test` stays; one holding another data dir's of the same name is refused (`ConfigError`).

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
        _check_same_data_dir(checkpoint, report)
        fields["metrics"] = {**checkpoint.metrics, report.metrics_key: report_summary(report)}
    update_checkpoint(checkpoint, **fields)
    return checkpoint.path


def _check_same_data_dir(checkpoint: Checkpoint, report: EvalReport) -> None:
    """Refuse to replace another data dir's stored metrics that has the same folder name."""
    stored = checkpoint.metrics.get(report.metrics_key)
    before = stored.get("data_dir") if isinstance(stored, dict) else None
    if report.data is None or before in (None, report.data_dir):
        return
    raise ConfigError(
        f"not stored: {checkpoint.path} keeps the metrics of another data dir named "
        f"{report.data} ({before}) under {report.metrics_key}; nothing was changed: measure "
        "this one from a folder of another name (a symbolic link will do)"
    )
