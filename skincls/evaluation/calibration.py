"""Calibration: temperature scaling, one scalar T that makes softmax probabilities honest.

Guo et al. (2017), "On Calibration of Modern Neural Networks": divide the logits by T > 0 fitted to
minimise the negative log-likelihood on held-out (validation) data. T changes no argmax, so accuracy
and AUC stay the same; only the probabilities move.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import minimize_scalar

from ..inference.decision import softmax
from . import metrics as M
from .report import ECE_BINS, CalibrationResult

if TYPE_CHECKING:
    from .outputs import Outputs

__all__ = ["TEMPERATURE_BOUNDS", "fit_calibration", "fit_temperature", "nll"]

log = logging.getLogger(__name__)

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


def fit_calibration(
    out: Outputs,
    positive: int = 1,
    *,
    tta: bool = False,
    keep_worse: bool = False,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
) -> CalibrationResult:
    """Fit a temperature on `out` (validation) and measure what it does there to NLL and ECE.

    Before is temperature 1. A temperature that makes NLL or ECE worse is marked `kept=False` (with
    what got worse in `worse`) unless `keep_worse`. A fit at one of the `bounds` is kept as it is,
    with a warning: the split is probably separable or too small to say.

    Args:
        out: Logits and labels of the split to fit on.
        positive: The class index ECE's confidence refers to with two classes.
        tta: Whether the logits are test-time-augmentation views (recorded in the result).
        keep_worse: Keep a temperature even if it makes calibration worse.
        bounds: Smallest and largest temperature allowed.
    """
    t = fit_temperature(out.logits, out.labels, bounds)
    _warn_at_bound(t, bounds, out.split, len(out.labels))
    nll_before, nll_after = nll(out.logits, out.labels), nll(out.logits, out.labels, t)
    ece_before = M.expected_calibration_error(out.labels, out.probs(), ECE_BINS, positive)
    ece_after = M.expected_calibration_error(out.labels, out.probs(t), ECE_BINS, positive)
    worse = [
        name
        for name, b, a in (("NLL", nll_before, nll_after), ("ECE", ece_before, ece_after))
        if a > b + 1e-9
    ]
    return CalibrationResult(
        temperature=t,
        split=out.split,
        n_images=len(out.labels),
        tta=tta,
        nll_before=nll_before,
        nll_after=nll_after,
        ece_before=ece_before,
        ece_after=ece_after,
        worse=worse,
        kept=keep_worse or not worse,
    )


def _warn_at_bound(t: float, bounds: tuple[float, float], split: str, n: int) -> None:
    """A fit at a bound is no optimum, only where the search stopped: say so, with the value."""
    if abs(np.log(t / bounds[0])) < 1e-3:
        why = "the smallest allowed): the split is probably separable or too small"
    elif abs(np.log(t / bounds[1])) < 1e-3:
        why = "the largest allowed): the logits say next to nothing on it, or it is too small"
    else:
        return
    log.warning(f"the temperature fit on {split} hit its bound (T = {t:.3g}, {why} ({n} images)")
