"""Evaluation: metrics on a named split, calibration, threshold choice, reports, plots and model cards."""

from .._lazy import lazy_getattr

__getattr__ = lazy_getattr(__name__)  # `skincls.evaluation.X` imports the submodule X on first use
