"""Models: the backbone registry, the transfer-learning classifier, and self-describing checkpoints."""

from .._lazy import lazy_getattr

__getattr__ = lazy_getattr(__name__)  # `skincls.models.X` imports the submodule X on first use
