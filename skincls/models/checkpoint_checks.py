"""Checkpoint checks: find the file, read it safely, and refuse any field a model cannot be used with.

A checkpoint that loads is one `predict`, `evaluate` and `export` can trust: metadata of the right types
and ranges (classes, model recipe, preprocessing sizes, threshold, temperature) and finite weights
whose output size matches the class list. Everything else is a one-line `CheckpointError` that says
what is wrong and what to do, never a traceback later on, and never a silent wrong answer (a NaN model
answers "benign" for every image).
"""

from __future__ import annotations

import math
import pickle
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    Tag,
    ValidationError,
    field_validator,
)

from ..errors import CheckpointError, opt
from ..preprocessing import Preprocessing
from .checkpoint_safetensors import HEAD_BYTES, SUFFIX, is_safetensors, read_safetensors

__all__ = [
    "STD_LIMITS",
    "TEMPERATURE_LIMITS",
    "MetricNumber",
    "check_metadata",
    "check_weights",
    "describe_validation_error",
    "first_nonfinite",
    "read_checkpoint_file",
    "read_file_format",
    "resolve_checkpoint_path",
]

RUN_CHECKPOINT = "best.pt"  # what a run directory stands for
_DAMAGED = (
    "the file is damaged or was edited; use the checkpoint a training run wrote, or train again"
)
# A model is usable within these; outside them every image gets the same answer (a temperature of
# 1e-300 makes every probability 0 or 1). The calibration fit stays within (0.05, 20).
TEMPERATURE_LIMITS = (0.01, 100.0)
STD_LIMITS = (1e-3, 1e3)  # images are scaled to 0–1 (ImageNet: 0.23; 0–255 models: 1/255)
MEAN_LIMITS = (-10.0, 10.0)
# Metadata is small JSON. A field that takes more values and characters than this (each reference
# counted again: a pickle repeats one list a million times in a few bytes, which JSON then writes
# out in full) is damaged or hostile, and is refused before anything expands it.
_FIELD_BUDGET = 1_000_000
_FIELD_BUDGETS = {"training_data": 50_000_000}  # ~17 per training image: its content hash
_MAX_DEPTH = 32
_MAX_INT = 2**64
# What `torch.save` files start with: a zip archive (torch >= 1.6) or a pickle protocol marker (older).
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")


def resolve_checkpoint_path(path: str | Path) -> Path:
    """`path` itself when it is a file; a run directory's `best.pt`.

    Raises:
        CheckpointError: nothing at `path`, or a directory without `best.pt`.
    """
    path = Path(path)
    if path.is_dir():
        best = path / RUN_CHECKPOINT
        if best.is_file():
            return best
        found = sorted(p.name for p in path.glob("*.pt"))[:3]
        holds = f" (it holds {', '.join(found)})" if found else ""
        raise CheckpointError(
            f"{path} is a directory without a {RUN_CHECKPOINT}{holds}; pass a checkpoint file, or "
            "a run directory that `skincls train` wrote"
        )
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a regular file")
    return path


