"""A model's raw outputs on one split: run it once over the images, keep logits and labels.

Everything the evaluator reports is computed from these arrays afterwards (`skincls.evaluation.metrics`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..errors import DataError, ModelError, opt
from ..inference.decision import softmax
from ..inference.metadata import with_inputs
from ..inference.tta import model_logits

__all__ = ["Outputs", "collect_outputs"]


@dataclass
class Outputs:
    """A model's raw outputs on one split: logits (N, C), or (N, V, C) with TTA, and labels (N,)."""

    split: str
    logits: np.ndarray
    labels: np.ndarray

    def probs(self, temperature: float = 1.0) -> np.ndarray:
        return softmax(self.logits, temperature)


def collect_outputs(
    model: nn.Module,
    ds: Dataset,
    split: str,
    *,
    device: torch.device,
    batch_size: int,
    tta: bool,
    dtype: torch.dtype | None,
    num_workers: int = 0,
    progress: Callable[[int, int, str], None] | None = None,
) -> Outputs:
    """Run `model` (eval mode, on `device`) over `ds` once; NaN or infinite outputs are an error.

    Worker processes (`num_workers`) decode the next batches while the model runs on this one.
    """
    logits, labels = [], []
    loader = DataLoader(
        ds, batch_size=batch_size, num_workers=num_workers, pin_memory=device.type == "cuda"
    )
    done = 0
    for *inputs, y in loader:
        x = inputs[0].to(device, non_blocking=True)
        # A fused model's further inputs (metadata) go with the images, the same in every TTA view.
        extra = [t.to(device, non_blocking=True) for t in inputs[1:]]
        run = with_inputs(model, extra) if extra else model
        logits.append(model_logits(run, x, tta, dtype).cpu())
        labels.append(torch.as_tensor(y))
        done += len(x)
        if progress is not None:
            progress(done, len(ds), f"{split} split")
    if not labels:
        raise DataError(f"the {split} split has no images")
    out = Outputs(split, torch.cat(logits).numpy(), torch.cat(labels).numpy().astype(int))
    bad = int((~np.isfinite(out.logits)).reshape(len(out.labels), -1).any(1).sum())
    if bad:  # metrics on NaN would be a traceback or, worse, a number
        raise ModelError(
            f"the model's outputs are NaN or infinite on {bad} of {len(out.labels)} "
            f"{split} images, so nothing was measured (an overflow: try "
            f"{opt('precision', value='fp32')})"
        )
    return out
