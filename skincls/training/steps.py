"""The trainer's inner loops: one epoch of optimisation steps and one validation pass, with what they
share (device placement and mixed precision, the replayed batch order); a run's phases are in `contract`."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from ..errors import ConfigError, opt
from ..runtime import seed_worker
from .contract import (
    Inputs,
    Phase,
    forward_inputs,
    inputs_to_device,
    plan_phases,
    split_batch,
    to_device,
)
from .mixup import mix_batch

__all__ = [
    "Phase",
    "Placement",
    "ReplayBatches",
    "batch_denominator",
    "class_targets",
    "plan_phases",
    "train_epoch",
    "validate",
]

Batches = Iterable[Any]  # as the DataLoader collates them; `split_batch` gives (inputs, target)
SplitBatch = Callable[[Any], tuple[Inputs, torch.Tensor]]


class ReplayBatches(Sampler):
    """A batch sampler replayed from index lists the trainer draws itself (same order cached or not)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


@dataclass(frozen=True)
class Placement:
    """Where batches go and in which precision the forward pass runs (`amp_dtype` None: float32)."""

    device: torch.device
    amp_dtype: torch.dtype | None = None

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        return to_device(x, self.device)

    def inputs(self, inputs: Inputs) -> Inputs:
        return inputs_to_device(inputs, self.device)

    def autocast(self):
        dtype = self.amp_dtype
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def loader(self, dataset: Dataset, num_workers: int = 0, **kwargs) -> DataLoader:
        """A DataLoader feeding this device: seeded workers, pinned memory for CUDA."""
        kwargs.setdefault("generator", torch.Generator().manual_seed(0))  # global RNG untouched
        return DataLoader(
            dataset,
            num_workers=num_workers,
            worker_init_fn=seed_worker,
            pin_memory=self.device.type == "cuda",
            **kwargs,
        )


def train_epoch(
    forward: Callable[..., torch.Tensor],
    batches: Batches,
    *,
    loss: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor],
    weight: Callable[[int, int], float],
    optimizer: torch.optim.Optimizer,
    place: Placement,
    split: SplitBatch = split_batch,
    scaler: torch.amp.GradScaler | None = None,
    after_step: Callable[[], None] | None = None,
    on_batch_end: Callable[[float, float], None] | None = None,
    diverged: Callable[[str], Exception] = FloatingPointError,
    mixes: Sequence[tuple[float, torch.Tensor]] | None = None,
) -> tuple[float, int, int]:
    """One pass of optimisation steps over `batches`.

    `split(batch)` gives the batch's inputs for `forward` and its targets (see `contract`).
    `loss(i, logits, y)` is the loss of batch i to step on; `weight(i, n)` what that batch's loss
    counts for in the epoch's total (its size n in one process). `after_step` runs after every
    optimizer step (a per-step LR schedule); `on_batch_end` gets the batch's loss and accuracy. A
    non-finite loss raises `diverged(what happened)`.

    `mixes` (mixup, see `mixup`): per batch (λ, partner rows); the batch's first len(partner rows)
    rows are its own items, each input mixed as λ·x + (1 − λ)·x[partner] and trained on with the
    loss λ·loss(y) + (1 − λ)·loss(y[partner]). Accuracy counts the dominant label (y where λ ≥ 0.5).

    Returns:
        (sum of loss × weight, correct predictions, images seen), for the caller to reduce (over
        processes) and divide.
    """
    total, correct, seen = 0.0, 0, 0
    for i, batch in enumerate(batches):
        inputs, y = split(batch)
        inputs, y = place.inputs(inputs), y.to(place.device, non_blocking=True)
        if mixes is None:
            with place.autocast():
                logits = forward_inputs(forward, inputs)
                batch_loss_t = loss(i, logits.float(), y)
        else:
            lam, partner = mixes[i]
            inputs, y_a, y_b = _mix_inputs(inputs, y, lam, partner)
            inputs = place.inputs(inputs)  # channels-last again
            with place.autocast():
                logits = forward_inputs(forward, inputs)
                out = logits.float()
                batch_loss_t = lam * loss(i, out, y_a) + (1.0 - lam) * loss(i, out, y_b)
            y = y_a if lam >= 0.5 else y_b  # what the accuracy counts: the dominant label
        _step(batch_loss_t, optimizer, scaler)
        if after_step is not None:
            after_step()
        n = len(y)
        # One device-to-host transfer per step for both numbers (counts < 2**24 are exact).
        hits = (logits.argmax(1) == y).sum().float()
        batch_loss, batch_correct = torch.stack([batch_loss_t.detach().float(), hits]).tolist()
        if not math.isfinite(batch_loss):
            raise diverged(f"the training loss is {batch_loss} at step {i + 1}")
        batch_correct = int(batch_correct)
        total, correct, seen = total + batch_loss * weight(i, n), correct + batch_correct, seen + n
        if on_batch_end is not None:
            on_batch_end(batch_loss, batch_correct / max(n, 1))
    return total, correct, seen


def _step(
    batch_loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None
) -> None:
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(batch_loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        batch_loss.backward()
        optimizer.step()


def _mix_inputs(
    inputs: Inputs, y: torch.Tensor, lam: float, partner: torch.Tensor
) -> tuple[Inputs, torch.Tensor, torch.Tensor]:
    """Every input of a batch mixed with its partners' (`mix_batch`): (inputs, y, y[partner])."""
    named = inputs.items() if isinstance(inputs, dict) else enumerate(inputs)
    mixed: dict[Any, torch.Tensor] = {}
    y_a = y_b = y
    for key, x in named:
        if not (isinstance(x, torch.Tensor) and x.is_floating_point()):
            what = type(x).__name__ if not isinstance(x, torch.Tensor) else str(x.dtype)
            raise ConfigError(
                f"mixup mixes every input of a batch, but input {key!r} is {what}; train "
                f"without {opt('train.mixup')}, or give the model floating-point inputs"
            )
        mixed[key], y_a, y_b = mix_batch(x, y, lam, partner)
    if isinstance(inputs, dict):
        return mixed, y_a, y_b
    return tuple(mixed.values()), y_a, y_b


@torch.inference_mode()
def validate(
    forward: Callable[..., torch.Tensor],
    batches: Batches,
    *,
    criterion: nn.Module,
    place: Placement,
    split: SplitBatch = split_batch,
) -> tuple[float, int, int]:
    """Summed loss (`criterion` must sum over the batch), correct predictions and images seen."""
    total, correct, seen = 0.0, 0, 0
    for batch in batches:
        inputs, y = split(batch)
        inputs, y = place.inputs(inputs), y.to(place.device, non_blocking=True)
        with place.autocast():
            logits = forward_inputs(forward, inputs).float()
        total += criterion(logits, y).item()
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
    return total, correct, seen


def class_targets(dataset: Dataset, split: SplitBatch = split_batch) -> list[int]:
    """Class index per item, without loading images when the dataset lists them (`targets`, or a
    `TensorDataset`'s last tensor); otherwise `split` reads each item's target."""
    if hasattr(dataset, "targets"):
        return [int(t) for t in dataset.targets]
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[-1].tolist()
    return [int(split(dataset[i])[1]) for i in range(len(dataset))]


def batch_denominator(
    class_weight: torch.Tensor | None, targets: torch.Tensor, batch: torch.Tensor
) -> tuple[float, int]:
    """What a global batch's mean training loss divides by (its size, or its summed class
    weights), and its size."""
    if class_weight is None:
        return float(len(batch)), len(batch)
    return float(class_weight.cpu()[targets[batch]].sum()), len(batch)
