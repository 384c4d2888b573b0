"""Configuration: one small pydantic model per component, composed into `RunConfig`."""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .atomic import atomic_write
from .config_file import MAX_CONFIG_BYTES, one_line, read_config_file
from .errors import ConfigError

__all__ = [
    "LOGGERS",
    "MAX_CONFIG_BYTES",
    "RECIPES",
    "DataConfig",
    "LoggerConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "load_config",
    "merge_overrides",
    "recipe_file",
    "save_config",
]


# Upper bounds that no real run reaches: a typo or a hostile file fails here, not hours later.
_MAX_EPOCHS = 10_000
_MAX_BATCH = 4096
_MAX_WIDTH = 65_536


class _Config(BaseModel):
    # Unknown keys are typos: reject them instead of silently ignoring them. NaN and infinity are
    # never a sensible setting (a NaN learning rate trains nothing and says nothing).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def _no_nul(value: Path) -> Path:
    if "\0" in str(value):
        raise ValueError("a path cannot contain a NUL byte")
    return value


class DataConfig(_Config):
    """Where the prepared dataset lives and how images are fed to the model."""

    data_dir: Path = Field(
        default=Path("data"), description="Prepared data dir (from `skincls fetch`)."
    )
    image_size: int | None = Field(
        default=None, ge=16, le=1024, description="Crop size in pixels; default: the weights' own."
    )
    num_workers: int = Field(default=0, ge=0, le=64, description="DataLoader worker processes.")
    augment: bool = Field(
        default=False,
        description="Flips, 90° turns, small affine and colour jitter on train images.",
    )
    augment_policy: Literal["basic", "strong"] = Field(
        default="basic",
        description="What augment does (it must be on for strong): basic (flips, 90° turns, small affine, mild colour "
        "jitter) or strong (the ISIC winners' style: dihedral flips, shift-scale-rotate, "
        "brightness/contrast/saturation/hue, blur or noise, coarse dropout).",
    )

    _check_path = field_validator("data_dir")(_no_nul)


