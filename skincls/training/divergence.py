"""Divergence guard: a loss or weights that leave the finite numbers stop training with one line.

A diverged run (too high a learning rate, fp16 overflow) otherwise trains on NaN, and its NaN model
becomes `best.pt` (NaN compares as neither better nor worse, so the first epoch "improves").
"""

from __future__ import annotations

from torch import nn

from ..errors import TrainingError, opt
from ..models.checkpoint_checks import first_nonfinite

__all__ = ["diverged", "nonfinite_weight"]


def nonfinite_weight(model: nn.Module) -> str | None:
    """The name of the first trainable parameter or floating buffer holding NaN or inf, or None.

    Frozen parameters are skipped: they do not change during training.
    """
    return first_nonfinite(
        [
            *((n, p) for n, p in model.named_parameters() if p.requires_grad),
            *model.named_buffers(),
        ]
    )


def diverged(epoch: int, phase: str, what: str, *, lr: float, fp16: bool) -> TrainingError:
    """The one-line error for a run whose loss or weights became NaN or infinite."""
    amp = f", or {opt('train.precision', value='fp32')}" if fp16 else ""
    return TrainingError(
        f"training diverged in epoch {epoch} ({phase} phase): {what}; nothing of this epoch was "
        f"saved. Train again with a lower {opt('train.lr')} (this run: {lr:g}){amp}"
    )
