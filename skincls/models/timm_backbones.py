"""timm backbones: `arch="timm/NAME"` builds any timm model, without its classifier, as a `Body`.

The stages come from the model's own `group_matcher` (a CNN's stem and stages, a ViT's blocks), the
preprocessing from its `pretrained_cfg`, and the weights from the Hugging Face Hub cache (timm's own
loading), a local `.safetensors` / state-dict file (passed through timm's checkpoint filter for the
family, as hub weights are), or nowhere. timm is imported only here, and only
when a `timm/` name is used.
"""

from __future__ import annotations

import logging
import math
import pickle
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelError, call, opt
from ..preprocessing import Preprocessing
from .backbones import Body, ModelSpec, Stage

__all__ = ["PREFIX", "is_timm_arch", "list_timm_models", "load_weights_file", "timm_spec"]

PREFIX = "timm/"
PRETRAINED = ("imagenet", "pretrained")
# The model config's record of `timm.create_model`'s arguments (besides `num_classes=0`), with
# which a checkpoint's model is built again.
TIMM_ARGS = "timm_args"
# Below this share of the model's tensors found in a weights file, the file is for another model.
MIN_FIT = 0.5
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")

log = logging.getLogger(__name__)


def is_timm_arch(arch: str) -> bool:
    return arch.startswith(PREFIX)


def _import_timm() -> Any:
    try:
        import timm
    except ImportError as exc:
        raise ModelError(
            f"timm backbones need the optional packages timm, huggingface_hub and safetensors "
            f"({exc.name} is missing); install them with: pip install 'skincls[timm]'"
        ) from exc
    return timm


_FROM_SCRATCH = opt("weights='none'", "freeze='none'")


def timm_spec(
    arch: str, image_size: int | None = None, built_as: Mapping[str, Any] | None = None
) -> ModelSpec:
    """The registry entry of `timm/NAME` (NAME as timm spells it, optionally with a `.tag`), built
    for `image_size` px crops (default: the weights' own size; see `_create`), or, given a
    checkpoint's model config `built_as`, built again as it was for that checkpoint (`_rebuild`)."""
    timm = _import_timm()
    name = arch[len(PREFIX) :]
    if not name or not timm.is_model(name):
        raise ModelError(
            f"timm has no model {name!r}; list what it offers with: "
            + call("list_timm_models", pattern=f"*{name.split('.')[0][:12]}*")
        )
    build = partial(_build, name, image_size=image_size, built_as=built_as)
    return ModelSpec(arch, build, description=f"timm {name}")


def list_timm_models(pattern: str = "*", pretrained: bool = True) -> list[str]:
    """timm's model names matching `pattern` (with their weight tags when `pretrained`)."""
    return list(_import_timm().list_models(pattern or "*", pretrained=pretrained))


def _build(
    name: str,
    weights: str,
    image_size: int | None = None,
    built_as: Mapping[str, Any] | None = None,
) -> Body:
    if built_as is not None:
        if weights != "none":
            raise ValueError("a model built as a checkpoint's takes its weights from it: 'none'")
        net, args = _rebuild(name, built_as, image_size)
    elif weights in PRETRAINED:
        net, args = _pretrained(name, image_size)
    elif weights == "none":
        net, args = _create(name, pretrained=False, size=image_size)
    else:
        net, args = _from_file(name, Path(weights), image_size)
    dim = getattr(net, "head_hidden_size", None) or net.num_features
    pre = timm_preprocessing(net)
    return Body(net, int(dim), None, timm_stages(net), pre, config={TIMM_ARGS: args})


def _rebuild(
    name: str, built_as: Mapping[str, Any], size: int | None
) -> tuple[nn.Module, dict[str, Any]]:
    """`timm/NAME` without weights, built with the `timm.create_model` arguments recorded in a
    checkpoint's model config: the same module as in training (`pretrained=True` changes some
    models, e.g. fbnetc_100's batch-norm eps), timm's weight loading skipped.

    Checkpoints from before the record: sizes found again by `_create`, and built as pretrained
    when trained from hub weights (always built so), else not (as weights files were then).
    """
    args = built_as.get(TIMM_ARGS)
    if args is None:
        pretrained = built_as.get("weights") in PRETRAINED
        with _timm_loader(_no_load) if pretrained else nullcontext():
            return _create(name, pretrained=pretrained, size=size)
    if not isinstance(args, Mapping) or not isinstance(args.get("pretrained"), bool):
        raise ModelError(
            f"its {TIMM_ARGS} {args!r} are not timm.create_model's arguments "
            "(a mapping with pretrained: true or false)"
        )
    kwargs = {k: v for k, v in args.items() if k != "pretrained"}
    with _timm_loader(_no_load) if args["pretrained"] else nullcontext():
        net = _timm_create(name, args["pretrained"], **kwargs)
    if net is None:
        raise ModelError(
            f"timm {_import_timm().__version__} cannot build {name} with the arguments it was "
            f"trained with ({kwargs}); install the timm version it was trained with"
        )
    return net, dict(args)


