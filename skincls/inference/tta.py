"""Test-time augmentation: the 8 dihedral views of a lesion image, and model logits over them."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["dihedral_views", "model_logits"]


def dihedral_views(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flips and 90° turns of a square image batch (N, C, H, W); the first is `x` itself.

    A lesion has no canonical orientation, so every view is an equally valid picture of it.
    """
    flipped = x.flip(-1)
    return [torch.rot90(v, k, dims=(-2, -1)) for v in (x, flipped) for k in range(4)]


@torch.inference_mode()
def model_logits(
    model: nn.Module, x: torch.Tensor, tta: bool = False, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Float32 logits (N, C), or with test-time augmentation (N, 8, C), one row per dihedral view.

    Views are kept apart (not averaged here) so that a temperature can be applied per view before
    the softmaxes are averaged (`decision.softmax` does the averaging). `dtype` is the autocast
    precision (None: float32); images go in channels_last, the faster layout for convolutions.
    """
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
        if not tta:
            return model(x).float()
        return torch.stack([model(v).float() for v in dihedral_views(x)], dim=1)
