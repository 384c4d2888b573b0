"""Out-of-fold predictions: a fold model's logits on the images it did not train on."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ..config import TrainConfig
from ..data.dataset import ManifestDataset
from ..evaluation.evaluator import Evaluator
from ..models.checkpoint import Checkpoint
from ..runtime import resolve_device
from ..training.pool import FeaturePool

__all__ = ["heldout_logits"]


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
            head = model.head.to(device).eval()
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
