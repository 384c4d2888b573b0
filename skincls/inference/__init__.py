"""Inference: the decision rule, test-time augmentation, prediction, Grad-CAM and export."""

from .._lazy import lazy_getattr

__getattr__ = lazy_getattr(__name__)  # `skincls.inference.X` imports the submodule X on first use
