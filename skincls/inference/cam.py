"""Grad-CAM: where in the image the model looked, as a heat map over the original picture.

Uses the grad-cam library (`pytorch_grad_cam`), the maintained implementation of Selvaraju et al.
(2017) and its relatives, instead of hand-written hooks. What skincls adds is choosing the target
layer for any backbone and mapping the map from the model's centre crop back onto the full image.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import nn

from ..data.dataset import build_transform
from ..errors import ModelError
from ..figures import new_figure, set_title
from ..preprocessing import Preprocessing

__all__ = ["GradCamExplainer", "find_target_layer", "find_target_layers"]


def find_target_layer(model: nn.Module, crop_size: int) -> nn.Module:
    """The last module of `model.backbone` to produce a spatial (N, C, H, W) map with H·W > 1.

    Found by running one dummy image with forward hooks, so it works for registry and custom
    backbones alike. "Last to finish" is the backbone's final feature map (for a container that
    returns a map, the container itself), whose output nothing modifies in place afterwards — the
    usual Grad-CAM choice of the last convolutional stage.

    A vision transformer's target is its last block instead (see `token_grid`).

    Raises:
        ModelError: the backbone never produces a spatial map (e.g. a transformer's token vector).
    """
    backbone = getattr(model, "backbone", model)
    token_layer = _last_token_block(backbone)
    if token_layer is not None:  # its patch embedding is a map too, but not the one to explain
        return token_layer
    order: list[nn.Module] = []

    def hook(module, _inputs, output):
        if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[-2:].numel() > 1:
            order.append(module)

    handles = [m.register_forward_hook(hook) for m in backbone.modules()]
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, 3, crop_size, crop_size, device=device))
    finally:
        for h in handles:
            h.remove()
    if not order:
        raise ModelError("Grad-CAM needs a backbone with a spatial feature map; this one has none")
    return order[-1]


def _last_token_block(backbone: nn.Module) -> nn.Module | None:
    """A vision transformer's (timm's ViT family) last block's first norm: its tokens, pre-attention.

    The tokens (N, prefix + h·w, C) are turned back into a (N, C, h, w) map by `token_grid`.
    """
    blocks = getattr(backbone, "blocks", None)
    if getattr(backbone, "num_prefix_tokens", None) is None or not isinstance(
        blocks, nn.Sequential
    ):
        return None
    last = blocks[-1]
    return getattr(last, "norm1", last)


def token_grid(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """For a token backbone, Grad-CAM's `reshape_transform`: drop prefix tokens, tokens → grid."""
    prefix = getattr(getattr(model, "backbone", model), "num_prefix_tokens", None)
    if prefix is None:
        return None

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 3:  # already a map (a layer that keeps the spatial layout)
            return tokens
        patches = tokens[:, prefix:, :]
        side = math.isqrt(patches.shape[1])
        if side * side != patches.shape[1]:
            raise ModelError(f"cannot lay {patches.shape[1]} patch tokens out as a square grid")
        return patches.reshape(patches.shape[0], side, side, -1).permute(0, 3, 1, 2)

    return reshape


def find_target_layers(model: nn.Module, crop_size: int) -> list[nn.Module]:
    """`find_target_layer` of a model, or of each member of an ensemble (a module with `members`).

    Members that share a backbone share its layer, listed once. Grad-CAM of several layers is the
    mean of their (each normalised) maps: every member's evidence counts equally.
    """
    members = getattr(model, "members", None)
    if members is None:
        return [find_target_layer(model, crop_size)]
    layers: list[nn.Module] = []
    for member in members:
        layer = find_target_layer(member, crop_size)
        if not any(layer is seen for seen in layers):
            layers.append(layer)
    return layers


