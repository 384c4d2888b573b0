"""The model contract: what a model may tell the trainer, through methods it may define (all optional).

The trainer knows no model class. It asks the model what it needs, as minGPT's `configure_optimizers`
and Lightning's hooks do; a plain `nn.Module` with none of these methods trains as one whole model,
all of its trainable parameters in one group at the configured learning rate.

- `param_groups(phase) -> list[dict]`: the optimizer's parameter groups for `phase`, each a dict with
  `params`, `lr` and a `name` (frozen parameters are left out); the model decides, e.g., that a pretrained part
  learns at `phase.lr * phase.backbone_lr_mult` while fine-tuning. Default: one group "model".
- `freeze(phase) -> None`: set `requires_grad` (and eval modes) for what trains in `phase`; called at
  every phase's start, before the optimizer is built. `phase.freeze` is the configured policy (None:
  keep the model as it is). A run with `finetune_epochs` needs it. Default: nothing changes.
- `split_for_cache() -> (extractor, rest) | None`: two modules with
  `model(*inputs) == rest(extractor(*inputs))`, `extractor` mapping a batch's inputs to (N, D)
  features. While `extractor` has no trainable parameter (checked at each phase's start) and the data
  is deterministic, the trainer computes its features once (the feature cache) and trains `rest` on
  them. Default: None (the model always runs whole).
- `split_batch(batch) -> (inputs, target)`: a batch as the DataLoader collates it (or one dataset item)
  into the model's inputs and the class targets. `inputs` is a tuple (positional arguments) or a dict
  (keyword arguments). Default (`split_batch` below): a tuple or list `(*inputs, target)`, e.g.
  `(image, metadata, target)`, or a dict whose "target" entry is the target and whose other entries
  are the inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from ..config import TrainConfig
from ..errors import ConfigError, DataError, opt

__all__ = [
    "Inputs",
    "Phase",
    "TrainableModel",
    "batch_splitter",
    "cache_split",
    "forward_inputs",
    "freeze_for",
    "inputs_to_device",
    "param_groups_for",
    "plan_phases",
    "split_batch",
    "to_device",
]

Inputs = tuple[torch.Tensor, ...] | dict[str, torch.Tensor]
"""A model's inputs for one batch: positional arguments (a tuple) or keyword arguments (a dict)."""

TARGET_KEY = "target"


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs with one freeze policy ("train", or "head" then "finetune"): what the model's
    `freeze` and `param_groups` are asked about."""

    name: str
    first: int  # first epoch number (1-based, counted across phases)
    last: int
    freeze: str | int | None  # freeze policy applied at the phase's start; None = leave the model's
    lr: float = 1e-3  # the configured learning rate
    backbone_lr_mult: float = 1.0  # what a pretrained part's lr is multiplied by in this phase
    layer_decay: float = 1.0  # layer-wise LR decay: each stage's lr is this times the next one's


@runtime_checkable
class TrainableModel(Protocol):
    """The whole contract, for type checkers and documentation: a model defines any of these methods."""

    def param_groups(self, phase: Phase) -> list[dict[str, Any]]: ...

    def freeze(self, phase: Phase) -> None: ...

    def split_for_cache(self) -> tuple[nn.Module, nn.Module] | None: ...

    def split_batch(self, batch: Any) -> tuple[Inputs, torch.Tensor]: ...


def plan_phases(config: TrainConfig, model: nn.Module) -> list[Phase]:
    """One training phase, or with `finetune_epochs` a head phase then a fine-tuning phase."""
    lr = config.lr
    if not config.finetune_epochs:
        return [Phase("train", 1, config.epochs, None, lr, layer_decay=config.layer_decay)]
    if not callable(getattr(model, "freeze", None)):
        raise ConfigError(
            "fine-tuning needs a model with a freeze(phase) method that unfreezes its pretrained "
            f"part (e.g. from create_model); train without {opt('train.finetune_epochs')}"
        )
    unfreeze = "none" if config.unfreeze == "all" else config.unfreeze
    last = config.epochs + config.finetune_epochs
    return [
        Phase("head", 1, config.epochs, None, lr),
        Phase(
            "finetune",
            config.epochs + 1,
            last,
            unfreeze,
            lr,
            config.backbone_lr_mult,
            config.layer_decay,
        ),
    ]


def freeze_for(model: nn.Module, phase: Phase) -> None:
    """The model's `freeze(phase)`, if it has one."""
    hook = getattr(model, "freeze", None)
    if callable(hook):
        hook(phase)


def param_groups_for(model: nn.Module, phase: Phase) -> list[dict[str, Any]]:
    """The model's parameter groups for `phase` (default: one group of its trainable parameters),
    frozen parameters and empty groups left out.

    Raises:
        ConfigError: nothing trains in this phase.
    """
    hook = getattr(model, "param_groups", None)
    if callable(hook):
        groups = [dict(g) for g in hook(phase)]
    else:
        groups = [{"params": model.parameters(), "lr": phase.lr, "name": "model"}]
    for g in groups:
        g["params"] = [p for p in g["params"] if p.requires_grad]
        g.setdefault("lr", phase.lr)
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ConfigError(
            f"nothing trains in the {phase.name} phase: the model has no trainable parameters"
        )
    return groups


def cache_split(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """The model's `split_for_cache()`: (feature extractor, the rest), or None."""
    hook = getattr(model, "split_for_cache", None)
    return hook() if callable(hook) else None


def split_batch(batch: Any) -> tuple[Inputs, torch.Tensor]:
    """The default `split_batch`: `(*inputs, target)` or `{**inputs, "target": target}`."""
    if isinstance(batch, Mapping):
        if TARGET_KEY not in batch:
            raise DataError(
                f"a dict batch needs a {TARGET_KEY!r} entry (it has {', '.join(map(str, batch))}); "
                "add one, or give the model a split_batch(batch) method"
            )
        inputs = {k: v for k, v in batch.items() if k != TARGET_KEY}
        return inputs, torch.as_tensor(batch[TARGET_KEY])
    if isinstance(batch, Sequence) and not isinstance(batch, str) and len(batch) >= 2:
        return tuple(batch[:-1]), torch.as_tensor(batch[-1])
    raise DataError(
        f"a batch must be (inputs..., target) or a dict with a {TARGET_KEY!r} entry, not "
        f"{type(batch).__name__}; give the model a split_batch(batch) method for other shapes"
    )


def batch_splitter(model: nn.Module) -> Callable[[Any], tuple[Inputs, torch.Tensor]]:
    """The model's `split_batch`, or the default one."""
    hook = getattr(model, "split_batch", None)
    return hook if callable(hook) else split_batch


def to_device(x: Any, device: torch.device) -> Any:
    """A tensor on `device` (4-d: channels_last, for faster convolutions); anything else as it is."""
    if not isinstance(x, torch.Tensor):
        return x
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def inputs_to_device(inputs: Inputs, device: torch.device) -> Inputs:
    """Every tensor of a batch's inputs on `device` (see `to_device`)."""
    if isinstance(inputs, dict):
        return {k: to_device(v, device) for k, v in inputs.items()}
    return tuple(to_device(v, device) for v in inputs)


def forward_inputs(module: Callable[..., torch.Tensor], inputs: Inputs) -> torch.Tensor:
    """`module` on a batch's inputs: positional (a tuple) or keyword (a dict) arguments."""
    return module(**inputs) if isinstance(inputs, dict) else module(*inputs)
