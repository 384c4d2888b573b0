"""Experiments: procedures built from training and evaluation (cross-validation, ensembles)."""

from .._lazy import lazy_getattr

__getattr__ = lazy_getattr(__name__)  # `skincls.experiments.X` imports the submodule X on first use