class ModelConfig(_Config):
    """Which network to build; see `skincls.models.create_model`."""

    arch: str = Field(default="vgg16", description="A name from `skincls models`.")
    weights: str = Field(default="imagenet", description="'imagenet', 'none' or a state-dict file")
    head: tuple[Annotated[int, Field(ge=1, le=_MAX_WIDTH)], ...] = Field(
        default=(4096, 512),
        max_length=16,
        description="Hidden layer widths of the head; () for a linear head.",
    )
    dropout: float = Field(
        default=0.5, ge=0.0, lt=1.0, description="Dropout after each hidden head layer."
    )
    freeze: Literal["backbone", "none"] | Annotated[int, Field(ge=0, le=1000, strict=True)] = Field(
        default="backbone",
        description="'backbone' (only the head trains), 'none' (everything trains) or N: the last "
        "N backbone stages train, the rest stay frozen.",
    )
    metadata: str = Field(
        default="none",
        max_length=1000,
        description="Fuse the images' metadata: 'none' (images only), 'auto' (the age, sex and "
        "site columns the data records) or comma-separated manifest columns, e.g. age,sex,site.",
    )
    use_image: bool = Field(
        default=True,
        description="False: a metadata-only model (its head ignores the image features), for "
        "ablations; needs metadata.",
    )
    patient_context: bool = Field(
        default=False,
        description="Add patient context to the metadata: images per patient, the distance of "
        "an image's embedding to its patient's other images and its rank among them, from its "
        "own split only. Needs patient ids and a frozen backbone.",
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

    epochs: int = Field(
        default=10, ge=1, le=_MAX_EPOCHS, description="Epochs of the first (head) phase."
    )
    batch_size: int = Field(default=20, ge=1, le=_MAX_BATCH, description="Training batch size.")
    lr: float = Field(
        default=1e-3,
        gt=0,
        le=10,
        description="Learning rate (of the head; see backbone_lr_mult).",
    )
    optimizer: Literal["auto", "adam", "adamw", "sgd"] = Field(
        default="auto", description="auto: Adam, or AdamW when weight_decay > 0."
    )
    weight_decay: float = Field(
        default=0.0, ge=0, le=10, description="Weight decay (decoupled, AdamW)."
    )
    schedule: Literal["none", "cosine", "plateau"] = Field(
        default="none",
        description="LR schedule per phase: cosine (per step, after warmup) or plateau.",
    )
    warmup_epochs: float = Field(
        default=0.0, ge=0, le=_MAX_EPOCHS, description="Linear LR warmup (cosine only)."
    )
    checkpoint_interval: float = Field(
        default=60.0,
        ge=0,
        le=86_400,
        description="Seconds of training between writes of last.pt (the resume state; 1.4 GB for "
        "VGG16's head with Adam) and best.pt: at the end of an epoch once this much time has "
        "passed since the previous write, and at the end of the run. A killed run resumes from at "
        "most this long ago, plus the epoch in progress. 0: both at every epoch's end.",
    )
    label_smoothing: float = Field(
        default=0.0, ge=0, lt=1, description="Label smoothing of the training loss."
    )
    mixup: float = Field(
        default=0.0,
        ge=0,
        le=10,
        description="Mixup α: train on each batch mixed with a shuffled copy of itself, "
        "λ ~ Beta(α, α), loss λ·L(y) + (1 − λ)·L(y shuffled); cached features (frozen backbone) "
        "are mixed in feature space; 0: off.",
    )
    class_weights: Literal["none", "balanced"] = Field(
        default="none", description="balanced: weight the training loss by inverse class frequency."
    )
    sampler: Literal["shuffle", "balanced"] = Field(
        default="shuffle", description="balanced: draw classes equally often (with replacement)."
    )
    finetune_epochs: int = Field(
        default=0,
        ge=0,
        le=_MAX_EPOCHS,
        description="Epochs of a second phase with the backbone (partly) unfrozen.",
    )
    unfreeze: Literal["all"] | Annotated[int, Field(ge=1, le=1000, strict=True)] = Field(
        default="all",
        description="Fine-tuning phase: 'all' backbone stages train, or only the last N.",
    )
    backbone_lr_mult: float = Field(
        default=0.1, gt=0, le=1, description="Backbone LR = lr × this while fine-tuning."
    )
    layer_decay: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="Layer-wise LR decay while fine-tuning: the backbone's last stage learns at "
        "lr × backbone_lr_mult, each stage before it at this factor times the next one's; 1: off.",
    )
    ema_decay: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="Exponential moving average of the weights (e.g. 0.999), updated every step; "
        "validated, checkpointed (best.pt) and kept instead of the raw weights; 0: off.",
    )
    patience: int | None = Field(
        default=None,
        ge=1,
        le=_MAX_EPOCHS,
        description="Early stopping after this many epochs without improvement; default: off.",
    )
    monitor: Literal["val_loss", "val_accuracy"] = Field(
        default="val_loss", description="What decides the best checkpoint and early stopping."
    )
    cache_features: Literal["auto", "memory", "disk", "off"] = Field(
        default="auto", description="Frozen backbone: compute its features once (memory or disk)."
    )
    inference_batch_size: int = Field(
        default=32, ge=1, le=_MAX_BATCH, description="Batch size of the feature-extraction pass."
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto",
        description="auto: bf16 on CUDA where supported (else fp16); on CPUs with native bf16, bf16 "
        "for the frozen feature pass, evaluation and prediction, fp32 for training steps.",
    )
    seed: int = Field(
        default=0, ge=0, le=2**63 - 1, description="Seeds init, shuffling and augmentation."
    )
    device: str = Field(default="auto", description="auto, cpu, cuda, cuda:N or mps.")


LOGGERS = ("csv", "tensorboard", "mlflow")
"""What `LoggerConfig.loggers` takes; csv (history.json/csv, read by `skincls runs`) is always on."""


