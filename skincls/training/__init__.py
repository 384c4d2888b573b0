"""Training: the Trainer, its callbacks, the frozen-feature cache, optimisers, history and a run from a config."""

from .._lazy import lazy_getattr

__getattr__ = lazy_getattr(__name__)  # `skincls.training.X` imports the submodule X on first use
