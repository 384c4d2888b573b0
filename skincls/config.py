"""Configuration: one small pydantic model per component, composed into `RunConfig`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .atomic import atomic_write
from .errors import ConfigError

__all__ = [
    "DataConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "load_config",
    "merge_overrides",
    "save_config",
]


class _Config(BaseModel):
    # Unknown keys are typos: reject them instead of silently ignoring them.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Config):
    """Where the prepared dataset lives and how images are fed to the model."""

    data_dir: Path = Field(
        default=Path("data"), description="Prepared data dir (from `skincls fetch`)."
    )
    image_size: int | None = Field(
        default=None, ge=16, le=1024, description="Crop size in pixels; default: the weights' own."
    )
    num_workers: int = Field(default=0, ge=0, description="DataLoader worker processes.")
    augment: bool = Field(
        default=False,
        description="Flips, 90° turns, small affine and colour jitter on train images.",
    )


class ModelConfig(_Config):
    """Which network to build; see `skincls.models.create_model`."""

    arch: str = Field(default="vgg16", description="A name from `skincls models`.")
    weights: str = Field(default="imagenet", description="'imagenet', 'none' or a state-dict file")
    head: tuple[Annotated[int, Field(ge=1)], ...] = Field(
        default=(4096, 512), description="Hidden layer widths of the head; () for a linear head."
    )
    dropout: float = Field(
        default=0.5, ge=0.0, lt=1.0, description="Dropout after each hidden head layer."
    )
    freeze: Literal["backbone", "none"] | Annotated[int, Field(ge=0, strict=True)] = Field(
        default="backbone",
        description="'backbone', 'none' or how many trailing backbone stages train.",
    )


class TrainConfig(_Config):
    """Optimisation recipe; defaults reproduce the original script (Adam 1e-3, batch 20, 10 epochs)."""

    @model_validator(mode="before")
    @classmethod
    def _legacy_amp(cls, data: Any) -> Any:
        """Configs and checkpoints from before `precision` said `amp: true|false|null`."""
        if isinstance(data, dict) and "amp" in data and "precision" not in data:
            data = dict(data)
            data["precision"] = "fp32" if data.pop("amp") is False else "auto"
        return data

    epochs: int = Field(default=10, ge=1, description="Epochs of the first (head) phase.")
    batch_size: int = Field(default=20, ge=1, description="Training batch size.")
    lr: float = Field(
        default=1e-3, gt=0, description="Learning rate (of the head; see backbone_lr_mult)."
    )
    optimizer: Literal["auto", "adam", "adamw", "sgd"] = Field(
        default="auto", description="auto: Adam, or AdamW when weight_decay > 0."
    )
    weight_decay: float = Field(default=0.0, ge=0, description="Weight decay (decoupled, AdamW).")
    schedule: Literal["none", "cosine", "plateau"] = Field(
        default="none",
        description="LR schedule per phase: cosine (per step, after warmup) or plateau.",
    )
    warmup_epochs: float = Field(default=0.0, ge=0, description="Linear LR warmup (cosine only).")
    label_smoothing: float = Field(
        default=0.0, ge=0, lt=1, description="Label smoothing of the training loss."
    )
    class_weights: Literal["none", "balanced"] = Field(
        default="none", description="balanced: weight the training loss by inverse class frequency."
    )
    sampler: Literal["shuffle", "balanced"] = Field(
        default="shuffle", description="balanced: draw classes equally often (with replacement)."
    )
    finetune_epochs: int = Field(
        default=0, ge=0, description="Epochs of a second phase with the backbone (partly) unfrozen."
    )
    unfreeze: Literal["all"] | Annotated[int, Field(ge=1, strict=True)] = Field(
        default="all",
        description="Fine-tuning phase: 'all' or how many trailing backbone stages train.",
    )
    backbone_lr_mult: float = Field(
        default=0.1, gt=0, le=1, description="Backbone LR = lr × this while fine-tuning."
    )
    patience: int | None = Field(
        default=None, ge=1, description="Early stopping: epochs without improvement; None = off."
    )
    monitor: Literal["val_loss", "val_accuracy"] = Field(
        default="val_loss", description="What decides the best checkpoint and early stopping."
    )
    cache_features: Literal["auto", "memory", "disk", "off"] = Field(
        default="auto", description="Frozen backbone: compute its features once (memory or disk)."
    )
    inference_batch_size: int = Field(
        default=32, ge=1, description="Batch size of the feature-extraction pass."
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto",
        description="auto: bf16 on CUDA where supported (else fp16); on CPUs with native bf16, bf16 "
        "for the frozen feature pass, evaluation and prediction, fp32 for training steps.",
    )
    seed: int = Field(default=0, description="Seeds init, shuffling and augmentation.")
    device: str = Field(default="auto", description="auto, cpu, cuda, cuda:N or mps.")


class RunConfig(_Config):
    """Everything one `skincls train` run needs; written as `config.json` next to its outputs."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    out: Path | None = Field(
        default=None,
        description="Run directory for checkpoints, history and config; default: a new "
        "runs/ARCH-YYYYMMDD-HHMMSS.",
    )


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML or JSON config file (optional) and apply dotted-key overrides on top.

    Args:
        path: A `.yaml`, `.yml` or `.json` file with `RunConfig`'s nested layout, or None.
        overrides: e.g. `{"train.epochs": 3}`; `None` values are skipped (option not given).

    Raises:
        ConfigError: unreadable file or invalid values, with the offending key named.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        try:
            raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"config file {path} is not valid {path.suffix[1:]}: {exc}") from exc
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping, not {type(raw).__name__}")
    return _validate(merge_overrides(raw, overrides or {}), source=path)


def merge_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of `raw` with each dotted key in `overrides` set (None values skipped)."""
    merged = json.loads(json.dumps(raw, default=str))
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = merged
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key {key!r} must be a mapping")
        node[leaf] = value
    return merged


def _validate(raw: dict[str, Any], source: Path | None) -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        origin = f" in {source}" if source else ""
        hint = " (unknown key)" if first["type"] == "extra_forbidden" else ""
        raise ConfigError(f"invalid config{origin}: {where}: {first['msg']}{hint}") from exc


def save_config(config: BaseModel, path: str | Path) -> None:
    """Write a resolved config as pretty JSON, atomically (`--resume` reads it back)."""
    with atomic_write(path, "w") as fh:
        fh.write(config.model_dump_json(indent=2) + "\n")
