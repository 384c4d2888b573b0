"""Preprocessing: how images must be prepared for a model (resize, crop, normalisation); travels in checkpoints."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Preprocessing"]

# The one copy of the ImageNet statistics; used only where weights carry none of their own
# (custom backbones). torchvision backbones take theirs from `Weights.transforms()`.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_SIZE, MAX_CROP = 16, 2048  # pixels

_Finite = Annotated[float, Field(allow_inf_nan=False)]
_Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class Preprocessing(BaseModel):
    """How images must be prepared for a model; travels in every checkpoint."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Bounds keep a damaged or hand-edited checkpoint from asking for absurd images (0 px, 10**6 px).
    resize_size: int = Field(default=256, ge=MIN_SIZE, le=2 * MAX_CROP)
    crop_size: int = Field(default=224, ge=MIN_SIZE, le=MAX_CROP)
    mean: tuple[_Finite, _Finite, _Finite] = IMAGENET_MEAN
    std: tuple[_Positive, _Positive, _Positive] = IMAGENET_STD
    # What torchvision's Resize supports on tensors.
    interpolation: Literal["nearest", "nearest-exact", "bilinear", "bicubic"] = "bilinear"

    def with_size(self, size: int | None) -> Preprocessing:
        """Same recipe at another crop size, keeping the resize/crop ratio."""
        if size is None or size == self.crop_size:
            return self
        resize = round(size * self.resize_size / self.crop_size)
        return self.model_validate({**self.model_dump(), "crop_size": size, "resize_size": resize})
