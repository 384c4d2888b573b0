"""Operating threshold: the binary decision rule on P(positive), fixed or chosen on validation outputs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError, DataError
from . import metrics as M
from .report import ThresholdChoice

if TYPE_CHECKING:
    from .outputs import Outputs

__all__ = ["choose_threshold", "fixed_threshold", "rescale_choice"]


def fixed_threshold(
    threshold: float, *, temperature: float = 1.0, tta: bool = False
) -> ThresholdChoice:
    """A threshold the user gave, for probabilities at `temperature`; it must lie in [0, 1]."""
    if not 0 <= threshold <= 1:
        raise ConfigError(f"threshold must be in [0, 1], not {threshold}")
    return ThresholdChoice(threshold=threshold, method="fixed", temperature=temperature, tta=tta)


def choose_threshold(
    out: Outputs,
    target_sensitivity: float,
    positive: int = 1,
    *,
    temperature: float = 1.0,
    tta: bool = False,
) -> ThresholdChoice:
    """The largest threshold on P(positive) at `temperature` reaching the target sensitivity on `out`.

    Only `out`'s labels and probabilities reach `metrics.select_threshold`; callers pass a validation
    split (or out-of-fold predictions), never test. The choice records what it achieved there.

    Raises:
        DataError: `out` has no positive image, or the target is outside (0, 1].
    """
    y = (out.labels == positive).astype(int)
    p = out.probs(temperature)[:, positive]
    try:
        t = M.select_threshold(y, p, target_sensitivity)
    except ValueError as exc:
        raise DataError(f"cannot choose a threshold on {out.split}: {exc}") from exc
    at = M.binary_metrics(y, p, t)
    return ThresholdChoice(
        threshold=t,
        method="target_sensitivity",
        target_sensitivity=target_sensitivity,
        split=out.split,
        n_images=len(y),
        n_positive=int(y.sum()),
        sensitivity=at["sensitivity"],
        specificity=at["specificity"],
        temperature=temperature,
        tta=tta,
    )


def rescale_choice(
    threshold: float, choice: ThresholdChoice | None, old_t: float, new_t: float
) -> tuple[float, ThresholdChoice | None]:
    """A threshold (and its record) moved to a new temperature so that its decisions stay the same.

    Exact for single-view probabilities; a threshold chosen for a target sensitivity (with TTA too)
    is better chosen again at the new temperature (`choose_threshold`).
    """
    moved = M.rescale_threshold(threshold, old_t, new_t)
    if choice is None:
        return moved, None
    return moved, choice.model_copy(update={"threshold": moved, "temperature": new_t})
