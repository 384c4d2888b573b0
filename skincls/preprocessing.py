"""Preprocessing: how images must be prepared for a model (resize, crop, normalisation); travels in checkpoints."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Preprocessing"]

# The one copy of the ImageNet statistics; used only where weights carry none of their own
# (custom backbones). torchvision backbones take theirs from `Weights.transforms()`.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Preprocessing(BaseModel):
    """How images must be prepared for a model; travels in every checkpoint."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    resize_size: int = 256
    crop_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def with_size(self, size: int | None) -> Preprocessing:
        """Same recipe at another crop size, keeping the resize/crop ratio."""
        if size is None or size == self.crop_size:
            return self
        resize = round(size * self.resize_size / self.crop_size)
        return self.model_copy(update={"crop_size": size, "resize_size": resize})