def _no_load(model: nn.Module, *args: Any, **kwargs: Any) -> None:
    """timm's `load_pretrained` for a model whose weights come from elsewhere."""


def _create(
    name: str, pretrained: bool, size: int | None = None, overlay: dict | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """The model with its classifier removed: `forward` gives pooled (N, D) features; and the
    arguments it was built with (`pretrained` and the others given to `timm.create_model`).

    Vision transformers are built with `dynamic_img_size` (the position embedding is resampled to
    each input), other families as timm builds them. At a `size` other than the weights' own, the
    model is first run once on a blank image of that size; one that fails (Swin-like windows,
    MaxViT, LeViT, EVA at a size its patches do not divide...) is built again with timm's
    `img_size=size` (position tables resampled when pretrained weights load), and refused in one
    line if it cannot run at `size` even so. `overlay`: timm's `pretrained_cfg_overlay`.
    """
    args: dict[str, Any] = {"pretrained": pretrained, "dynamic_img_size": True}
    net = _timm_create(name, pretrained, overlay, dynamic_img_size=True)
    if net is None:  # families without the option (CNNs)
        args = {"pretrained": pretrained}
        net = _timm_create(name, pretrained, overlay)
    native = int((getattr(net, "pretrained_cfg", None) or {}).get("input_size", (0,))[-1])
    if size is None or size == native:
        return net, args
    problem = _fails_at(net, size)
    if problem is None:
        return net, args
    sized = _timm_create(name, pretrained, overlay, img_size=size)
    if sized is not None and _fails_at(sized, size) is None:
        return sized, {"pretrained": pretrained, "img_size": size}
    raise ModelError(
        f"timm/{name} runs only at its native input size of {native} px, not {size} px ({problem}); "
        f"train it at {opt('data.image_size', value=native)} (the default), or choose a model "
        "that takes any size (a CNN, or a ViT)"
    )


def _timm_create(
    name: str, pretrained: bool, overlay: dict | None = None, **kwargs: Any
) -> nn.Module | None:
    """`timm.create_model` without a classifier; None when the family takes no such `kwargs`."""
    timm = _import_timm()
    try:
        return timm.create_model(
            name, pretrained=pretrained, num_classes=0, pretrained_cfg_overlay=overlay, **kwargs
        )
    except TypeError:
        if not kwargs:
            raise
        return None
    except RuntimeError as exc:  # e.g. "Invalid pretrained tag (x) for resnet50."
        # timm's strict loading of hub weights it could not resample to the size asked (LeViT)
        sizes = re.findall(
            r"size mismatch for ([\w.]+): copying a param with shape "
            r"torch.Size\((\[[\d, ]*\])\) from checkpoint, the shape in current "
            r"model is torch.Size\((\[[\d, ]*\])\)",
            str(exc),
        )
        if sizes:
            refusal = f"the pretrained weights of timm/{name} do not fit it"
            raise ModelError(
                _unfit(refusal, kwargs.get("img_size"), sizes, _NOT_RESAMPLED)
            ) from exc
        raise ModelError(f"timm cannot build {name!r}: {_why(exc)}") from exc


def _fails_at(net: nn.Module, size: int) -> str | None:
    """Why `net` cannot take (1, 3, size, size) images (its first error line); None if it can."""
    training = net.training
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, 3, size, size))
    except Exception as exc:  # a size check (assert), a reshape or a table index that does not fit
        return " ".join(str(exc).split())[:120] or type(exc).__name__
    finally:
        net.train(training)
    return None


def _pretrained(name: str, size: int | None) -> tuple[nn.Module, dict[str, Any]]:
    """timm's pretrained weights via the Hugging Face Hub cache (HF_HOME, HF_HUB_OFFLINE apply)."""
    try:
        return _create(name, pretrained=True, size=size)
    except (OSError, ValueError) as exc:  # LocalEntryNotFoundError and URLError are OSErrors
        raise ModelError(_offline_message(name, exc)) from exc


def _offline_message(name: str, exc: Exception) -> str:
    from huggingface_hub import constants

    cfg = _import_timm().models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None)
    if not hub_id:  # weights published at a plain URL: timm fetches them with torch.hub
        dest = Path(torch.hub.get_dir()) / "checkpoints"
        where = f"download {getattr(cfg, 'url', None)} elsewhere and put it in {dest} (TORCH_HOME)"
    else:
        where = (
            f"run `hf download {hub_id}` (or `huggingface-cli download {hub_id}`) where there is "
            f"network and copy the cache to {constants.HF_HUB_CACHE} (set HF_HOME to move it)"
        )
    reason = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else type(exc).__name__
    return (
        f"could not get the pretrained weights for timm/{name} ({reason}; they are not in the "
        f"cache). Offline options: {where}; or pass a .safetensors or state-dict file with "
        f"{opt('weights=FILE')}; or train from scratch with {_FROM_SCRATCH}"
    )


