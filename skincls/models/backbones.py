"""Backbones: the registry of named architectures, their stages, preprocessing and weight loading.

Each entry builds a `Body`: the backbone module (images → features), how to pool its output, its feature
size, its stages (for partial freezing) and the preprocessing its weights expect. `skincls.models` puts a
head on a body; nothing here knows about heads except VGG's reusable first classifier layer.
"""

from __future__ import annotations

import itertools
import logging
import pickle
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.parse import urlparse

import torch
from torch import nn

from ..errors import ModelError, call, opt
from ..preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Body",
    "ModelSpec",
    "Preprocessing",
    "get_spec",
    "list_models",
    "load_plugins",
    "register_model",
]

Stage = tuple[nn.Module, ...]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Body:
    """What a registered builder returns: a backbone and how a head attaches to it.

    Attributes:
        backbone: Images (N, 3, H, W) → features, a feature map or a vector.
        feature_dim: D, the size of the flattened, pooled features.
        pool: Applied to the backbone's output before flattening; None for identity.
        stages: Groups of backbone submodules from input to output that together hold every backbone
            parameter; `freeze=k` trains the last k.
        preprocessing: What the weights expect.
        head_prefix: A pretrained leading classifier layer the head may reuse (VGG's 25088→4096).
        config: Plain values for the model's config (and so its checkpoints) that rebuild this
            same backbone (a timm model's `timm_args`).
    """

    backbone: nn.Module
    feature_dim: int
    pool: nn.Module | None
    stages: tuple[Stage, ...]
    preprocessing: Preprocessing
    head_prefix: nn.Linear | None = None
    config: Mapping[str, Any] = field(default_factory=dict)


Acc1 = float | Callable[[], float | None] | None


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture: `build(weights)` → `Body`, weights being "imagenet", "none" or a file.

    `acc1` is the ImageNet top-1 accuracy, or a function returning it when asked (`imagenet_acc1`).
    """

    name: str
    build: Callable[[str], Body]
    description: str = ""
    acc1: Acc1 = None

    @property
    def imagenet_acc1(self) -> float | None:
        return self.acc1() if callable(self.acc1) else self.acc1


_REGISTRY: dict[str, ModelSpec] = {}
_FROM_SCRATCH = opt("weights='none'", "freeze='none'")
_ANY_TIMM = opt("arch='timm/NAME'")


def register_model(name: str, *, description: str = "", imagenet_acc1: Acc1 = None):
    """Decorator registering a body builder `fn(weights: str) -> Body` under `name`.

    `imagenet_acc1` may be a function, called only when the accuracy is shown (`skincls models`).

    Raises:
        ModelError: `name` is already registered (or is the reserved "custom").
    """

    def wrap(fn: Callable[[str], Body]) -> Callable[[str], Body]:
        if name in _REGISTRY or name == "custom":
            raise ModelError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelSpec(name, fn, description, imagenet_acc1)
        return fn

    return wrap


def list_models() -> list[str]:
    """Names accepted by `create_model(arch=...)`: registered ones and plugins' (any `timm/NAME` too)."""
    load_plugins()
    return sorted(_REGISTRY)


def get_spec(arch: str) -> ModelSpec:
    """The registry entry of `arch`, or a ModelError listing what exists."""
    if arch not in _REGISTRY:
        load_plugins()
    if arch not in _REGISTRY:
        hint = " (pass backbone=module for a custom backbone)" if arch == "custom" else ""
        raise ModelError(
            f"unknown arch {arch!r}{hint}; available: {', '.join(list_models())}, or "
            f"{_ANY_TIMM} for any timm model "
            f"({call('list_timm_models', pattern='PATTERN')})"
        )
    return _REGISTRY[arch]


PLUGIN_GROUP = "skincls.models"
_plugins_loaded = False


def load_plugins() -> None:
    """Import the backbones of installed plugins (entry points of group `skincls.models`), once.

    An entry point names a module whose import registers backbones with `register_model`, or a
    builder `fn(weights) -> Body`, registered under the entry point's name. A plugin that fails is
    reported in one log line and skipped: it never breaks `list_models`.
    """
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, type) and ep.name not in _REGISTRY:
                doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
                register_model(ep.name, description=doc[0] if doc else f"plugin {ep.value}")(obj)
        except Exception as exc:  # a third party's code: whatever it raises, skip it
            dist = getattr(ep.dist, "name", None) or "?"
            why = " ".join(str(exc).split())[:200]
            log.warning(
                "skipped the backbone plugin %r (%s, from %s): %s: %s",
                ep.name,
                ep.value,
                dist,
                type(exc).__name__,
                why,
            )


# --- torchvision families: where the backbone ends and what the replaced classifier was ---------------


