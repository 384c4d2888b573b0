"""Models: `create_model` puts a transfer head on a registered or a custom backbone, and freezes it.

Every model is `SkinClassifier(backbone, pool, head)`: the backbone maps an image batch to features, `pool`
averages a feature map to a vector, the head maps features to class logits. Freezing applies to backbone
stages; a frozen stage stays in eval mode during training, so its BatchNorm statistics never move.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import ModelError
from ..preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from .backbones import Body, ModelSpec, Stage, get_spec, list_models, register_model
from .fused import FusedExtractor, FusedHead, MetadataSpec, fuse, metadata_net
from .timm_backbones import is_timm_arch, timm_spec

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Body",
    "FeatureExtractor",
    "ModelInfo",
    "ModelSpec",
    "Preprocessing",
    "SkinClassifier",
    "count_parameters",
    "create_model",
    "describe_models",
    "list_models",
    "register_model",
    "set_freeze",
]

Freeze = str | int  # "backbone" | "none" | number of trailing backbone stages to train


class SkinClassifier(nn.Module):
    """`backbone` (images → features) + `pool` + `head` (features → logits).

    It answers the trainer's questions (`skincls.training.contract`): its parameter groups (the
    backbone at a lower learning rate while fine-tuning), what each phase freezes, and the
    backbone/head split that the feature cache uses.

    Attributes:
        stages: Groups of backbone submodules, input to output, that `set_freeze` freezes or trains.
        preprocessing: What the backbone's weights expect; written into checkpoints.
        config: Plain values `create_model` was called with (arch, weights, head, dropout, freeze,
            num_classes), enough to rebuild the network from a checkpoint.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        pool: nn.Module | None = None,
        *,
        stages: Sequence[Stage] | None = None,
        preprocessing: Preprocessing | None = None,
        config: Mapping[str, Any] | None = None,
        meta: nn.Module | None = None,
        image_dim: int | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.pool = pool if pool is not None else nn.Identity()
        self.head = head
        # A plain tuple, not submodules: the same modules are already registered under `backbone`.
        self.stages: tuple[Stage, ...] = (
            tuple(tuple(s) for s in stages) if stages is not None else _child_stages(backbone)
        )
        _check_stages(backbone, self.stages)
        self.preprocessing = preprocessing or Preprocessing()
        self.config: dict[str, Any] = dict(config or {})
        # Metadata fusion (`fused`): the metadata branch, and the image features' width before it.
        self.meta = meta
        self.image_dim = image_dim
        self.uses_image = bool((self.config.get("metadata") or {}).get("image", True))

    @property
    def takes_metadata(self) -> bool:
        """Whether `forward` takes a second input, the encoded metadata (N, width)."""
        return self.meta is not None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) images → (N, D) features, the head's input."""
        return torch.flatten(self.pool(self.backbone(x)), 1)

    def forward(self, x: torch.Tensor, metadata: torch.Tensor | None = None) -> torch.Tensor:
        if self.meta is None:
            return self.head(self.features(x))
        if metadata is None:
            raise ModelError(
                "this model also takes the images' metadata: call it as model(images, metadata)"
            )
        return fuse(self.meta, self.head, self.features(x), metadata, self.uses_image)

    def _fused_head(self) -> FusedHead:
        return FusedHead(self.meta, self.head, int(self.image_dim or 0), self.uses_image)

    def train(self, mode: bool = True) -> SkinClassifier:
        """Like `nn.Module.train`, but frozen stages and frozen BatchNorm layers stay in eval mode.

        A frozen stage is a fixed function: its BatchNorm running statistics must not drift towards the
        new data, and its dropout / stochastic depth must not perturb the features.
        """
        super().train(mode)
        if mode:
            for stage in self.stages:
                if _frozen(stage):
                    for m in stage:
                        m.eval()
            for m in self.backbone.modules():
                if isinstance(m, _BatchNorm) and _frozen((m,)):
                    m.eval()
        return self

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """All parameters after the backbone (pool, metadata branch and head)."""
        meta = self.meta.parameters() if self.meta is not None else ()
        return itertools.chain(self.pool.parameters(), meta, self.head.parameters())

    # What the trainer asks of a model (the contract in `skincls.training.contract`).
    def param_groups(self, phase: Any) -> list[dict[str, Any]]:
        """Trainable parameters as optimizer groups: "head" (pool and head) at `phase.lr`, and
        "backbone" at `phase.lr * phase.backbone_lr_mult` when some of it trains.

        With `phase.layer_decay` d < 1 (layer-wise LR decay) the backbone is one group per stage,
        "stage{i}", the last at that rate and each one before it d times the next one's.
        """
        head = [p for p in self.head_parameters() if p.requires_grad]
        groups = [{"params": head, "lr": phase.lr, "name": "head"}]
        top = phase.lr * phase.backbone_lr_mult
        decay = getattr(phase, "layer_decay", 1.0)
        if decay < 1:
            last = len(self.stages) - 1
            for i, stage in enumerate(self.stages):
                params = [p for m in stage for p in m.parameters() if p.requires_grad]
                lr = top * decay ** (last - i)
                groups.append({"params": params, "lr": lr, "name": f"stage{i}"})
        else:
            body = [p for p in self.backbone.parameters() if p.requires_grad]
            groups.append({"params": body, "lr": top, "name": "backbone"})
        return [g for g in groups if g["params"]]

    def freeze(self, phase: Any) -> None:
        """Apply the phase's freeze policy (`set_freeze`), if it has one."""
        if phase.freeze is not None:
            set_freeze(self, phase.freeze)

    def split_for_cache(self) -> tuple[nn.Module, nn.Module]:
        """(backbone + pool: images → features, head): what a frozen backbone's feature cache splits.

        With metadata: (images, metadata) → [features | metadata], and the metadata branch + head.
        """
        if self.meta is not None:
            return FusedExtractor(self.backbone, self.pool), self._fused_head()
        return FeatureExtractor(self.backbone, self.pool), self.head


