"""Calibration: temperature scaling, one scalar T that makes softmax probabilities honest.

Guo et al. (2017), "On Calibration of Modern Neural Networks": divide the logits by T > 0 fitted to
minimise the negative log-likelihood on held-out (validation) data. T changes no argmax, so accuracy
and AUC stay the same; only the probabilities move.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from ..inference.decision import softmax

__all__ = ["TEMPERATURE_BOUNDS", "fit_temperature", "nll"]

# Beyond these the data say "infinitely sharp" or "uninformative"; clipping keeps T usable.
TEMPERATURE_BOUNDS = (0.05, 20.0)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels; logits (N, C), or (N, V, C) for V TTA views."""
    p = softmax(logits, temperature)
    labels = np.asarray(labels).astype(int)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, None))))


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = TEMPERATURE_BOUNDS
) -> float:
    """The temperature minimising validation NLL.

    The NLL of `softmax(z / T)` is convex in 1/T, hence unimodal in log T, so a bounded scalar search
    (SciPy's Brent method) on log T finds the optimum without gradients or a learning rate.

    Args:
        logits: Validation logits (N, C), or (N, V, C) when test-time augmentation averages V views.
        labels: Validation class indices (N,).
        bounds: Smallest and largest temperature allowed.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    if len(labels) == 0:
        raise ValueError("no validation images to fit a temperature on")
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    res = minimize_scalar(
        lambda log_t: nll(logits, labels, float(np.exp(log_t))),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(np.exp(res.x))
