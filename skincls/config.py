"""Configuration: one small pydantic model per component, composed into `RunConfig`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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

    data_dir: Path = Path("data")
    image_size: int | None = Field(
        default=None, ge=16, le=1024, description="Crop size in pixels; default: the weights' own."
    )
    num_workers: int = Field(default=0, ge=0)
    augment: bool = False


class ModelConfig(_Config):
    """Which network to build; see `skincls.models.create_model`."""

    arch: str = "vgg16"
    weights: str = Field(default="imagenet", description="'imagenet', 'none' or a state-dict file")
    head: tuple[int, ...] = (4096, 512)
    dropout: float = Field(default=0.5, ge=0.0, lt=1.0)
    freeze: Literal["backbone", "none"] | int = "backbone"


class TrainConfig(_Config):
    """Optimisation recipe; defaults reproduce the original script (Adam 1e-3, batch 20, 10 epochs)."""

    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=20, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    seed: int = 0
    device: str = "auto"


class RunConfig(_Config):
    """Everything one `skincls train` run needs; written as `config.json` next to its outputs."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    out: Path = Path("runs/latest")


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
    """Write a resolved config as pretty JSON."""
    Path(path).write_text(config.model_dump_json(indent=2) + "\n")