class FeatureExtractor(nn.Module):
    """`backbone` then `pool`, flattened: (N, 3, H, W) images → (N, D) features (shares their weights)."""

    def __init__(self, backbone: nn.Module, pool: nn.Module):
        super().__init__()
        self.backbone, self.pool = backbone, pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.backbone(x)), 1)


def _frozen(modules: Sequence[nn.Module]) -> bool:
    params = [p for m in modules for p in m.parameters()]
    return bool(params) and not any(p.requires_grad for p in params)


def _child_stages(backbone: nn.Module) -> tuple[Stage, ...]:
    """A custom backbone's stages: its top-level children, parameter-free ones merged into a neighbour."""
    children = list(backbone.children())
    if not children or any(True for _ in backbone.parameters(recurse=False)):
        return ((backbone,),)
    stages: list[list[nn.Module]] = []
    for child in children:
        if stages and not (_has_params((child,)) and _has_params(stages[-1])):
            stages[-1].append(child)
        else:
            stages.append([child])
    return tuple(map(tuple, stages))


def _has_params(modules: Sequence[nn.Module]) -> bool:
    return any(True for m in modules for _ in m.parameters())


def _check_stages(backbone: nn.Module, stages: Sequence[Stage]) -> None:
    covered = {id(p) for stage in stages for m in stage for p in m.parameters()}
    left = [n for n, p in backbone.named_parameters() if id(p) not in covered]
    if left:
        raise ModelError(f"backbone stages leave parameters out: {', '.join(left[:5])}")