def read_checkpoint_file(path: Path, *, weights: bool = True) -> Any:
    """`torch.load(path, weights_only=True)`, or a safetensors checkpoint's tensors and JSON (told
    apart by the file's first bytes, not its name), with every way it can fail said in one line.
    `weights=False`: the tensors stay on disk (memory-mapped; a safetensors file's are not read)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(HEAD_BYTES)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc
    if not head:
        raise CheckpointError(
            f"{path} is empty (0 bytes), e.g. from an interrupted copy; use an intact copy of the "
            "checkpoint, or train again"
        )
    if _is_safetensors_head(head):
        return read_safetensors(path, weights=weights)
    if not head.startswith(_TORCH_MAGIC):
        raise CheckpointError(
            f"{path} is not a skincls checkpoint (not a file written by torch.save or a "
            f"{SUFFIX} checkpoint); pass the "
            f"{RUN_CHECKPOINT} of a training run, or its run directory"
        )
    try:
        with warnings.catch_warnings():  # a plain pickle: the error below says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=not weights)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found:
            raise CheckpointError(
                f"refused to load {path}: it needs unpickling of arbitrary Python objects "
                f"({found.group(1)}), which can run code. skincls checkpoints never do; only load "
                "files from sources you trust"
            ) from exc
        raise CheckpointError(
            f"{path} is not a skincls checkpoint (damaged, or not written by torch.save); pass "
            f"the {RUN_CHECKPOINT} of a training run, or its run directory"
        ) from exc
    except (
        Exception
    ) as exc:  # torch.load fails on damaged files in many ways (zip, storage, EOF...)
        reason = _first_line(str(exc)) or type(exc).__name__
        raise CheckpointError(
            f"{path} is truncated or damaged ({reason}); use an intact copy of the checkpoint, or "
            "train again"
        ) from exc


def read_file_format(path: Path) -> str:
    """ "safetensors" or "torch": how a checkpoint file is stored, by its first bytes."""
    try:
        with path.open("rb") as fh:
            head = fh.read(HEAD_BYTES)
    except OSError:
        return "torch"
    return "safetensors" if _is_safetensors_head(head) else "torch"


def _is_safetensors_head(head: bytes) -> bool:
    return not head.startswith(_TORCH_MAGIC[0]) and is_safetensors(head)


def _first_line(text: str, limit: int = 120) -> str:
    line = text.strip().split("\n")[0].split(". ")[0].strip()
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _freeze(value: Any) -> Any:
    if value in ("backbone", "none") or (type(value) is int and value >= 0):
        return value
    raise ValueError("should be 'backbone', 'none' or a number of stages >= 0")


class _ModelFields(BaseModel):
    """The recipe `Checkpoint.build_model` rebuilds the network from (extra keys are kept)."""

    model_config = ConfigDict(extra="allow", strict=True)

    arch: str = Field(min_length=1)
    head: list[Annotated[int, Field(ge=1)]]
    dropout: float = Field(ge=0, lt=1)
    freeze: Annotated[Any, PlainValidator(_freeze)]
    num_classes: int | None = Field(default=None, ge=2)


class _EnsembleFields(BaseModel):
    """An ensemble's recipe: one single-model recipe per member."""

    model_config = ConfigDict(extra="allow", strict=True)

    arch: Literal["ensemble"]
    members: list[_ModelFields] = Field(min_length=1)
    num_classes: int | None = Field(default=None, ge=2)


def _kind(value: Any) -> str:
    arch = value.get("arch") if isinstance(value, Mapping) else getattr(value, "arch", None)
    return "ensemble-model" if arch == "ensemble" else "single-model"  # tags: not field names


_Mean = Annotated[float, Field(ge=MEAN_LIMITS[0], le=MEAN_LIMITS[1], allow_inf_nan=False)]
_Std = Annotated[float, Field(ge=STD_LIMITS[0], le=STD_LIMITS[1], allow_inf_nan=False)]


def _finite_or_nan(value: float) -> float:
    if math.isinf(value):
        raise ValueError("should be a finite number or NaN")
    return value


MetricNumber = Annotated[float, AfterValidator(_finite_or_nan)]
"""A metric's value: a finite number or NaN (in strict mode an int is fine, a bool is not)."""
_Number = MetricNumber
_Count = Annotated[int, Field(ge=0)]


class _SplitMetrics(BaseModel):
    """One split's stored metrics (`evaluate_checkpoint(save=True)`, an epoch's train/val): numbers."""

    model_config = ConfigDict(extra="allow", strict=True)

    loss: _Number | None = None
    accuracy: _Number | None = None
    sensitivity: _Number | None = None
    specificity: _Number | None = None
    ppv: _Number | None = None
    npv: _Number | None = None
    balanced_accuracy: _Number | None = None
    roc_auc: _Number | None = None
    pr_auc: _Number | None = None
    brier: _Number | None = None
    nll: _Number | None = None
    ece: _Number | None = None
    ece_uncalibrated: _Number | None = None
    threshold: _Number | None = None
    temperature: _Number | None = None
    ci_level: _Number | None = None
    n_images: _Count | None = None
    roc_auc_classes: _Count | None = None
    ece_bins: _Count | None = None
    bootstrap_resamples: _Count | None = None
    confusion_matrix: list[list[_Count]] | None = None
    ci: dict[str, Annotated[list[_Number], Field(min_length=2, max_length=2)]] | None = None