# Why a tensor can keep another shape than the model's after timm's filter for the family.
_NOT_RESAMPLED = ", and timm cannot resample them for this family"


def _unfit(refusal: str, size: int | None, shapes: list[tuple[str, str, str]], why: str) -> str:
    """The one line for tensors of the model's that the weights hold in another shape."""
    at = f" at {size} px" if size else ""
    key, theirs, ours = shapes[0]
    others = f"; also {_some([k for k, _, _ in shapes[1:]])}" if len(shapes) > 1 else ""
    return (
        f"{refusal}{at}: {len(shapes)} tensors have another shape in the weights than in the "
        f"model{why} ({key}: {theirs} in the weights, "
        f"{ours} in the model{others}). If the weights were made for "
        f"another input size, build the model at that size with {opt('data.image_size=N')}; or "
        f"train without them with {_FROM_SCRATCH}"
    )


# `_timm_loader` swaps a global of timm's: one model build at a time.
_LOADER_LOCK = threading.Lock()


def _from_file(name: str, path: Path, size: int | None) -> tuple[nn.Module, dict[str, Any]]:
    """`timm/NAME` built for `size` with the weights of `path`, as timm loads weights from the hub.

    timm builds the model as for pretrained weights, but its loader only notes the family's
    checkpoint filter (`checkpoint_filter_fn`: position tables resampled to the model's grid,
    original layouts converted), which then adapts the file's tensors before they are loaded.
    """
    state = _read_state(path)
    filters: list[tuple[nn.Module, Callable | None]] = []

    def note_filter(model: nn.Module, *args: Any, **kwargs: Any) -> None:
        filters.append((model, kwargs.get("filter_fn")))

    with _timm_loader(note_filter):  # `file`: if timm loads by another way, it reads this file
        net, args = _create(name, pretrained=True, size=size, overlay={"file": str(path)})
    filter_fn = next((fn for model, fn in filters if model is net), None)
    why = ""
    if filter_fn is not None:
        why = _NOT_RESAMPLED
        raw, state = state, _filtered(filter_fn, state, net, f"timm's {name}", path)
        resized = [k for k, v in state.items() if k in raw and v.shape != raw[k].shape]
        if resized:
            log.info("%s: resampled to the model's size by timm: %s", path, _some(resized))
    _load_state(net, state, path, f"timm's {name}", size, why)
    return net, args


@contextmanager
def _timm_loader(load: Callable[..., None]) -> Iterator[None]:
    """timm's `build_model_with_cfg` calls `load` instead of its own `load_pretrained`."""
    from timm.models import _builder

    with _LOADER_LOCK:
        before, _builder.load_pretrained = _builder.load_pretrained, load
        try:
            yield
        finally:
            _builder.load_pretrained = before


def _filtered(
    filter_fn: Callable, state: dict[str, torch.Tensor], net: nn.Module, what: str, path: Path
) -> dict[str, torch.Tensor]:
    """`state` through the family's checkpoint filter, called as timm calls it."""
    try:
        try:
            state = filter_fn(dict(state), net)
        except TypeError:  # older filters take the state dict only (as in timm's load_pretrained)
            state = filter_fn(dict(state))
    except Exception as exc:  # the family's own code on a file it was not written for
        raise ModelError(
            f"timm's conversion of weights file {path} for {what} failed ({_why(exc)}); it must be "
            "a state dict saved from that model"
        ) from exc
    return dict(state)


def load_weights_file(net: nn.Module, path: str | Path, what: str) -> None:
    """Load a `.safetensors` or PyTorch state-dict file into `net`, naming what does not fit.

    Nothing is unpickled beyond tensors (`safetensors`, or `torch.load(weights_only=True)`). Tensors
    whose name and shape match are loaded; the rest are named in one log line, and the model's own
    tensors the file lacks stay as initialised (a warning). A file that fits less than half of the
    model, or has a tensor of the model's in another shape, is refused.

    Raises:
        ModelError: the file is missing, unreadable, not a state dict, or for another model.
    """
    path = Path(path)
    _load_state(net, _read_state(path), path, what)


