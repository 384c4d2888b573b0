"""Evaluate: measure a trained model on one split of a prepared dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn
from torch.utils.data import DataLoader

from .checkpoint import Checkpoint, load_checkpoint
from .data import ManifestDataset, build_transform
from .models import Preprocessing
from .runtime import resolve_device
from .splits import load_manifest

__all__ = ["ClassResult", "EvalReport", "Evaluator"]


class ClassResult(BaseModel):
    name: str
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")


class EvalReport(BaseModel):
    """Metrics of one split; `split` and `n_images` say what they were measured on."""

    split: str
    n_images: int
    loss: float
    accuracy: float
    per_class: list[ClassResult]

    def lines(self) -> list[str]:
        """Human-readable lines in the original script's format."""
        name = self.split.capitalize()
        out = [f"{name} split: {self.n_images} images", f"{name} Loss: {self.loss:.6f}"]
        for c in self.per_class:
            pct = f"{100 * c.accuracy:.0f}%" if c.total else "n/a"
            out.append(f"{name} Accuracy of {c.name.capitalize()}: {pct} ({c.correct}/{c.total})")
        correct = sum(c.correct for c in self.per_class)
        out.append(
            f"{name} Accuracy (Overall): {100 * self.accuracy:.0f}% ({correct}/{self.n_images})"
        )
        return out


class Evaluator:
    """Evaluates a model, given as a checkpoint path, a `Checkpoint`, or a module with its metadata."""

    def __init__(
        self,
        model: str | Path | Checkpoint | nn.Module,
        *,
        classes: list[str] | None = None,
        preprocessing: Preprocessing | None = None,
        device: str = "auto",
        batch_size: int = 32,
    ):
        if isinstance(model, (str, Path)):
            model = load_checkpoint(model)
        if isinstance(model, Checkpoint):
            classes = classes or model.classes
            preprocessing = preprocessing or model.preprocessing
            model = model.build_model()
        if classes is None or preprocessing is None:
            raise ValueError("a bare module needs classes= and preprocessing=")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.classes = classes
        self.preprocessing = preprocessing
        self.batch_size = batch_size

    @torch.inference_mode()
    def evaluate(self, data_dir: str | Path, split: str = "test") -> EvalReport:
        """Loss, accuracy and per-class accuracy on `split` of the data dir's manifest."""
        manifest = load_manifest(data_dir)
        ds = ManifestDataset(manifest, split, build_transform(self.preprocessing))
        if manifest.classes != self.classes:
            raise ValueError(
                f"data classes {manifest.classes} differ from the model's {self.classes}"
            )
        loader = DataLoader(ds, batch_size=self.batch_size)
        criterion = nn.CrossEntropyLoss(reduction="sum")
        total_loss = 0.0
        correct = [0] * len(self.classes)
        totals = [0] * len(self.classes)
        for x, y in loader:
            x, y = x.to(self.device), y.to(self.device)
            logits = self.model(x)
            total_loss += criterion(logits, y).item()
            hit = logits.argmax(1) == y
            for k in range(len(self.classes)):
                sel = y == k
                totals[k] += int(sel.sum())
                correct[k] += int((hit & sel).sum())
        n = sum(totals)
        return EvalReport(
            split=split,
            n_images=n,
            loss=total_loss / max(n, 1),
            accuracy=sum(correct) / max(n, 1),
            per_class=[
                ClassResult(name=c, correct=k, total=t)
                for c, k, t in zip(self.classes, correct, totals)
            ],
        )

    def as_dict(self, report: EvalReport) -> dict[str, Any]:
        return report.model_dump()
