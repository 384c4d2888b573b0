"""Trainer: fits a model on a training set, validating each epoch. It knows nothing about skin.

Checkpointing and other side effects are callbacks; the loop itself only optimises and measures.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .config import TrainConfig
from .runtime import resolve_device, seed_everything

__all__ = ["Callback", "EpochRecord", "History", "Trainer"]


@dataclass
class EpochRecord:
    """Metrics of one epoch; `val_*` are None without a validation set."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    lr: float
    seconds: float


@dataclass
class History:
    """Per-epoch records plus which epoch was best (lowest validation loss)."""

    epochs: list[EpochRecord] = field(default_factory=list)
    best_epoch: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"best_epoch": self.best_epoch, "epochs": [vars(e) for e in self.epochs]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


class Callback(Protocol):
    """Hooks the trainer calls; implement any subset."""

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord, improved: bool) -> None: ...


class Trainer:
    """Supervised training with cross-entropy and Adam (the original recipe by default).

    Args:
        model: Any classifier `nn.Module` returning logits.
        config: The optimisation recipe.
        callbacks: Objects with `on_epoch_end(trainer, record, improved)`.
        progress: Show rich progress bars.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig | None = None,
        *,
        callbacks: Sequence[Any] = (),
        progress: bool = True,
    ):
        self.model = model
        self.config = config or TrainConfig()
        self.callbacks = list(callbacks)
        self.progress = progress
        self.device = resolve_device(self.config.device)
        self.history = History()
        self.best_state: dict[str, torch.Tensor] | None = None

    def fit(self, train: Dataset, val: Dataset | None = None) -> History:
        """Train for `config.epochs`; keep the weights with the lowest validation loss in `best_state`."""
        cfg = self.config
        generator = seed_everything(cfg.seed)
        model = self.model.to(self.device)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        criterion = nn.CrossEntropyLoss()
        train_loader = DataLoader(
            train, batch_size=cfg.batch_size, shuffle=True, generator=generator
        )
        val_loader = DataLoader(val, batch_size=cfg.batch_size) if val is not None else None
        best = math.inf
        with _progress(self.progress) as bar:
            epochs_task = bar.add_task("epochs", total=cfg.epochs)
            batch_task = bar.add_task("batches", total=len(train_loader))
            for epoch in range(1, cfg.epochs + 1):
                start = time.perf_counter()
                bar.reset(batch_task, total=len(train_loader), description=f"epoch {epoch}")
                model.train()
                total_loss, correct, seen = 0.0, 0, 0
                for x, y in train_loader:
                    x, y = x.to(self.device), y.to(self.device)
                    optimizer.zero_grad(set_to_none=True)
                    logits = model(x)
                    loss = criterion(logits, y)
                    loss.backward()
                    optimizer.step()
                    total_loss += loss.item() * len(y)
                    correct += (logits.argmax(1) == y).sum().item()
                    seen += len(y)
                    bar.advance(batch_task)
                val_loss, val_acc = (
                    self._validate(val_loader, criterion) if val_loader else (None, None)
                )
                record = EpochRecord(
                    epoch,
                    total_loss / seen,
                    correct / seen,
                    val_loss,
                    val_acc,
                    optimizer.param_groups[0]["lr"],
                    time.perf_counter() - start,
                )
                monitored = val_loss if val_loss is not None else record.train_loss
                improved = monitored < best
                if improved:
                    best = monitored
                    self.history.best_epoch = epoch
                    self.best_state = {
                        k: v.detach().cpu().clone() for k, v in model.state_dict().items()
                    }
                self.history.epochs.append(record)
                for cb in self.callbacks:
                    cb.on_epoch_end(self, record, improved)
                bar.advance(epochs_task)
                bar.update(
                    epochs_task,
                    description=f"epochs (loss {record.train_loss:.3f}"
                    + (f", val {val_loss:.3f} acc {val_acc:.3f})" if val_loss is not None else ")"),
                )
        return self.history

    @torch.inference_mode()
    def _validate(self, loader: DataLoader, criterion: nn.Module) -> tuple[float, float]:
        self.model.eval()
        total, correct, seen = 0.0, 0, 0
        for x, y in loader:
            x, y = x.to(self.device), y.to(self.device)
            logits = self.model(x)
            total += criterion(logits, y).item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
        return total / seen, correct / seen


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=True,
    )