class LoggerConfig(_Config):
    """Where a run's per-epoch metrics go: its history files, and optionally TensorBoard or MLflow."""

    loggers: tuple[Literal["csv", "tensorboard", "mlflow"], ...] = Field(
        default=("csv",),
        max_length=16,
        description="csv (history.json/csv in the run dir; always on), tensorboard (event files "
        "in RUNDIR/tensorboard) and/or mlflow (an MLflow run: config, metrics, best.pt).",
    )
    mlflow_uri: str | None = Field(
        default=None,
        max_length=4096,
        description="MLflow tracking store, e.g. sqlite:///mlflow.db; default: "
        "$MLFLOW_TRACKING_URI, else an SQLite store in RUNDIR/mlruns.",
    )

    @field_validator("loggers")
    @classmethod
    def _csv_first(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(("csv", *value)))  # always on; each once


class RunConfig(_Config):
    """Everything one `skincls train` run needs; written as `config.json` next to its outputs."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    logging: LoggerConfig = LoggerConfig()
    out: Path | None = Field(
        default=None,
        description="Run directory for checkpoints, history and config; default: a new "
        "runs/ARCH-YYYYMMDD-HHMMSS.",
    )

    _check_path = field_validator("out")(_no_nul)


RECIPES = ("seed", "finetune", "winners")
"""The named recipes shipped with the package (skincls/recipes/NAME.yaml)."""


def recipe_file(name: str) -> Path:
    """The config file of a named recipe (`RECIPES`), shipped in the package.

    Raises:
        ConfigError: no recipe of that name.
    """
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}: give one of {', '.join(RECIPES)}")
    return Path(__file__).parent / "recipes" / f"{name}.yaml"


def load_config(
    path: str | Path | None,
    overrides: dict[str, Any] | None = None,
    *,
    names: Mapping[str, str] | None = None,
    recipe: str | None = None,
) -> RunConfig:
    """Read a YAML or JSON config file (optional) and apply dotted-key overrides on top.

    With `recipe` (a name from `RECIPES`), its file is the base: the config file's keys override
    the recipe's, and `overrides` both.

    The file is untrusted input: it may hold at most `MAX_CONFIG_BYTES`, must be UTF-8, and YAML
    aliases (`*name`, which let a few lines expand to gigabytes) are refused.

    Args:
        path: A `.yaml`, `.yml` or `.json` file with `RunConfig`'s nested layout, or None.
        overrides: e.g. `{"train.epochs": 3}`; `None` values are skipped (option not given).
        names: What to call an overridden key in messages (the CLI: the flag that set it).

    Raises:
        ConfigError: unreadable, oversized or malformed file, or invalid values; one line naming
            the offending key (or option) and what it must be.
    """
    raw: dict[str, Any] = read_config_file(recipe_file(recipe)) if recipe is not None else {}
    if path is not None:
        path = Path(path)
        raw = _deep_merge(raw, read_config_file(path))
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    merged = merge_overrides(raw, given)
    labels = {k: (names or {}).get(k, k) for k in given}
    return _validate(merged, source=path, labels=labels)


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`base` with `top`'s keys set over it, mapping into mapping."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = _deep_merge(merged[key], value)
        merged[key] = value
    return merged


def merge_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of `raw` with each dotted key in `overrides` set (None values skipped)."""
    try:
        merged = json.loads(json.dumps(raw, default=str))
    except (TypeError, ValueError) as exc:  # e.g. a YAML key that is a list
        raise ConfigError(f"config keys must be names: {one_line(exc)}") from exc
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


def _validate(
    raw: dict[str, Any], source: Path | None, labels: Mapping[str, str] | None = None
) -> RunConfig:
    try:
        # Strict types: a config holds JSON values (YAML gives real numbers and booleans), and one
        # of the wrong type is a mistake, never converted (`batch_size: true` is not a batch of 1).
        # JSON mode, so paths may be text and lists stand for tuples (Click's values are typed).
        text = json.dumps(raw, default=str)
        return RunConfig.model_validate_json(text, strict=True)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source, labels or {})) from exc