def set_freeze(model: SkinClassifier, freeze: Freeze) -> None:
    """Choose which backbone stages train; the head always trains.

    Args:
        model: A model from `create_model`.
        freeze: "backbone" (all stages frozen, the original recipe), "none" (all train) or an integer k:
            the last k stages train, the rest stay frozen (0 = "backbone", len(model.stages) = "none").

    Raises:
        ModelError: an unknown policy or k out of range.
    """
    n = len(model.stages)
    if freeze == "backbone":
        k = 0
    elif freeze == "none":
        k = n
    elif isinstance(freeze, int) and not isinstance(freeze, bool) and 0 <= freeze <= n:
        k = freeze
    else:
        raise ModelError(
            f"freeze must be 'backbone', 'none' or how many trailing backbone stages train "
            f"(0 to {n} for this model), not {freeze!r}"
        )
    for i, stage in enumerate(model.stages):
        for m in stage:
            for p in m.parameters():
                p.requires_grad_(i >= n - k)
    for p in model.head_parameters():
        p.requires_grad_(True)
    model.config["freeze"] = freeze
    model.train(model.training)  # re-apply eval mode to what is frozen now


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters, or of those with `requires_grad`."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def create_model(
    arch: str | None = None,
    num_classes: int = 2,
    weights: str | Path | None = None,
    head: Sequence[int] = (4096, 512),
    dropout: float = 0.5,
    freeze: Freeze = "backbone",
    *,
    backbone: nn.Module | None = None,
    preprocessing: Preprocessing | Mapping[str, Any] | None = None,
    image_size: int | None = None,
    metadata: Mapping[str, Any] | None = None,
    built_as: Mapping[str, Any] | None = None,
) -> SkinClassifier:
    """Build a transfer-learning classifier (as `timm.create_model` and torchvision's `get_model` do).

    The default is the original recipe: VGG16 with ImageNet weights, conv base frozen, head
    Linear(25088, 4096) (ImageNet weights kept) → ReLU → Dropout → Linear(4096, 512) → ReLU → Dropout →
    Linear(512, num_classes).

    Args:
        arch: A name from `list_models()`, or "timm/NAME" for any timm model (its classifier
            removed, its stages and preprocessing its own); default "vgg16". Leave it out with
            `backbone=`.
        num_classes: Output classes.
        weights: "imagenet" (default; torchvision's, via the torch hub cache; timm's via the Hugging
            Face Hub cache), "none" (random init) or a state-dict file saved from the torchvision
            model of `arch` (for timm: a state-dict or .safetensors file of that model). Leave it
            out with `backbone=`.
        head: Hidden layer widths of the head; () for a linear head. For VGG a first width of 4096
            reuses the pretrained 25088→4096 layer.
        dropout: Dropout probability after each hidden layer.
        freeze: "backbone", "none" or how many trailing backbone stages train (see `set_freeze`).
        backbone: Your own `nn.Module` mapping (N, 3, H, W) images to (N, D) vectors or (N, C, h, w)
            feature maps (average-pooled); it keeps its weights. Its stages are its top-level children.
        preprocessing: What the images need; default: the weights' own, or ImageNet statistics at
            224 px for a custom backbone. A custom backbone is probed at its `crop_size`.
        image_size: The crop size the model will see; default: `preprocessing`'s, or the
            weights' own; the model's `preprocessing` is at this size. A timm model that runs
            only at its native size is built for this one when timm can (`img_size=`), else
            refused; other archs take any size.
        metadata: Fuse encoded metadata (`skincls.models.fused`): `width` (the encoder's), optional
            `hidden` (the metadata branch's width, default 32) and `image` (False: a
            metadata-only model that ignores the image features), plus whatever the caller keeps
            with it (the encoder); stored as `config["metadata"]`. The model then takes
            `(images, metadata)`; the head is built fresh over features + branch (no VGG prefix).
        built_as: A checkpoint's model config: a timm backbone is built again with the arguments
            recorded there (`timm_args`), as in training, and `weights` must be "none" (the
            checkpoint's weights are loaded next). For `Checkpoint.build_model`.

    Returns:
        The model, with `.preprocessing` (what its images need) and `.config` set.

    Raises:
        ModelError: unknown arch, bad head/dropout/freeze, unusable weights or backbone.
    """
    head = tuple(head)
    if num_classes < 1 or not all(isinstance(h, int) and h >= 1 for h in head):
        raise ModelError(
            f"num_classes and head widths must be positive integers, not {num_classes}, {head}"
        )
    if not 0 <= dropout < 1:
        raise ModelError(f"dropout must be in [0, 1), not {dropout}")
    pre = Preprocessing.model_validate(preprocessing) if preprocessing is not None else None
    config: dict[str, Any] = {}
    if backbone is not None:
        if arch not in (None, "custom") or weights is not None:
            raise ModelError(
                "with backbone= leave arch and weights out: the module brings its own weights"
            )
        body = _custom_body(backbone, pre or Preprocessing())
        config = {
            "arch": "custom",
            "weights": None,
            "backbone": _qualname(backbone),
            "feature_dim": body.feature_dim,
        }
    else:
        arch = arch or "vgg16"
        weights = "imagenet" if weights is None else str(weights)
        if is_timm_arch(arch):
            size = image_size or (pre.crop_size if pre is not None else None)
            spec = timm_spec(arch, size, built_as)
        else:
            spec = get_spec(arch)
        body = spec.build(weights)
        config = {"arch": arch, "weights": weights, **body.config}
    pre = (pre or body.preprocessing).with_size(image_size)
    config.update(head=list(head), dropout=dropout, freeze=freeze, num_classes=num_classes)
    meta, image_dim = None, body.feature_dim
    if metadata is not None:
        spec = MetadataSpec(metadata)
        config["metadata"] = dict(metadata)
        meta = metadata_net(spec.width, spec.hidden)
        width = spec.hidden + (body.feature_dim if spec.image else 0)
        body = dataclasses.replace(body, feature_dim=width, head_prefix=None)  # no VGG prefix
    model = SkinClassifier(
        body.backbone,
        _build_head(body, head, dropout, num_classes),
        body.pool,
        stages=body.stages,
        preprocessing=pre,
        config=config,
        meta=meta,
        image_dim=image_dim,
    )
    set_freeze(model, freeze)
    return model


