"""Metadata fusion: a small network on the encoded metadata whose output joins the image features.

The design is intermediate ("feature-level") fusion, as the ISIC 2019 and SIIM-ISIC 2020 winners
used it: the metadata vector (`skincls.data.tabular`) goes through its own small layer, and its
output is concatenated with the pooled image features before the classification head, so the head
learns interactions (site x appearance) that averaging two separate models' outputs (late fusion)
cannot. The metadata branch is kept narrow (`hidden` units, default 32) so that a few columns are not
drowned by, nor drown, the image's hundreds to thousands of features.

With a frozen backbone the feature cache still works: `FusedExtractor` maps `(image, metadata)` to
`[image features | metadata]` (the metadata passed through unchanged) and `FusedHead` does the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import ModelError

__all__ = ["FusedExtractor", "FusedHead", "MetadataSpec", "fuse", "metadata_net"]

DEFAULT_HIDDEN = 32


class MetadataSpec:
    """What a model's `config["metadata"]` says: input width, branch width, whether images count.

    The encoder itself (`encoder`, plain data) is kept for the callers that encode inputs; the model
    needs only the widths.
    """

    def __init__(self, data: Mapping[str, Any]):
        try:
            self.width = int(data["width"])
            self.hidden = int(data.get("hidden", DEFAULT_HIDDEN))
            self.image = bool(data.get("image", True))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"metadata settings need a width and a hidden size ({exc})") from None
        if self.width < 1 or self.hidden < 1:
            raise ModelError(f"metadata width and hidden size must be >= 1, not {dict(data)}")


def metadata_net(width: int, hidden: int) -> nn.Sequential:
    """(N, width) encoded metadata → (N, hidden)."""
    return nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True))


class FusedExtractor(nn.Module):
    """(images, metadata) → [pooled image features | metadata] (shares the backbone's weights).

    Called with images only it returns the image features alone (what a feature pool shares
    between models with and without metadata).
    """

    def __init__(self, backbone: nn.Module, pool: nn.Module):
        super().__init__()
        self.backbone, self.pool = backbone, pool

    def forward(self, x: torch.Tensor, metadata: torch.Tensor | None = None) -> torch.Tensor:
        f = torch.flatten(self.pool(self.backbone(x)), 1)
        return f if metadata is None else torch.cat([f, metadata.to(f.dtype)], 1)


class FusedHead(nn.Module):
    """[image features (image_dim) | metadata] → logits: the metadata branch, concatenation, head."""

    def __init__(self, meta: nn.Module, head: nn.Module, image_dim: int, image: bool = True):
        super().__init__()
        self.meta, self.head = meta, head
        self.image_dim, self.image = image_dim, image

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.fuse(f[:, : self.image_dim], f[:, self.image_dim :])

    def fuse(self, image: torch.Tensor, metadata: torch.Tensor) -> torch.Tensor:
        return fuse(self.meta, self.head, image, metadata, self.image)


def fuse(
    meta: nn.Module, head: nn.Module, image: torch.Tensor, metadata: torch.Tensor, use_image: bool
) -> torch.Tensor:
    """Logits of image features and encoded metadata: the metadata branch, [image | branch] (or the
    branch alone for a metadata-only model), the head."""
    m = meta(metadata.to(image.dtype))
    return head(torch.cat([image, m], 1) if use_image else m)
