"""Predict: label new images with a checkpoint; needs nothing but the checkpoint file."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import Checkpoint, load_checkpoint
from .data import build_transform, load_image
from .errors import DataError
from .runtime import resolve_device

__all__ = ["Prediction", "Predictor"]


@dataclass
class Prediction:
    """One image's result; `error` is set (and the rest empty) when the image could not be read."""

    path: str
    label: str | None = None
    probability: float | None = None  # of the positive (last) class, e.g. malignant
    probabilities: dict[str, float] | None = None
    error: str | None = None


class Predictor:
    """Runs a checkpoint on image files."""

    def __init__(self, checkpoint: Checkpoint, device: str = "auto"):
        self.checkpoint = checkpoint
        self.device = resolve_device(device)
        self.model = checkpoint.build_model().to(self.device)
        self.transform = build_transform(checkpoint.preprocessing)
        self.classes = checkpoint.classes

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto") -> Predictor:
        return cls(load_checkpoint(path), device)

    @torch.inference_mode()
    def predict(self, paths: Iterable[str | Path]) -> list[Prediction]:
        """Predict each file; unreadable files get an error row and the rest go on."""
        out = []
        for p in paths:
            try:
                x = self.transform(load_image(p)).unsqueeze(0).to(self.device)
            except DataError as exc:
                out.append(Prediction(str(p), error=str(exc)))
                continue
            probs = torch.softmax(self.model(x) / self.checkpoint.temperature, 1)[0].cpu()
            k = int(probs.argmax())
            out.append(
                Prediction(
                    str(p),
                    label=self.classes[k],
                    probability=float(probs[-1]),
                    probabilities={c: float(v) for c, v in zip(self.classes, probs)},
                )
            )
        return out