def _describe(exc: ValidationError, source: Path | None, labels: Mapping[str, str]) -> str:
    """One line in the user's words: the option or key, what it must be, and what was given."""
    errors = exc.errors(include_url=False)
    unknown = [_field_loc(e["loc"]) for e in errors if e["type"] == "extra_forbidden"]
    if unknown:
        return _describe_unknown(unknown, source)
    first = errors[0]
    loc = _field_loc(first["loc"])
    key = ".".join(map(str, loc)) or "config"
    # A field with a union type (e.g. freeze: 'backbone', 'none' or N) fails once per member.
    same = [e for e in errors if _field_loc(e["loc"]) == loc]
    if first["type"] == "value_error":  # our own validators' messages are already plain
        problem = str((first.get("ctx") or {}).get("error", first["msg"]))
    else:
        problem = "must be " + " or ".join(dict.fromkeys(_wanted(e) for e in same))
    got = repr(first["input"])
    got = got if len(got) <= 40 else got[:37] + "..."
    top = ".".join(map(str, loc[:2]))
    if top in labels or key in labels:
        return f"{labels.get(key, labels.get(top))}: {problem} (got {got})"
    where = f"invalid config in {source}" if source else "invalid config"
    return f"{where}: {key} {problem} (got {got})"


def _describe_unknown(locs: list[tuple], source: Path | None) -> str:
    """Every unknown key, each with the known key it most likely means (difflib), if any."""
    keys = [".".join(map(str, loc)) for loc in locs]
    meant: list[str | None] = []
    for loc in locs:
        parent = _model_at(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), list(parent.model_fields) if parent else [])
        meant.append(".".join(map(str, (*loc[:-1], close[0]))) if close else None)
    if all(meant):
        hint = f" (did you mean {', '.join(map(str, meant))}?)"
    elif any(meant):  # some have no likely meaning: say which guess is for which key
        pairs = [f"{m} for {k}" for k, m in zip(keys, meant) if m]
        hint = f" (did you mean {', '.join(pairs)}?)"
    else:
        hint = ""
    where = f" in config file {source}" if source else " in the config"
    what = "unknown key" if len(keys) == 1 else "unknown keys"
    return f"{what} {', '.join(keys)}{where}{hint}"


def _field_loc(loc: tuple) -> tuple:
    """The part of a pydantic error location that names fields (not union members' type tags)."""
    out: list = []
    model: Any = RunConfig
    for part in loc:
        if isinstance(part, int):
            out.append(part)
            continue
        if model is None or part not in getattr(model, "model_fields", {}):
            if model is not None and isinstance(model, type) and issubclass(model, BaseModel):
                out.append(part)  # an unknown key: name it
            break
        out.append(part)
        annotation = model.model_fields[part].annotation
        model = annotation if isinstance(annotation, type) else None
    return tuple(out)


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: Any = RunConfig
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        model = field.annotation if field is not None else None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


_PHRASES = {
    "finite_number": "a finite number",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_parsing_size": "a whole number of sensible size",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "text",
    "model_type": "a mapping of keys",
    "model_attributes_type": "a mapping of keys",
    "dict_type": "a mapping of keys",
    "tuple_type": "a list",
    "list_type": "a list",
    "path_type": "a path",
}


def _wanted(error: dict[str, Any]) -> str:
    """What a value must be, as a phrase that follows "must be"."""
    kind, ctx = error["type"], error.get("ctx") or {}
    bounds = {
        "greater_than": "greater than {gt}",
        "greater_than_equal": "at least {ge}",
        "less_than": "less than {lt}",
        "less_than_equal": "at most {le}",
        "too_long": "at most {max_length} items",
        "too_short": "at least {min_length} items",
        "literal_error": "{expected}",
    }
    if kind in bounds:
        return bounds[kind].format(**ctx)
    if kind in _PHRASES:
        return _PHRASES[kind]
    return error["msg"][0].lower() + error["msg"][1:]


def save_config(config: BaseModel, path: str | Path) -> None:
    """Write a resolved config as pretty JSON, atomically (`resume=True` reads it back)."""
    with atomic_write(path, "w") as fh:
        fh.write(config.model_dump_json(indent=2) + "\n")
