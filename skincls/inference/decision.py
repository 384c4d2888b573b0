"""Decision rule: logits → calibrated probabilities → class, at a threshold for two classes."""

from __future__ import annotations

import numpy as np

__all__ = ["positive_index", "predict_labels", "softmax"]


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities from logits, (N, C) → (N, C).

    Test-time augmentation gives (N, V, C) logits (V views); their softmaxes are averaged over V.
    """
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    p = e / e.sum(axis=-1, keepdims=True)
    return p.mean(axis=1) if p.ndim == 3 else p


def positive_index(classes: list[str]) -> int:
    """Index of the positive class: "malignant" when present, else the last class."""
    return classes.index("malignant") if "malignant" in classes else len(classes) - 1


def predict_labels(
    probs: np.ndarray, threshold: float | None = None, positive: int = 1
) -> np.ndarray:
    """Class index per row: argmax, or for two classes `P(positive) >= threshold` when one is given."""
    probs = np.asarray(probs)
    if threshold is None or probs.shape[1] != 2:
        return probs.argmax(axis=1)
    return np.where(probs[:, positive] >= threshold, positive, 1 - positive)