class _StoredPreprocessing(Preprocessing):
    """`Preprocessing` within what 0–1 scaled images can sensibly be normalised with."""

    mean: tuple[_Mean, _Mean, _Mean]
    std: tuple[_Std, _Std, _Std]


class _Metadata(BaseModel):
    """Every checkpoint field that is read later, with its type and range."""

    model_config = ConfigDict(extra="allow", strict=True)

    classes: list[str]
    model: Annotated[
        Annotated[_ModelFields, Tag("single-model")]
        | Annotated[_EnsembleFields, Tag("ensemble-model")],
        Discriminator(_kind),
    ]
    preprocessing: _StoredPreprocessing  # its own (lax) validation: JSON lists become tuples
    threshold: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    temperature: float | None = Field(
        default=None, ge=TEMPERATURE_LIMITS[0], le=TEMPERATURE_LIMITS[1], allow_inf_nan=False
    )
    metrics: dict[str, _SplitMetrics] | None = None  # by split: train, val, test, oof...
    epoch: int | None = Field(default=None, ge=0)  # the epoch of a training run's checkpoint
    state_dict: dict[str, Any]

    @field_validator("classes")
    @classmethod
    def _distinct_names(cls, classes: list[str]) -> list[str]:
        if (
            len(classes) < 2
            or len(set(classes)) != len(classes)
            or not all(map(str.strip, classes))
        ):
            raise ValueError("should be two or more distinct, non-empty names")
        return classes


def _error(path: Path, problem: str, writing: bool, fix: str = _DAMAGED) -> CheckpointError:
    if writing:  # the caller's values are wrong, not a file
        return CheckpointError(f"refusing to write checkpoint {path}: {problem}")
    return CheckpointError(f"{path}: {problem}; {fix}")


def check_metadata(path: Path, data: Mapping[str, Any], *, writing: bool = False) -> None:
    """Refuse missing keys, wrong types and out-of-range values of a checkpoint's metadata.

    Args:
        path: The file, for the message.
        data: The checkpoint's dict (`state_dict` is only checked to be a dict here).
        writing: The data is about to be written (the message says so), not read.

    Raises:
        CheckpointError: one line naming the first bad field.
    """
    problem = _oversized_or_odd(data)  # first: nothing below may expand a hostile structure
    if problem is not None:
        raise _error(path, problem, writing)
    try:
        meta = _Metadata.model_validate(dict(data))
    except ValidationError as exc:
        raise _error(path, describe_validation_error(exc), writing) from exc
    n = meta.model.num_classes
    if n is not None and n != len(meta.classes):
        problem = f"model.num_classes is {n} but {len(meta.classes)} classes are listed"
        raise _error(path, problem, writing)


