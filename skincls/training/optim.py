"""Optimisation pieces for the trainer: optimizer with parameter groups, LR schedules, loss weights."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..config import TrainConfig

__all__ = [
    "Losses",
    "PhaseOptimization",
    "balanced_class_weights",
    "build_losses",
    "build_optimizer",
    "build_phase_optimization",
    "build_scheduler",
]


@dataclass(frozen=True)
class Losses:
    """The training loss (mean), its summed twin for distributed shares, the plain validation loss
    (summed, no weights or smoothing: comparable across runs), and per-sample draw weights for a
    balanced sampler (None: shuffle)."""

    train: nn.CrossEntropyLoss
    summed: nn.CrossEntropyLoss
    val: nn.CrossEntropyLoss
    sample_weights: torch.Tensor | None


def build_losses(
    config: TrainConfig, targets: Sequence[int], num_classes: int, device: torch.device
) -> Losses:
    """The losses and sampler weights `config` asks for (class weights, label smoothing, sampler)."""
    balanced = (
        balanced_class_weights(targets, num_classes)
        if "balanced" in (config.class_weights, config.sampler)
        else None
    )
    weight = balanced.to(device) if config.class_weights == "balanced" else None
    smoothing = config.label_smoothing
    return Losses(
        train=nn.CrossEntropyLoss(weight=weight, label_smoothing=smoothing),
        # Distributed: each rank sums its share's losses and divides by the whole global batch's
        # denominator (its size, or its summed class weights), so DDP's average is the 1-process loss.
        summed=nn.CrossEntropyLoss(weight=weight, label_smoothing=smoothing, reduction="sum"),
        val=nn.CrossEntropyLoss(reduction="sum"),
        sample_weights=balanced[torch.as_tensor(list(targets))]
        if config.sampler == "balanced"
        else None,
    )


def build_optimizer(groups: list[dict], config: TrainConfig) -> torch.optim.Optimizer:
    """Adam (the original recipe), AdamW or SGD over `groups`, using the fastest implementation.

    `fused=True` updates all parameters in one kernel per step (on CPU too in recent PyTorch): the same
    algorithm as the default per-parameter loop, an order of magnitude faster on a 100M-parameter
    head. Where a build lacks it, the multi-tensor `foreach` path is used.
    """
    name = config.optimizer
    if name == "auto":
        name = "adamw" if config.weight_decay > 0 else "adam"
    cls, kwargs = {
        "adam": (torch.optim.Adam, {}),
        "adamw": (torch.optim.AdamW, {}),
        "sgd": (torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    }[name]
    kwargs = {**kwargs, "lr": config.lr, "weight_decay": config.weight_decay}
    try:
        return cls(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device/dtype/build
        return cls(groups, foreach=True, **kwargs)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    *,
    epochs: int,
    steps_per_epoch: int,
    maximise: bool,
) -> tuple[
    torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau | None, str
]:
    """The phase's LR schedule and when to step it: ("step" | "epoch" | "none").

    cosine: linear warmup over `warmup_epochs`, then cosine decay to zero, stepped every batch.
    plateau: divide the LR by 5 when the monitored metric hasn't improved for an epoch; `maximise`
    says whether the metric the trainer steps it with improves upwards (accuracy) or downwards (loss).
    """
    if config.schedule == "cosine":
        total = max(1, epochs * steps_per_epoch)
        warmup = min(total - 1, round(config.warmup_epochs * steps_per_epoch))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, _WarmupCosine(warmup, total)), "step"
    if config.schedule == "plateau":
        mode = "max" if maximise else "min"
        return (
            torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode=mode, factor=0.2, patience=1
            ),
            "epoch",
        )
    return None, "none"


class _WarmupCosine:
    """LR multiplier at step s: linear ramp for `warmup` steps, then half a cosine down to 0."""

    def __init__(self, warmup: int, total: int):
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def balanced_class_weights(targets: Sequence[int], num_classes: int) -> torch.Tensor:
    """n / (k · count_c) per class, as scikit-learn's "balanced"; absent classes get weight 0."""
    counts = torch.bincount(torch.as_tensor(list(targets), dtype=torch.long), minlength=num_classes)
    weights = len(targets) / (num_classes * counts.clamp(min=1).double())
    return torch.where(counts > 0, weights, torch.zeros_like(weights)).float()


@dataclass
class PhaseOptimization:
    """One phase's optimizer, LR schedule (stepped at `when`: "step", "epoch" or "none") and fp16
    gradient scaler (None unless fp16)."""

    optimizer: torch.optim.Optimizer
    scheduler: (
        torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau | None
    )
    when: str
    scaler: torch.amp.GradScaler | None


def build_phase_optimization(
    groups: list[dict],
    config: TrainConfig,
    *,
    epochs: int,
    steps_per_epoch: int,
    maximise: bool,
    fp16_on: torch.device | None = None,
    resume: dict | None = None,
) -> PhaseOptimization:
    """Optimizer over parameter `groups` (the model's answer, see `contract`), schedule and scaler
    for a phase of `epochs` epochs; `resume` (a trainer's saved state in this phase) restores their
    state. `fp16_on` is the device of fp16 training, if any."""
    optimizer = build_optimizer(groups, config)
    scheduler, when = build_scheduler(
        optimizer, config, epochs=epochs, steps_per_epoch=steps_per_epoch, maximise=maximise
    )
    scaler = torch.amp.GradScaler(fp16_on.type) if fp16_on is not None else None
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        if scheduler is not None and resume["scheduler"] is not None:
            scheduler.load_state_dict(resume["scheduler"])
        if scaler is not None and resume["scaler"] is not None:
            scaler.load_state_dict(resume["scaler"])
    return PhaseOptimization(optimizer, scheduler, when, scaler)