def _load_state(
    net: nn.Module,
    state: dict[str, torch.Tensor],
    path: Path,
    what: str,
    size: int | None = None,
    why: str = "",
) -> None:
    expected = net.state_dict()
    fits = {k: v for k, v in state.items() if k in expected and v.shape == expected[k].shape}
    unused = [k for k in state if k not in fits]
    missing = [k for k in expected if k not in fits and not k.endswith(".num_batches_tracked")]
    counted = [k for k in expected if not k.endswith(".num_batches_tracked")]
    if len([k for k in fits if not k.endswith(".num_batches_tracked")]) < MIN_FIT * len(counted):
        raise ModelError(
            f"weights file {path} does not fit {what}: only {len(fits)} of its {len(state)} "
            f"tensors match by name and shape (the model has {len(counted)}; e.g. the file has "
            f"{_some(unused)}). It must be a state dict saved from that model"
        )
    shapes = [
        (k, str(list(v.shape)), str(list(expected[k].shape)))
        for k, v in state.items()
        if k in expected and k not in fits
    ]
    if shapes:  # left as initialised, they would train on random values (a ViT's positions)
        raise ModelError(_unfit(f"weights file {path} does not fit {what}", size, shapes, why))
    net.load_state_dict(fits, strict=False)
    note = f"loaded {len(fits)} of {len(state)} tensors from {path}"
    note += f"; not used: {_some(unused)}" if unused else ""
    if missing:
        log.warning("%s; not in the file (left as initialised): %s", note, _some(missing))
    else:
        log.info("%s", note)


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelError(
            f"weights must be 'imagenet', 'none' or an existing .safetensors or state-dict file; "
            f"{path} is none of these"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device="cpu") as fh:
                state = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118
                if (fh.metadata() or {}).get("skincls"):  # a checkpoint, not a state dict
                    state = {"format": None, "state_dict": state}
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError as exc:
        raise ModelError(
            "reading .safetensors files needs the optional package safetensors; install it with: "
            "pip install 'skincls[timm]'"
        ) from exc
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ModelError(f"cannot read weights file {path} as a state dict: {_why(exc)}") from exc
    except Exception as exc:  # safetensors' own error (damaged header, truncated file)
        if type(exc).__name__ != "SafetensorError":
            raise
        raise ModelError(f"cannot read weights file {path} as a state dict: {_why(exc)}") from exc
    if isinstance(state, Mapping) and "state_dict" in state and "format" in state:
        raise ModelError(
            f"{path} is a skincls checkpoint, not a state dict; evaluate or predict with it directly"
        )
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ModelError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(state)


def _why(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200]


def _some(keys: list[str], n: int = 5) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def timm_preprocessing(net: nn.Module) -> Preprocessing:
    """Size, crop fraction, mean/std and interpolation from the model's `pretrained_cfg`."""
    cfg = _import_timm().data.resolve_model_data_config(net)
    crop = int(cfg["input_size"][-1])
    resize = max(crop, math.floor(crop / (cfg.get("crop_pct") or 1.0)))
    interpolation = cfg.get("interpolation")
    return Preprocessing(
        resize_size=resize,
        crop_size=crop,
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        # timm's "random" / "lanczos" / "hamming" are not tensor resizes: bicubic is the closest.
        interpolation=interpolation if interpolation in _INTERPOLATIONS else "bicubic",
    )


class _Params(nn.Module):
    """Parameters a model holds directly (a ViT's cls_token, pos_embed), as a freezable stage part."""

    def __init__(self, params: list[nn.Parameter]):
        super().__init__()
        self.params = nn.ParameterList(params)


def timm_stages(net: nn.Module) -> tuple[Stage, ...]:
    """The model's coarse parameter groups (timm's `group_matcher`), input to output, as stages.

    Each stage is the largest submodules whose parameters all belong to the group (so a frozen
    block's dropout stays off too), plus any loose parameters of a parent module.
    """
    if not hasattr(net, "group_matcher"):
        return ((net,),)
    from timm.models import group_parameters

    groups = group_parameters(net, net.group_matcher(coarse=True))
    names = {id(p): n for n, p in net.named_parameters()}
    owned = {
        mod_name: {names[id(p)] for p in mod.parameters()} for mod_name, mod in net.named_modules()
    }
    params = dict(net.named_parameters())
    modules = dict(net.named_modules())
    stages = []
    for gid in sorted(groups):
        group = set(groups[gid])
        chosen: list[str] = []
        for mod_name, own in owned.items():
            if own and own <= group and not any(_inside(mod_name, c) for c in chosen):
                chosen.append(mod_name)
        covered = set().union(*(owned[c] for c in chosen)) if chosen else set()
        loose = [params[n] for n in groups[gid] if n not in covered]
        stage = tuple(modules[c] for c in chosen) + ((_Params(loose),) if loose else ())
        stages.append(stage)
    return tuple(stages)


def _inside(name: str, parent: str) -> bool:
    return parent == "" or name == parent or name.startswith(parent + ".")
