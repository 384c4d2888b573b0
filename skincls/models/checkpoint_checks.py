"""Checkpoint checks: find the file, read it safely, and refuse any field a model cannot be used with.

A checkpoint that loads is one `predict`, `evaluate` and `export` can trust: metadata of the right types
and ranges (classes, model recipe, preprocessing sizes, threshold, temperature) and finite weights
whose output size matches the class list. Everything else is a one-line `CheckpointError` that says
what is wrong and what to do, never a traceback later on, and never a silent wrong answer (a NaN model
answers "benign" for every image).
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    Tag,
    ValidationError,
    field_validator,
)

from ..errors import CheckpointError
from ..preprocessing import Preprocessing

__all__ = [
    "check_metadata",
    "check_weights",
    "first_nonfinite",
    "read_checkpoint_file",
    "resolve_checkpoint_path",
]

RUN_CHECKPOINT = "best.pt"  # what a run directory stands for
_DAMAGED = (
    "the file is damaged or was edited; use the checkpoint a training run wrote, or train again"
)
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


def read_checkpoint_file(path: Path) -> Any:
    """`torch.load(path, weights_only=True)`, with every way it can fail said in one line."""
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc
    if not head:
        raise CheckpointError(
            f"{path} is empty (0 bytes), e.g. from an interrupted copy; use an intact copy of the "
            "checkpoint, or train again"
        )
    if not head.startswith(_TORCH_MAGIC):
        raise CheckpointError(
            f"{path} is not a skincls checkpoint (not a file written by torch.save); pass the "
            f"{RUN_CHECKPOINT} of a training run, or its run directory"
        )
    try:
        with warnings.catch_warnings():  # a plain pickle: the error below says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
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


class _Metadata(BaseModel):
    """Every checkpoint field that is read later, with its type and range."""

    model_config = ConfigDict(extra="allow", strict=True)

    classes: list[str]
    model: Annotated[
        Annotated[_ModelFields, Tag("single-model")]
        | Annotated[_EnsembleFields, Tag("ensemble-model")],
        Discriminator(_kind),
    ]
    preprocessing: Preprocessing  # its own (lax) validation: JSON lists become tuples
    threshold: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    temperature: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    metrics: dict[str, Any] | None = None
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
    try:
        meta = _Metadata.model_validate(dict(data))
    except ValidationError as exc:
        raise _error(path, _describe(exc), writing) from exc
    n = meta.model.num_classes
    if n is not None and n != len(meta.classes):
        problem = f"model.num_classes is {n} but {len(meta.classes)} classes are listed"
        raise _error(path, problem, writing)


def _describe(exc: ValidationError) -> str:
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
        raise _error(path, problem, writing, "train again with a lower --lr")
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