def _oversized_or_odd(data: Mapping[str, Any]) -> str | None:
    """Why a metadata field is not plain JSON data of sensible size; None when all are.

    Walks each field (not the weights or the resume state) counting every value and character it
    meets, and stops at its budget: shared references are never expanded. Metrics may not be ±inf.
    """
    for key, value in data.items():
        if key in ("state_dict", "training_state"):
            continue
        budget = _FIELD_BUDGETS.get(key, _FIELD_BUDGET)
        used, stack = 0, [(value, str(key), 0)]
        while stack:
            node, loc, depth = stack.pop()
            used += 1 + (len(node) if isinstance(node, (str, list, tuple, dict)) else 0)
            if used > budget:
                return (
                    f"{key} is far larger than checkpoint metadata can be (over {budget:,} values)"
                )
            if isinstance(node, float):
                if key == "metrics" and math.isinf(node):
                    return f"{loc}: should be a finite number or NaN (found {node})"
            elif isinstance(node, int):  # bool included
                if abs(node) > _MAX_INT:
                    return f"{loc}: should be a number of sensible size (found a huge integer)"
            elif isinstance(node, (list, tuple, dict)):
                if depth >= _MAX_DEPTH:
                    return f"{key} is nested too deeply to be checkpoint metadata"
                items = node.items() if isinstance(node, dict) else enumerate(node)
                for k, v in items:
                    if isinstance(node, dict) and not isinstance(k, str):
                        return f"{loc}: keys should be text (found a {type(k).__name__})"
                    stack.append((v, f"{loc}.{k}", depth + 1))
            elif node is not None and not isinstance(node, str):
                return f"{loc}: should be plain data (found a {type(node).__name__})"
    return None


def describe_validation_error(exc: ValidationError) -> str:
    """The first error as `field.path: should be ... (found ...)`, in a user's words."""
    error = exc.errors()[0]
    # Union and validator tags ("literal[...]", "function-plain[...]") are not field names.
    loc = ".".join(str(p) for p in error["loc"] if re.fullmatch(r"\w+", str(p))) or "metadata"
    if error["type"] == "missing":
        return f"{loc} is missing"
    msg = error["msg"].removeprefix("Value error, ").replace("Input should", "should")
    got = repr(error.get("input"))
    got = got if len(got) <= 60 else got[:57] + "..."
    return f"{loc}: {msg} (found {got})"


def first_nonfinite(named: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first floating-point tensor holding NaN or inf, or None if all are finite.

    `aminmax` propagates NaN and shows ±inf, reads each tensor once and allocates nothing per element
    (`isfinite(t).all()` is ~50× slower on a VGG's 120M weights); one host sync for all tensors.
    """
    named = [(k, t.detach()) for k, t in named if t.is_floating_point() and t.numel()]
    if not named:
        return None
    finite = torch.stack([torch.isfinite(torch.stack(torch.aminmax(t))).all() for _, t in named])
    finite = finite.cpu()
    if bool(finite.all()):
        return None
    return named[int((~finite).nonzero()[0])][0]


def check_weights(
    path: Path, state: Mapping[str, Any], classes: list[str], *, writing: bool = False
) -> None:
    """Refuse weights that are not a mapping of tensors, hold NaN or inf, or don't fit `classes`.

    Raises:
        CheckpointError: one line naming the first bad tensor.
    """
    if not state or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise _error(path, "state_dict is not a mapping of names to tensors", writing)
    bad = first_nonfinite(state.items())
    if bad is not None:
        problem = f"the weights hold NaN or inf ({bad}), so the training that made them diverged"
        raise _error(path, problem, writing, f"train again with a lower {opt('train.lr')}")
    temps = state.get("temperatures")  # an ensemble's: one per member
    if torch.is_tensor(temps) and temps.numel() and temps.is_floating_point():
        lo, hi = TEMPERATURE_LIMITS
        if not bool(((temps >= lo) & (temps <= hi)).all()):
            found = ", ".join(f"{t:.3g}" for t in temps.tolist()[:4])
            problem = f"member temperatures should be within [{lo:g}, {hi:g}] (found {found})"
            raise _error(path, problem, writing)
    # The head's last Linear layer has one output per class.
    heads = [k for k, v in state.items() if re.fullmatch(r"head\.\d+\.weight", k) and v.dim() == 2]
    if heads:
        last = max(heads, key=lambda k: int(k.split(".")[1]))
        outputs = state[last].shape[0]
        if outputs != len(classes):
            problem = (
                f"the model has {outputs} outputs but {len(classes)} classes are listed "
                f"({', '.join(classes)})"
            )
            raise _error(path, problem, writing)