@dataclass(frozen=True)
class _Split:
    backbone: nn.Module
    pool: nn.Module | None
    feature_dim: int
    stages: tuple[Stage, ...]
    head_prefix: nn.Linear | None = None


def _split_at_maxpool(layers: nn.Sequential) -> list[list[nn.Module]]:
    """VGG-style conv blocks: each block ends with a MaxPool2d."""
    blocks: list[list[nn.Module]] = [[]]
    for m in layers:
        blocks[-1].append(m)
        if isinstance(m, nn.MaxPool2d):
            blocks.append([])
    return [b for b in blocks if b]


def _vgg(net: nn.Module) -> _Split:
    backbone = nn.Sequential(OrderedDict(features=net.features, avgpool=net.avgpool))
    blocks = _split_at_maxpool(net.features)
    blocks[-1].append(net.avgpool)
    # (N, 512, 7, 7) flattened to 25088: the pretrained classifier[0] fits it, so the head can reuse it.
    return _Split(backbone, None, 512 * 7 * 7, tuple(map(tuple, blocks)), net.classifier[0])


def _resnet(net: nn.Module) -> _Split:
    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    backbone = nn.Sequential(OrderedDict((n, getattr(net, n)) for n in names))
    stem = (net.conv1, net.bn1, net.relu, net.maxpool)
    stages = (stem, *((getattr(net, f"layer{i}"),) for i in range(1, 5)))
    return _Split(backbone, nn.AdaptiveAvgPool2d(1), net.fc.in_features, stages)


def _features_each(net: nn.Module, dim: int) -> _Split:
    """EfficientNet / MobileNet: every `features[i]` is a stage."""
    backbone = nn.Sequential(OrderedDict(features=net.features))
    stages = tuple((m,) for m in net.features)
    return _Split(backbone, nn.AdaptiveAvgPool2d(1), dim, stages)


def _convnext(net: nn.Module) -> _Split:
    # The classifier's LayerNorm normalises the pooled features and is pretrained: it stays in the body.
    norm, flatten = net.classifier[0], nn.Flatten(1)
    backbone = nn.Sequential(
        OrderedDict(features=net.features, avgpool=net.avgpool, norm=norm, flatten=flatten)
    )
    f = net.features  # stem, stage1, (downsample, stage) × 3
    stages = (
        (f[0],),
        (f[1],),
        (f[2], f[3]),
        (f[4], f[5]),
        (f[6], f[7], net.avgpool, norm, flatten),
    )
    return _Split(backbone, None, net.classifier[2].in_features, stages)


def _densenet(net: nn.Module) -> _Split:
    relu = nn.ReLU(inplace=True)  # DenseNet.forward applies it after norm5
    backbone = nn.Sequential(OrderedDict(features=net.features, relu=relu))
    stages: list[list[nn.Module]] = [[]]
    for name, m in net.features.named_children():
        if name.startswith("denseblock"):
            stages.append([])
        stages[-1].append(m)
    stages[-1].append(relu)
    return _Split(
        backbone, nn.AdaptiveAvgPool2d(1), net.classifier.in_features, tuple(map(tuple, stages))
    )


_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _densenet_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # torchvision's own DenseNet files use 'norm.1'-style keys; rename them as torchvision does.
    out = {}
    for k, v in state.items():
        m = _DENSENET_OLD_KEY.match(k)
        out[m.group(1) + m.group(2) if m else k] = v
    return out


@dataclass(frozen=True)
class _Family:
    split: Callable[[nn.Module], _Split]
    discarded: tuple[str, ...]  # state-dict prefixes of the classifier parts the head replaces
    fix_keys: Callable[[dict], dict] | None = None


_VGG = _Family(_vgg, ("classifier.3.", "classifier.6."))
_EFFNET = _Family(lambda n: _features_each(n, n.classifier[1].in_features), ("classifier.",))
_FAMILIES = {
    **{f"vgg{d}{bn}": _VGG for d in (11, 13, 16, 19) for bn in ("", "_bn")},
    "resnet18": _Family(_resnet, ("fc.",)),
    "resnet50": _Family(_resnet, ("fc.",)),
    "efficientnet_b0": _EFFNET,
    "efficientnet_b3": _EFFNET,
    "efficientnet_v2_s": _EFFNET,
    "convnext_tiny": _Family(_convnext, ("classifier.2.",)),
    "mobilenet_v3_large": _Family(
        lambda n: _features_each(n, n.classifier[0].in_features), ("classifier.",)
    ),
    "densenet121": _Family(_densenet, ("classifier.",), _densenet_keys),
}


def _torchvision_preprocessing(weights: Any) -> Preprocessing:
    t = weights.transforms()
    return Preprocessing(
        resize_size=t.resize_size[0],
        crop_size=t.crop_size[0],
        mean=tuple(t.mean),
        std=tuple(t.std),
        interpolation=t.interpolation.value,
    )


