"""Checkpoints as safetensors: for sharing a model with no pickle anywhere.

The file is a plain `.safetensors` file (any safetensors reader opens its weights). Its header's
string-to-string `__metadata__` holds `"format": "pt"` (the safetensors convention for PyTorch
tensors) and `"skincls"`: every other field of the checkpoint (format, arch, classes,
preprocessing, threshold, temperature, metrics, labels, train config, training data...) as one JSON
object. Python's `json` writes NaN metrics as `NaN` and reads them back, so the round trip is exact.
The trainer's resume state (optimizer, scheduler, RNG) is not kept: resuming needs the run's `last.pt`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_path
from ..errors import CheckpointError, opt

__all__ = ["SUFFIX", "first_difference", "is_safetensors", "read_safetensors", "write_safetensors"]

SUFFIX = ".safetensors"
METADATA_KEY = "skincls"
# A safetensors file: an 8-byte little-endian header length, then the JSON header itself.
HEAD_BYTES = 9
_MAX_HEADER = 100_000_000  # what the safetensors library itself accepts
_INSTALL = "pip install 'skincls[timm]' (or pip install safetensors)"


def is_safetensors(head: bytes) -> bool:
    """Whether a file's first `HEAD_BYTES` bytes are those of a safetensors file."""
    return (
        len(head) >= HEAD_BYTES
        and head[8:9] == b"{"
        and 2 <= int.from_bytes(head[:8], "little") <= _MAX_HEADER
    )


def write_safetensors(data: Mapping[str, Any], path: Path) -> None:
    """Write a checkpoint's dict (plain metadata + `state_dict`) as a safetensors file, atomically.

    Raises:
        CheckpointError: the dict holds a resume state, or the safetensors package is missing.
        OSError: the write failed (e.g. disk full); `path` is unchanged.
    """
    if data.get("training_state") is not None:
        raise CheckpointError(
            f"refusing to write checkpoint {path}: a {SUFFIX} checkpoint holds no resume state "
            "(optimizer, scheduler); that is kept in the run's last.pt"
        )
    save_file = _safetensors_torch(path, "writing").save_file
    meta = {k: v for k, v in data.items() if k not in ("state_dict", "training_state")}
    text = json.dumps(meta, allow_nan=True, ensure_ascii=False)
    tensors = _unshared(data["state_dict"])
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata={"format": "pt", METADATA_KEY: text})
        except OSError:
            raise
        except Exception as exc:  # safetensors reports I/O failures as its own error
            raise OSError(f"cannot write {path}: {' '.join(str(exc).split())[:200]}") from exc


def read_safetensors(path: Path, *, weights: bool = True) -> dict[str, Any]:
    """A safetensors checkpoint as the dict a `.pt` one loads to (metadata + `state_dict`, empty
    when not `weights`).

    Only JSON and raw tensor bytes are parsed: nothing is unpickled.

    Raises:
        CheckpointError: the package is missing, the file is damaged, or it is a safetensors file
            of weights only (no skincls metadata).
    """
    safe_open = _safetensors(path).safe_open
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            header = fh.metadata() or {}
            names = fh.keys() if weights else []
            state = {name: fh.get_tensor(name) for name in names}
    except Exception as exc:  # the library's own error, for every kind of damage
        reason = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise CheckpointError(
            f"{path} is truncated or damaged ({reason}); use an intact copy of the checkpoint"
        ) from exc
    if METADATA_KEY not in header:
        raise CheckpointError(
            f"{path} is a {SUFFIX} file of weights only, not a skincls checkpoint (no skincls "
            f"metadata); a timm model's weights file goes to {opt('weights=FILE')} when training"
        )
    try:
        meta = json.loads(header[METADATA_KEY])
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(
            f"{path}: its skincls metadata is not valid JSON; {_DAMAGED}"
        ) from exc
    if not isinstance(meta, dict) or "state_dict" in meta or "training_state" in meta:
        raise CheckpointError(f"{path}: its skincls metadata is malformed; {_DAMAGED}")
    return {**meta, "state_dict": state}


def first_difference(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """The first field (or tensor) that differs between two checkpoint dicts; NaN equals NaN."""
    if set(a) != set(b):
        return f"fields {sorted(set(a) ^ set(b))}"
    for key in a:
        if key == "state_dict":
            continue
        if json.dumps(a[key], sort_keys=True) != json.dumps(b[key], sort_keys=True):
            return key
    sa, sb = a["state_dict"], b["state_dict"]
    if set(sa) != set(sb):
        return f"tensors {sorted(set(sa) ^ set(sb))[:3]}"
    for name, t in sa.items():
        u = sb[name]
        if t.dtype != u.dtype or t.shape != u.shape or not torch.equal(t, u):
            return f"tensor {name}"
    return None


_DAMAGED = "the file is damaged or was edited; use the checkpoint as it was written"


def _unshared(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors, each contiguous and owning its memory (safetensors refuses shared storage)."""
    seen: set[int] = set()
    out = {}
    for name, tensor in state.items():
        t = tensor.detach()
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if (
            not t.is_contiguous()
            or (ptr and ptr in seen)
            or storage.nbytes() != t.numel() * t.element_size()
        ):
            t = t.contiguous().clone()
        seen.add(ptr)
        out[name] = t
    return out


def _safetensors_torch(path: Path, doing: str) -> Any:
    try:
        import safetensors.torch
    except ImportError as exc:
        raise CheckpointError(
            f"{doing} the {SUFFIX} checkpoint {path} needs the optional package safetensors; "
            f"install it with: {_INSTALL}"
        ) from exc
    return safetensors.torch


def _safetensors(path: Path) -> Any:
    _safetensors_torch(path, "reading")
    import safetensors

    return safetensors