class GradCamExplainer:
    """Grad-CAM overlays for one model (or ensemble); the target layers are found once.

    Args:
        model: A `SkinClassifier` (or any module with a `backbone`) in eval mode.
        preprocessing: The model's preprocessing, to rebuild its input from a PIL image.
    """

    def __init__(self, model: nn.Module, preprocessing: Preprocessing):
        self.model = model.eval()
        self.pre = preprocessing
        self.transform = build_transform(preprocessing)
        self.layers = find_target_layers(model, preprocessing.crop_size)
        self.layer = self.layers[0]  # the only one, except for an ensemble of separate backbones

    def heatmap(self, image: Image.Image, target_class: int) -> np.ndarray:
        """Grad-CAM of `target_class` on the model's input crop: (crop, crop) floats in [0, 1]."""
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        device = next(self.model.parameters()).device
        # A frozen backbone has no parameter gradients; an input that requires grad still gives
        # the feature map a gradient, which is all Grad-CAM needs.
        x = self.transform(image).unsqueeze(0).to(device).requires_grad_(True)
        reshape = token_grid(self.model)
        with (
            torch.enable_grad(),
            GradCAM(model=self.model, target_layers=self.layers, reshape_transform=reshape) as cam,
        ):
            return cam(input_tensor=x, targets=[ClassifierOutputTarget(target_class)])[0]

    def heatmap_on_image(
        self, image: Image.Image, target_class: int, size: tuple[int, int] | None = None
    ) -> np.ndarray:
        """Grad-CAM of `target_class` in the frame of the whole image: (h, w) floats in [0, 1].

        Args:
            image: The input, as the model reads it.
            target_class: Class index whose evidence is mapped.
            size: (width, height) of the map, e.g. a thumbnail's (default: the image's own size);
                the map is computed from `image` either way, so it matches the prediction.
        """
        return self._to_image_frame(self.heatmap(image, target_class), size or image.size)

    def overlay(self, image: Image.Image, target_class: int) -> Image.Image:
        """The image with its Grad-CAM heat map blended in, at the image's own size."""
        from pytorch_grad_cam.utils.image import show_cam_on_image

        full = self.heatmap_on_image(image, target_class)
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
        return Image.fromarray(show_cam_on_image(rgb, full, use_rgb=True, image_weight=0.55))

    def figure(
        self,
        image: Image.Image,
        target_class: int,
        *,
        label: str,
        probability: float,
        target_name: str,
    ) -> Figure:
        """The image and its Grad-CAM side by side, with a colour scale, the label and the probability.

        The original stays unmarked on the left, so the lesion is always visible; the right panel
        blends the heat map (relevance for `target_class`, 0 to 1) over it, more opaque where the
        relevance is higher.

        Args:
            image: The input image.
            target_class: Index of the class whose score the map explains (usually the positive one).
            label: The predicted label, for the title.
            probability: P(`target_name`), for the title.
            target_name: Name of `target_class`.

        Returns:
            A matplotlib `Figure` (save it with `skincls.figures.save_figure`).
        """
        rgb = np.asarray(image.convert("RGB"))
        cam = self.heatmap_on_image(image, target_class)
        fig, (left, right) = new_figure(1, 2, figsize=(7.6, 3.6))
        left.imshow(rgb)
        left.set_xlabel("image")
        right.imshow(rgb)
        # Opacity follows relevance: irrelevant regions stay as they are, the lesion stays visible.
        shown = right.imshow(cam, cmap="jet", vmin=0, vmax=1, alpha=0.15 + 0.5 * cam)
        right.set_xlabel(f"Grad-CAM for {target_name}")
        for ax in (left, right):
            ax.set_xticks([])
            ax.set_yticks([])
        bar = fig.colorbar(shown, ax=right, fraction=0.046, pad=0.04)
        bar.set_label(f"relevance for {target_name}", fontsize=8)
        bar.ax.tick_params(labelsize=7)
        set_title(fig, f"Predicted {label}, P({target_name}) = {probability:.3f}")
        return fig

    def _to_image_frame(self, cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Undo resize + centre crop: place the crop's map where the crop came from (zeros outside)."""
        w, h = size
        scale = min(w, h) / self.pre.resize_size  # the shorter side was resized to resize_size
        side = self.pre.crop_size * scale  # the crop's side in original pixels
        left, top = round((w - side) / 2), round((h - side) / 2)
        n = max(1, round(side))
        patch = np.asarray(Image.fromarray(cam.astype(np.float32)).resize((n, n), Image.BILINEAR))
        out = np.zeros((h, w), dtype=np.float32)
        # Clip the patch to the image (a crop larger than the resized image would overhang).
        x0, y0 = max(left, 0), max(top, 0)
        x1, y1 = min(left + n, w), min(top + n, h)
        out[y0:y1, x0:x1] = patch[y0 - top : y1 - top, x0 - left : x1 - left]
        return np.clip(out, 0, 1)
