"""What `skincls evaluate` does, as one call: calibrate and choose a threshold on val, then measure."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from ..errors import ConfigError, opt
from ..models.checkpoint import Checkpoint, load_checkpoint
from .evaluator import Evaluator, refuse_storing_fit
from .report import EvalReport

__all__ = ["evaluate_checkpoint"]


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
    challenge: str | None = None,
    by: list[str] | None = None,
    min_group_n: int = 30,
    precision: str = "auto",
    num_workers: int = 0,
    progress: Callable[[int, int, str], None] | None = None,
) -> EvalReport:
    """What `skincls evaluate` does: optionally calibrate and choose a threshold on val, then measure.

    Calibration comes first, so a threshold is chosen on the calibrated probabilities that predict
    shows; a temperature that makes val NLL or ECE worse is discarded unless
    `keep_worse_calibration`. Only with `save` is the checkpoint file changed: what was fitted or
    set and this report's summary are stored (refused if the file changed since it was read):
    another dataset's under `<data dir name>:<split>` (`EvalReport.metrics_key`), never over the
    model's own; a threshold or temperature fitted on another dataset is not stored (refused).
    `challenge` adds that ISIC challenge's own ranking metric (`skincls.evaluation.challenge`);
    `by` adds subgroup tables of those manifest columns (`skincls.evaluation.subgroups`).
    """
    if split == "all" and (calibrate or target_sensitivity is not None):
        raise ConfigError(
            f"{opt('calibrate')} and {opt('target_sensitivity')} fit on the val split, which "
            f"{opt('split', value='all')} measures too: fit them on the model's own data first "
            f"(with {opt('save')}), then measure all splits at them"
        )
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
    other = ev.other_data(data_dir) if save else None
    if other is not None and (calibrate or target_sensitivity is not None):  # before any work
        raise ConfigError(refuse_storing_fit("val", *other, ev.checkpoint.path))
    if calibrate:
        ev.calibrate(data_dir, "val", keep_worse=keep_worse_calibration)
    if target_sensitivity is not None or threshold is not None:
        ev.choose_threshold(
            data_dir, "val", target_sensitivity=target_sensitivity, threshold=threshold
        )
    report = ev.evaluate(
        data_dir,
        split,
        n_bootstrap=n_bootstrap,
        seed=seed,
        plots_dir=plots_dir,
        challenge=challenge,
        by=by,
        min_group_n=min_group_n,
    )
    if save:
        ev.save_to_checkpoint(report)
    return report
