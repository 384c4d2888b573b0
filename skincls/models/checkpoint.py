"""Checkpoints: self-describing files that hold everything needed to rebuild and use a model.

A checkpoint is a dict of plain values and tensors, so it loads with `torch.load(weights_only=True)`;
a file that needs arbitrary unpickling is refused rather than executed, and so is one with a malformed
field or non-finite weights (`checkpoint_checks`). A file named `*.safetensors` holds the same dict
with no pickle at all: the tensors as safetensors, the rest as JSON in its header
(`checkpoint_safetensors`); both load the same way.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._version import __version__
from ..atomic import atomic_write
from ..errors import CheckpointError, ModelError
from ..locks import FileStamp, file_stamp, lock_dir
from ..preprocessing import Preprocessing
from .checkpoint_checks import (
    check_metadata,
    check_weights,
    read_checkpoint_file,
    read_file_format,
    resolve_checkpoint_path,
)
from .checkpoint_safetensors import SUFFIX, first_difference, write_safetensors
from .classifier import SkinClassifier, create_model
from .ensemble import EnsembleClassifier

__all__ = [
    "FORMAT",
    "Checkpoint",
    "ModelSnapshot",
    "atomic_save",
    "convert_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "snapshot_model",
    "snapshot_state",
    "update_checkpoint",
]

FORMAT = "skincls-checkpoint-v1"

log = logging.getLogger(__name__)


def atomic_save(obj: Any, path: str | Path) -> None:
    """`torch.save` to a temp file in the same folder, then rename: a crash never leaves half a file.

    Raises:
        OSError: the write failed (e.g. `ENOSPC`, disk full), naming `path`; `path` is unchanged.
    """
    with atomic_write(path) as fh:
        try:
            torch.save(obj, fh)
        except RuntimeError as exc:
            # A failed write (disk full) surfaces from torch as "[enforce fail at
            # inline_container.cc:...] unexpected pos"; the OS error behind it is what to report.
            cause = _os_error_behind(exc)
            if cause is None:
                raise
            raise OSError(cause.errno, cause.strerror or str(cause), str(path)) from exc


def _os_error_behind(exc: BaseException) -> OSError | None:
    """The `OSError` an exception was raised while handling (or from), if any."""
    seen = 0
    error: BaseException | None = exc
    while error is not None and seen < 10:
        if isinstance(error, OSError):
            return error
        error = error.__cause__ or error.__context__
        seen += 1
    return None


@dataclass
class Checkpoint:
    """A loaded checkpoint: metadata plus the model's state dict.

    `stamp` identifies the file version it was read from (`update_checkpoint` refuses to write over
    another version); `file_format` how it was stored ("torch" or "safetensors"; None: by the
    path's suffix), which `update_checkpoint` keeps.
    """

    path: Path
    data: dict[str, Any]
    stamp: FileStamp | None = field(default=None, compare=False, repr=False)
    file_format: str | None = field(default=None, compare=False, repr=False)

    @property
    def classes(self) -> list[str]:
        return list(self.data["classes"])

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.model_validate(self.data["preprocessing"])

    @property
    def model_config(self) -> dict[str, Any]:
        return dict(self.data["model"])

    @property
    def threshold(self) -> float | None:
        return self.data.get("threshold")

    @property
    def temperature(self) -> float:
        return float(self.data.get("temperature") or 1.0)

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.data.get("metrics") or {})

    @property
    def is_ensemble(self) -> bool:
        return self.model_config.get("arch") == "ensemble"

    def build_model(self, backbone: nn.Module | None = None) -> SkinClassifier | EnsembleClassifier:
        """Rebuild the network (no weight download) and load the stored weights; eval mode.

        Args:
            backbone: For checkpoints of a custom backbone (`arch == "custom"`): a fresh instance of
                the same module, whose weights are then replaced by the stored ones. Registered
                archs take none. For an ensemble of custom-backbone members, each gets a copy.

        Raises:
            CheckpointError: a custom backbone is missing or does not fit, or the weights don't fit.
        """
        if self.is_ensemble:
            return _build_ensemble(self, backbone)
        cfg = self.model_config
        custom = cfg.get("arch") == "custom"
        if custom and backbone is None:
            raise CheckpointError(
                f"{self.path} was trained with a custom backbone ({cfg.get('backbone')}); build that "
                "module again and pass it: build_model(backbone=module), or backbone= to "
                "Evaluator/Predictor"
            )
        if backbone is not None and not custom:
            raise CheckpointError(
                f"{self.path} holds the registered arch {cfg.get('arch')!r}; it takes no backbone="
            )
        kwargs = {
            "num_classes": len(self.classes),
            "head": tuple(cfg["head"]),
            "dropout": cfg["dropout"],
            "freeze": cfg["freeze"],
            "preprocessing": self.preprocessing,
            "metadata": cfg.get("metadata"),  # a fused model's metadata branch (`models.fused`)
        }
        state = self.data["state_dict"]
        try:
            if custom:
                model = create_model(backbone=backbone, **kwargs)
                model.load_state_dict(state)
            else:
                # Built on the meta device: no time spent initialising weights that are replaced.
                # Not timm's: some keep non-persistent buffers (index tables) the state dict lacks.
                timm = str(cfg["arch"]).startswith("timm/")
                with contextlib.nullcontext() if timm else torch.device("meta"):
                    model = create_model(cfg["arch"], weights="none", built_as=cfg, **kwargs)
                model.load_state_dict({k: v.clone() for k, v in state.items()}, assign=True)
                if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
                    raise RuntimeError("some tensors are not in the checkpoint")
        except ModelError as exc:
            raise CheckpointError(f"{self.path}: cannot rebuild its model: {exc}") from exc
        except RuntimeError as exc:
            why = " ".join(str(exc).split())  # torch lists each mismatch on its own line
            why = why if len(why) <= 300 else why[:297] + "..."
            raise CheckpointError(
                f"{self.path}: weights do not fit the stored architecture: {why}"
            ) from exc
        return model.eval()


def _build_ensemble(ckpt: Checkpoint, backbone: nn.Module | None) -> EnsembleClassifier:
    """Each member rebuilt as a single checkpoint of its own (its config, its `members.i.` weights)."""
    state = ckpt.data["state_dict"]
    members = []
    for i, cfg in enumerate(ckpt.model_config.get("members") or []):
        prefix = f"members.{i}."
        weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        one = Checkpoint(ckpt.path, {**ckpt.data, "model": cfg, "state_dict": weights})
        members.append(one.build_model(copy.deepcopy(backbone) if backbone is not None else None))
    if "temperatures" not in state or len(members) != len(state["temperatures"]):
        raise CheckpointError(f"{ckpt.path}: an ensemble checkpoint without its members' weights")
    try:
        return EnsembleClassifier(members, state["temperatures"]).eval()
    except ModelError as exc:
        raise CheckpointError(f"{ckpt.path}: cannot rebuild its ensemble: {exc}") from exc


@dataclass(frozen=True)
class ModelSnapshot:
    """What a checkpoint keeps of a model at one moment: CPU weights, `config` and `preprocessing`.

    `save_checkpoint` takes it in place of the model, so a thread can write it while training goes on
    changing the live model (weights, and `config["freeze"]` at a phase start).
    """

    weights: dict[str, torch.Tensor]
    config: dict[str, Any]
    preprocessing: Preprocessing | None

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.weights


def snapshot_model(model: nn.Module, *, copy_weights: bool = True) -> ModelSnapshot:
    """`model`'s weights on the CPU, its `config` (copied) and `preprocessing`, as they are now.

    With `copy_weights=False`, CPU weights are shared with the model rather than copied: enough for
    a checkpoint written before the model next changes.
    """
    if copy_weights:
        weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    else:
        weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    config = copy.deepcopy(dict(getattr(model, "config", None) or {}))
    return ModelSnapshot(weights, config, getattr(model, "preprocessing", None))


def snapshot_state(state: Any) -> Any:
    """A copy of a training state (nested dicts, lists and tuples) with every tensor copied to the CPU.

    For a `Trainer.state_dict()` that is written while training goes on: the optimizer's state
    tensors are otherwise the live ones.
    """
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: snapshot_state(v) for k, v in state.items()}
    if isinstance(state, list):
        return [snapshot_state(v) for v in state]
    if isinstance(state, tuple):
        return tuple(snapshot_state(v) for v in state)
    return copy.deepcopy(state)


def save_checkpoint(
    path: str | Path,
    model: SkinClassifier | ModelSnapshot,
    *,
    classes: list[str],
    model_config: dict[str, Any] | None = None,
    preprocessing: Preprocessing | None = None,
    training_state: dict[str, Any] | None = None,
    **extra: Any,
) -> None:
    """Write a checkpoint atomically. `extra` holds plain values (metrics, epoch, train config...).

    `model` is a model or a `snapshot_model` of one. `model_config` and `preprocessing` default to
    its own (`model.config`, `model.preprocessing`, set by `create_model`). `training_state` (a
    `Trainer.state_dict()`) is stored as is, for `train_from_config(..., resume=True)`. A `path`
    ending in `.safetensors` is written as safetensors + JSON (no pickle; no `training_state`).

    Raises:
        CheckpointError: a field is not plain data (JSON), or a value would not load again.
    """
    model_config = model.config if model_config is None else model_config
    preprocessing = model.preprocessing if preprocessing is None else preprocessing
    meta = {
        "format": FORMAT,
        "skincls_version": __version__,
        "torch_version": str(torch.__version__),
        "model": dict(model_config),
        "classes": list(classes),
        "preprocessing": preprocessing.model_dump(mode="json"),
        "threshold": None,
        "temperature": 1.0,
        "metrics": {},
        **extra,
    }
    data = _plain(Path(path), meta)
    if isinstance(model, ModelSnapshot):
        data["state_dict"] = model.weights
    else:
        data["state_dict"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    # What load_checkpoint would refuse is never written (e.g. a diverged model's NaN weights).
    check_metadata(Path(path), data, writing=True)
    check_weights(Path(path), data["state_dict"], data["classes"], writing=True)
    if training_state is not None:
        # The trainer's resume state (optimizer, scheduler, RNG...): tensors and plain values only.
        data["training_state"] = training_state
    _write(data, Path(path), _format_for(Path(path)))


def _format_for(path: Path) -> str:
    return "safetensors" if path.suffix == SUFFIX else "torch"


def _write(data: dict[str, Any], path: Path, file_format: str) -> None:
    if file_format == "safetensors":
        write_safetensors(data, path)
    else:
        atomic_save(data, path)


def _plain(path: Path, fields: dict[str, Any]) -> dict[str, Any]:
    """`fields` after a JSON round trip: plain types, so `weights_only=True` (and the safetensors
    header) can always hold them. A value JSON cannot hold is refused, naming its field."""
    try:
        return json.loads(json.dumps(fields))
    except (TypeError, ValueError):
        for key, value in fields.items():
            try:
                json.dumps(value)
            except (TypeError, ValueError) as exc:
                why = " ".join(str(exc).split())
                raise CheckpointError(
                    f"refusing to write checkpoint {path}: {key} is not plain data ({why}); "
                    "give numbers, text, lists and dicts"
                ) from exc
        raise


def convert_checkpoint(
    checkpoint: str | Path | Checkpoint, out: str | Path, *, file_format: str | None = None
) -> Checkpoint:
    """Write a checkpoint again in another file format, and check it reads back equal.

    A `.safetensors` copy is for sharing a model without pickles: the same weights and every
    metadata field (classes, preprocessing, threshold, temperature, metrics...), but not the
    trainer's resume state (resuming needs the run's `last.pt`).

    Args:
        checkpoint: A checkpoint path, a run directory, or a loaded `Checkpoint`.
        out: The file to write (not the one read).
        file_format: "safetensors" or "torch"; default: by `out`'s suffix.

    Returns:
        The written checkpoint, as read back.

    Raises:
        CheckpointError: `out` is the file read, or the copy does not read back equal (then it is
            removed).
    """
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    out = Path(out)
    file_format = file_format or _format_for(out)
    if file_format not in ("safetensors", "torch"):
        raise ValueError(f"file_format should be 'safetensors' or 'torch', not {file_format!r}")
    if out.exists() and out.resolve() == ckpt.path.resolve():
        raise CheckpointError(f"{out} is the checkpoint being converted; write to another file")
    fields = {k: v for k, v in ckpt.data.items() if k not in ("state_dict", "training_state")}
    data = {**_plain(out, fields), "state_dict": ckpt.data["state_dict"]}
    check_metadata(out, data, writing=True)
    check_weights(out, data["state_dict"], data["classes"], writing=True)
    _write(data, out, file_format)
    back = load_checkpoint(out)
    differ = first_difference(data, back.data)
    if differ is not None:
        out.unlink(missing_ok=True)
        raise CheckpointError(f"{out} did not read back as written ({differ}); it was removed")
    return back


def load_checkpoint(path: str | Path, *, for_update: bool = False) -> Checkpoint:
    """Read a skincls checkpoint safely (`weights_only=True`) and check every field it holds.

    Args:
        path: A checkpoint file (written by `torch.save`, or a `.safetensors` checkpoint: told
            apart by content), or a run directory (its `best.pt` is read).
        for_update: Also hash the file's bytes, so that `update_checkpoint` can tell a file that
            changed since (in place, same size and time) from this version. Costs one extra read.

    Raises:
        CheckpointError: missing, empty or damaged file, not a skincls checkpoint, a file that would
            need arbitrary unpickling, a malformed field (missing key, wrong type, absurd preprocessing
            size or normalisation, threshold outside [0, 1], temperature outside [0.01, 100],
            metrics that are not numbers, metadata that is not small plain data), or weights that
            hold NaN or inf.
    """
    path = resolve_checkpoint_path(path)
    try:  # before reading: a change after this moment shows in `update_checkpoint`
        stamp = file_stamp(path, content=for_update)
    except OSError:
        stamp = None  # unreadable: read_checkpoint_file says why
    data, file_format = read_checkpoint_file(path), read_file_format(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a skincls checkpoint")
    check_metadata(path, data)
    check_weights(path, data["state_dict"], data["classes"])
    return Checkpoint(path, data, stamp, file_format)


def update_checkpoint(checkpoint: str | Path | Checkpoint, **fields: Any) -> Checkpoint:
    """Set metadata fields (threshold, temperature, metrics...) of a checkpoint file, atomically.

    Values go through the same JSON round trip as in `save_checkpoint`, so the file still loads with
    `weights_only=True`; the weights are kept as they are, and so is the file's format (a
    `.safetensors` checkpoint stays one). `state_dict` cannot be replaced here.
    The write holds the folder's lock (`skincls.locks`) and is refused when the file is no longer
    the version that was read (size, mtime, inode, and the content hash when it was loaded with
    `for_update=True`): a training run may have replaced it, and writing would lose that. What
    changed is logged in one line.

    Args:
        checkpoint: A path (read under the lock), or an already loaded `Checkpoint` (updated in
            place, not read again).
        **fields: Metadata to set.

    Returns:
        The updated checkpoint.

    Raises:
        CheckpointError: the file changed since it was read; nothing was written.
        LockError: another process (e.g. a training run) holds the checkpoint's folder.
    """
    if "state_dict" in fields or "format" in fields:
        raise ValueError("update_checkpoint changes metadata only, not state_dict or format")
    path = (
        checkpoint.path
        if isinstance(checkpoint, Checkpoint)
        else resolve_checkpoint_path(checkpoint)
    )
    with lock_dir(path.parent, f"updating {path.name}", advice="wait for it to finish"):
        if isinstance(checkpoint, Checkpoint):
            ckpt = checkpoint
            _refuse_if_changed(ckpt)
        else:
            ckpt = load_checkpoint(path)  # read under the lock: nothing changes it meanwhile
        new = _plain(ckpt.path, fields)
        updated = {**ckpt.data, **new}
        check_metadata(ckpt.path, updated, writing=True)
        changes = _describe_changes(ckpt.data, new)
        ckpt.data.update(updated)
        _write(ckpt.data, ckpt.path, ckpt.file_format or _format_for(ckpt.path))
        hashed = ckpt.stamp is not None and ckpt.stamp.sha256 is not None
        ckpt.stamp = file_stamp(ckpt.path, content=hashed)
    log.info("updated %s: %s", ckpt.path, changes or "nothing changed")
    return ckpt


def _refuse_if_changed(ckpt: Checkpoint) -> None:
    if ckpt.stamp is None:  # built by hand, not read from the file: nothing to compare
        return
    try:
        now = file_stamp(ckpt.path, content=ckpt.stamp.sha256 is not None)
    except FileNotFoundError:
        raise CheckpointError(
            f"not written: {ckpt.path} was removed since it was read; nothing was changed"
        ) from None
    differ = ckpt.stamp.differs(now)
    if differ:
        raise CheckpointError(
            f"not written: {ckpt.path} changed since it was read ({', '.join(differ)} differ; "
            "did a training run replace it?); evaluate it again to store results that match it"
        )


def _describe_changes(old: dict[str, Any], new: dict[str, Any]) -> str:
    """E.g. "threshold None → 0.4123, temperature 1 → 1.234, metrics (test)"."""
    parts = []
    for key, value in new.items():
        before = old.get(key)
        if before == value:
            continue
        if isinstance(value, (dict, list)) or isinstance(before, (dict, list)):
            if key == "metrics" and isinstance(value, dict):
                added = [k for k in value if (before or {}).get(k) != value[k]]
                parts.append(f"metrics ({', '.join(added)})")
            else:
                parts.append(key)
        else:
            parts.append(f"{key} {_short(before)} → {_short(value)}")
    return ", ".join(parts)


def _short(value: Any) -> str:
    if value is None:
        return "none"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