def _build_torchvision(arch: str, family: _Family, weights: str) -> Body:
    from torchvision.models import get_model, get_model_weights

    default = get_model_weights(arch).DEFAULT
    if weights == "imagenet":
        net = _download(arch, default)
    else:
        net = get_model(arch, weights=None)
        if weights != "none":
            _load_file(net, weights, arch, family)
    s = family.split(net)
    return Body(
        s.backbone,
        s.feature_dim,
        s.pool,
        s.stages,
        _torchvision_preprocessing(default),
        s.head_prefix,
    )


def _download(arch: str, weights: Any) -> nn.Module:
    """torchvision's pretrained model via the torch hub cache; one clear error when it can't be had."""
    from torchvision.models import get_model

    dest = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    try:
        return get_model(arch, weights=weights)
    except (URLError, OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        reason = getattr(exc, "reason", None) or exc
        if dest.is_file():
            raise ModelError(
                f"the cached ImageNet weights for {arch} at {dest} are unreadable ({reason}); "
                f"delete the file and retry, or pass a state-dict file with {opt('weights=FILE')}"
            ) from exc
        raise ModelError(
            f"could not download the ImageNet weights for {arch} ({reason}). Offline options: "
            f"download {weights.url} elsewhere and put it at {dest} (the torch hub cache; set "
            f"TORCH_HOME to move it); or pass that or another state-dict file with "
            f"{opt('weights=FILE')}; or train from scratch with {_FROM_SCRATCH}"
        ) from exc


def _load_file(net: nn.Module, path: str | Path, arch: str, family: _Family) -> None:
    """Load a torchvision state dict (`weights_only=True`), naming every key that does not fit.

    Keys of the classifier the head replaces may be missing or differ in shape (a model fine-tuned to
    other classes fits too).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(
            f"weights must be 'imagenet', 'none' or an existing state-dict file; {path} is none of these"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ModelError(f"cannot read weights file {path} as a state dict: {exc}") from exc
    if isinstance(state, Mapping) and "state_dict" in state and "format" in state:
        raise ModelError(
            f"{path} is a skincls checkpoint, not a torchvision state dict; evaluate or predict "
            "with it directly"
        )
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ModelError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    state = dict(state)
    if family.fix_keys:
        state = family.fix_keys(state)
    expected = net.state_dict()
    kept = lambda k: not k.startswith(family.discarded)  # noqa: E731
    # Files from before torch 0.4.1 lack BatchNorm's num_batches_tracked; BatchNorm fills it in.
    missing = [
        k for k in expected if k not in state and kept(k) and not k.endswith(".num_batches_tracked")
    ]
    unexpected = [k for k in state if k not in expected and kept(k)]
    shapes = [
        f"{k} {tuple(state[k].shape)} in the file vs {tuple(expected[k].shape)} in {arch}"
        for k in state
        if k in expected and state[k].shape != expected[k].shape and kept(k)
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{what}: {_some(keys)}"
            for what, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", shapes),
            )
            if keys
        ]
        raise ModelError(
            f"weights file {path} does not fit torchvision's {arch}: {'; '.join(parts)}. "
            f"It must be a state dict saved from torchvision.models.{arch}()"
        )
    fits = {k: v for k, v in state.items() if k in expected and v.shape == expected[k].shape}
    net.load_state_dict(fits, strict=False)


def _some(keys: Sequence[str], n: int = 5) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _torchvision_acc1(arch: str) -> float | None:
    from torchvision.models import get_model_weights

    meta = get_model_weights(arch).DEFAULT.meta
    return meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")


def _register_torchvision() -> None:
    # Names only: torchvision and its weights' metadata load when a model is built or described.
    for arch, family in _FAMILIES.items():
        register_model(
            arch, description=f"torchvision {arch}", imagenet_acc1=partial(_torchvision_acc1, arch)
        )(partial(_build_torchvision, arch, family))


_register_torchvision()


@register_model("smallcnn", description="small CNN trained from scratch (demo, tests)")
def _smallcnn(weights: str) -> Body:
    if weights != "none":
        raise ModelError(
            f"smallcnn has no pretrained weights; train it from scratch with {_FROM_SCRATCH}"
        )
    chans = (3, 16, 32, 64, 96)
    layers: list[nn.Module] = []
    for cin, cout in itertools.pairwise(chans):
        layers += [
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
    net = nn.Sequential(*layers)
    stages = tuple(map(tuple, _split_at_maxpool(net)))
    pre = Preprocessing(resize_size=64, crop_size=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return Body(net, chans[-1], nn.AdaptiveAvgPool2d(1), stages, pre)
