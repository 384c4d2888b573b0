"""Weight EMA: an exponential moving average of a model's weights, the model that is validated and kept.

`WeightEMA` holds one spare copy of the model's state: while an epoch trains, the model holds the
raw weights and the spare the average; for validation, callbacks and checkpoints the two are
swapped, so best.pt and last.pt hold the average, and last.pt's training state holds the raw
weights that training continues from.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["WeightEMA"]


class WeightEMA:
    """avg ← d·avg + (1 − d)·w after every optimizer step, with d = min(decay, (1 + t)/(10 + t)).

    The warmup of d (TensorFlow's `num_updates`, timm's ModelEmaV2) keeps the first steps from
    tying the average to the initial weights. Floating-point buffers (BatchNorm statistics) are
    averaged like the weights; integer ones (batch counts) are copied.
    """

    def __init__(self, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.spare: dict[str, torch.Tensor] | None = None  # whichever weights the model lacks
        self.in_model = "raw"  # what the model holds now: "raw" or "ema"

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards the model's (raw) weights; after each optimizer step."""
        if self.in_model != "raw":
            raise RuntimeError("the EMA is updated from the raw weights; swap them back first")
        if self.spare is None:
            self.spare = {k: v.detach().clone() for k, v in model.state_dict().items()}
        d = self.current_decay()
        # A frozen parameter never moves, so its average stays what it is: only trainable
        # parameters and the buffers are averaged (a frozen VGG16 backbone is 15M weights a step).
        moving = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
        moving += list(model.named_buffers())
        for k, v in moving:
            avg = self.spare.get(k)
            if avg is None:  # a non-persistent buffer: not in the state dict, not averaged
                continue
            if avg.is_floating_point():
                avg.lerp_(v.detach().to(avg.dtype), 1 - d)
            else:
                avg.copy_(v)
        self.updates += 1

    @torch.no_grad()
    def use(self, model: nn.Module, which: str) -> None:
        """Put the "ema" or the "raw" weights into `model` (the other set goes to the spare)."""
        if which == self.in_model or self.spare is None:
            return
        for k, v in model.state_dict().items():
            held = v.detach().clone()
            v.copy_(self.spare[k])
            self.spare[k] = held
        self.in_model = which

    def state_dict(self) -> dict[str, Any]:
        """The update count and the weights the model does not hold (the raw ones, at a checkpoint)."""
        spare = None if self.spare is None else {k: v.cpu() for k, v in self.spare.items()}
        return {
            "decay": self.decay,
            "updates": self.updates,
            "spare": spare,
            "in_model": self.in_model,
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device | None = None) -> None:
        self.updates = int(state["updates"])
        self.in_model = state["in_model"]
        spare = state["spare"]
        self.spare = None if spare is None else {k: v.to(device) for k, v in spare.items()}
