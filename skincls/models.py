"""Models: a registry of backbones and `create_model`, which puts a transfer head on one.

Every model is `SkinClassifier(backbone, head)`: the backbone maps an image batch to features
(pooled and flattened here), the head maps features to class logits. Freezing applies to the backbone.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from .errors import ModelError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ModelSpec",
    "Preprocessing",
    "SkinClassifier",
    "create_model",
    "list_models",
    "register_model",
]

# Used only when a backbone's weights carry no statistics of their own (random init, custom backbones).
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


class SkinClassifier(nn.Module):
    """`backbone` (images → features) + `head` (features → logits).

    Backbones returning feature maps are average-pooled by `pool` unless they already return vectors;
    VGG keeps its own 7×7 adaptive pool, so `pool` is the identity there.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, pool: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.pool = pool if pool is not None else nn.Identity()
        self.head = head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) images → (N, D) features, the head's input."""
        return torch.flatten(self.pool(self.backbone(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass(frozen=True)
class _Body:
    """What a backbone builder returns."""

    backbone: nn.Module
    feature_dim: int
    pool: nn.Module | None
    preprocessing: Preprocessing
    # Leading pretrained head layers to keep (VGG's first classifier Linear), or None.
    head_prefix: nn.Module | None = None


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture."""

    name: str
    build: Callable[[str], _Body]  # weights ("imagenet" | "none" | path) → body
    default_size: int
    description: str


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, *, default_size: int, description: str = ""):
    """Decorator registering a backbone builder under `name`; duplicate names are rejected."""

    def wrap(fn: Callable[[str], _Body]) -> Callable[[str], _Body]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelSpec(name, fn, default_size, description)
        return fn

    return wrap


def list_models() -> list[str]:
    """Names accepted by `create_model(arch=...)`."""
    return sorted(_REGISTRY)


def create_model(
    arch: str = "vgg16",
    num_classes: int = 2,
    weights: str = "imagenet",
    head: Sequence[int] = (4096, 512),
    dropout: float = 0.5,
    freeze: str | int = "backbone",
) -> tuple[SkinClassifier, Preprocessing]:
    """Build a transfer-learning classifier.

    The default is the original recipe: VGG16, conv base frozen, classifier
    Linear(25088, 4096) (ImageNet weights kept) → ReLU → Dropout → Linear(4096, 512) → ReLU → Dropout →
    Linear(512, num_classes).

    Args:
        arch: A name from `list_models()`.
        num_classes: Output classes.
        weights: "imagenet", "none" (random init) or a state-dict file.
        head: Hidden layer widths of the head; for VGG the first one reuses the pretrained 4096 layer.
        dropout: Dropout probability after each hidden layer.
        freeze: "backbone" (frozen conv base) or "none".

    Returns:
        The model and the preprocessing its weights expect.
    """
    if arch not in _REGISTRY:
        raise ModelError(f"unknown arch {arch!r}; available: {', '.join(list_models())}")
    body = _REGISTRY[arch].build(weights)
    model = SkinClassifier(body.backbone, _build_head(body, head, dropout, num_classes), body.pool)
    set_freeze(model, freeze)
    return model, body.preprocessing


def _build_head(
    body: _Body, hidden: Sequence[int], dropout: float, num_classes: int
) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = body.feature_dim
    hidden = list(hidden)
    if body.head_prefix is not None and hidden and hidden[0] == body.head_prefix.out_features:
        layers += [body.head_prefix, nn.ReLU(inplace=True), nn.Dropout(dropout)]
        width = hidden.pop(0)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def set_freeze(model: SkinClassifier, freeze: str | int) -> None:
    """Make the backbone trainable or not; the head always trains."""
    if freeze not in ("backbone", "none"):
        raise ModelError(f"freeze must be 'backbone' or 'none', not {freeze!r}")
    for p in model.backbone.parameters():
        p.requires_grad_(freeze == "none")


def _torchvision_body(arch: str, weights: str) -> nn.Module:
    from torchvision.models import get_model, get_model_weights

    if weights == "none":
        return get_model(arch, weights=None)
    if weights == "imagenet":
        return get_model(arch, weights=get_model_weights(arch).DEFAULT)
    net = get_model(arch, weights=None)
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return net


def _torchvision_preprocessing(arch: str) -> Preprocessing:
    from torchvision.models import get_model_weights

    t = get_model_weights(arch).DEFAULT.transforms()
    return Preprocessing(
        resize_size=t.resize_size[0],
        crop_size=t.crop_size[0],
        mean=tuple(t.mean),
        std=tuple(t.std),
        interpolation=t.interpolation.value,
    )


@register_model("vgg16", default_size=224, description="VGG16, the original recipe's backbone")
def _vgg16(weights: str) -> _Body:
    net = _torchvision_body("vgg16", weights)
    backbone = nn.Sequential(net.features, net.avgpool)  # (N, 512, 7, 7)
    return _Body(
        backbone, 512 * 7 * 7, None, _torchvision_preprocessing("vgg16"), net.classifier[0]
    )


@register_model(
    "smallcnn", default_size=64, description="A small CNN trained from scratch (demo, tests)"
)
def _smallcnn(weights: str) -> _Body:
    if weights != "none":
        raise ModelError("smallcnn has no pretrained weights; use --weights none")
    chans = (3, 16, 32, 64, 96)
    layers: list[nn.Module] = []
    for cin, cout in itertools.pairwise(chans):
        layers += [
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
    pre = Preprocessing(resize_size=64, crop_size=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return _Body(nn.Sequential(*layers), chans[-1], nn.AdaptiveAvgPool2d(1), pre)
