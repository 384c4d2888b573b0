"""Ensemble checkpoints: several trained checkpoints as one file that loads like a single model.

The file is an ordinary skincls checkpoint whose model is an `EnsembleClassifier`: the members' configs
and weights (a frozen backbone they share is stored once), one temperature per member, and the
ensemble's own threshold. `evaluate`, `predict`, `export` and the model card take it as they take any
checkpoint; it outputs the mean of the members' calibrated probabilities.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import CheckpointError, opt
from ..models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from ..models.ensemble import EnsembleClassifier

__all__ = ["create_ensemble", "file_sha256"]


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def create_ensemble(
    checkpoints: Sequence[str | Path | Checkpoint],
    out: str | Path,
    *,
    temperatures: Sequence[float] | None = None,
    backbone: nn.Module | None = None,
    threshold: float | None = None,
    **extra: Any,
) -> Checkpoint:
    """Write one checkpoint holding every member of an ensemble; return it loaded.

    Args:
        checkpoints: The members (same classes and preprocessing).
        out: The file to write (atomically).
        temperatures: One per member; default: each member's stored temperature.
        backbone: For members with a custom backbone: a fresh instance (copied per member).
        threshold: The ensemble's operating threshold on its averaged P(positive); None = argmax.
        **extra: More metadata (threshold_info, calibration, metrics, train_config...). The
            members' `training_data` records are merged into the ensemble's unless given.

    Raises:
        CheckpointError: no members, or members with other classes or preprocessing.
    """
    ckpts = [c if isinstance(c, Checkpoint) else load_checkpoint(c) for c in checkpoints]
    if not ckpts:
        raise CheckpointError("an ensemble needs at least one member checkpoint")
    classes = ckpts[0].classes
    context = [str(c.path) for c in ckpts if (c.model_config.get("metadata") or {}).get(
        "patient_context")]  # fmt: skip
    if context:  # each member's context comes from its own backbone's embeddings
        raise CheckpointError(
            f"{context[0]} takes patient context; ensembles of models with patient context are "
            f"not supported: ensemble models trained without {opt('model.patient_context')}"
        )
    for c in ckpts[1:]:
        if c.classes != classes:
            raise CheckpointError(f"{c.path} has classes {c.classes}, not {classes}")
        if c.preprocessing != ckpts[0].preprocessing:
            raise CheckpointError(f"{c.path} has another preprocessing than {ckpts[0].path}")
    temps = list(temperatures) if temperatures is not None else [c.temperature for c in ckpts]
    members = [
        c.build_model(copy.deepcopy(backbone) if backbone is not None else None) for c in ckpts
    ]
    model = EnsembleClassifier(members, temps).eval()
    info = {
        "members": [
            {"path": str(c.path), "sha256": file_sha256(c.path), "temperature": float(t)}
            for c, t in zip(ckpts, temps)
        ],
        **extra.pop("ensemble", {}),
    }
    record = _training_record(ckpts)
    if record is not None:
        extra.setdefault("training_data", record)
    # The members' temperatures are inside the model; the ensemble's output needs none of its own.
    save_checkpoint(
        out,
        model,
        classes=classes,
        threshold=threshold,
        temperature=1.0,
        ensemble=info,
        **extra,
    )
    return load_checkpoint(out)


def _training_record(ckpts: Sequence[Checkpoint]) -> dict[str, Any] | None:
    """What the ensemble as a whole was trained on: every member's images (None if one has no record).

    An image any member trained on counts as trained on; one only used for validation (model
    selection) by some member, and trained on by none, counts as a validation image.
    """
    records = [c.data.get("training_data") for c in ckpts]
    if not all(records):
        return None
    train = set().union(*(r.get("train") or () for r in records))
    val = set().union(*(r.get("val") or () for r in records)) - train
    groups = [r.get("groups") or {} for r in records]
    g_train = set().union(*(g.get("train") or () for g in groups))
    g_val = set().union(*(g.get("val") or () for g in groups)) - g_train
    prints = {r.get("data_fingerprint") for r in records}
    return {
        **records[0],
        "data_fingerprint": prints.pop() if len(prints) == 1 else None,
        "train": sorted(train),
        "val": sorted(val),
        "groups": {**groups[0], "train": sorted(g_train), "val": sorted(g_val)},
    }
