"""Data: get a dataset (Kaggle or offline), check its images, find duplicates, split it once, load it."""

from .._lazy import lazy_getattr

__getattr__ = lazy_getattr(__name__)  # `skincls.data.X` imports the submodule X on first use