def _build_head(
    body: Body, hidden: Sequence[int], dropout: float, num_classes: int
) -> nn.Sequential:
    def block(linear: nn.Module) -> list[nn.Module]:
        return [linear, nn.ReLU(inplace=True)] + ([nn.Dropout(dropout)] if dropout > 0 else [])

    layers: list[nn.Module] = []
    width = body.feature_dim
    hidden = list(hidden)
    prefix = body.head_prefix
    if prefix is not None and hidden and hidden[0] == prefix.out_features:
        layers += block(prefix)
        width = hidden.pop(0)
    for h in hidden:
        layers += block(nn.Linear(width, h))
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def _qualname(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def _custom_body(backbone: nn.Module, pre: Preprocessing) -> Body:
    """Probe a custom backbone with one dummy image (no grad) to learn its feature size and shape."""
    size = pre.crop_size
    ref = next(itertools.chain(backbone.parameters(), backbone.buffers()), None)
    floating = ref is not None and ref.is_floating_point()
    x = torch.zeros(
        1,
        3,
        size,
        size,
        device=ref.device if ref is not None else None,
        dtype=ref.dtype if floating else torch.float32,
    )
    was_training = backbone.training
    backbone.eval()  # BatchNorm in train mode refuses a batch of one
    try:
        with torch.no_grad():
            out = backbone(x)
    except Exception as exc:  # any user module: report it as a model error
        raise ModelError(
            f"the backbone fails on a (1, 3, {size}, {size}) batch: {exc}; give "
            "preprocessing= with a crop_size it accepts"
        ) from exc
    finally:
        backbone.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() not in (2, 4):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(
            f"a backbone must return a (N, D) or (N, C, H, W) tensor, not {got}; wrap it in a "
            "module that does"
        )
    pool = nn.AdaptiveAvgPool2d(1) if out.dim() == 4 else None
    return Body(backbone, int(out.shape[1]), pool, _child_stages(backbone), pre)


@dataclass(frozen=True)
class ModelInfo:
    """One row of `describe_models()`: sizes for the default head, 2 classes, freeze="backbone"."""

    name: str
    description: str
    params: int
    trainable: int
    stages: int
    input_size: int
    imagenet_acc1: float | None


def describe_models(num_classes: int = 2, head: Sequence[int] = (4096, 512)) -> list[ModelInfo]:
    """Every registered arch with its parameter counts and default input size.

    Built on the meta device, so no weights are allocated or downloaded.
    """
    rows = []
    for name in list_models():
        try:
            with torch.device("meta"):
                model = create_model(name, num_classes=num_classes, weights="none", head=head)
                pre = model.preprocessing
        except Exception as exc:  # a plugin's builder: report it, list the others
            logging.getLogger(__name__).warning("skipped the backbone %r: %s", name, exc)
            continue
        spec = get_spec(name)
        rows.append(
            ModelInfo(
                name,
                spec.description,
                count_parameters(model),
                count_parameters(model, trainable_only=True),
                len(model.stages),
                pre.crop_size,
                spec.imagenet_acc1,
            )
        )
    return rows
