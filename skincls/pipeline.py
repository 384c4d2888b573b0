"""Pipeline: compose config → data → model → Trainer → checkpoints; what `skincls train` and the demo call."""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import save_checkpoint
from .config import RunConfig, save_config
from .data import ManifestDataset, build_transform
from .errors import DataError
from .models import Preprocessing, SkinClassifier, create_model
from .runtime import seed_everything
from .splits import load_manifest
from .trainer import EpochRecord, History, Trainer

__all__ = ["CheckpointWriter", "TrainResult", "train_from_config"]


@dataclass
class TrainResult:
    run_dir: Path
    history: History
    best_checkpoint: Path
    classes: list[str]


class CheckpointWriter:
    """Callback: writes `last.pt` every epoch and `best.pt` when validation loss improves."""

    def __init__(self, run_dir: Path, model: SkinClassifier, meta: dict[str, Any]):
        self.run_dir = run_dir
        self.model = model
        self.meta = meta

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord, improved: bool) -> None:
        extra = {
            "epoch": record.epoch,
            "metrics": {"val": {"loss": record.val_loss, "accuracy": record.val_accuracy}},
        }
        save_checkpoint(self.run_dir / "last.pt", self.model, **self.meta, **extra)
        if improved:
            save_checkpoint(self.run_dir / "best.pt", self.model, **self.meta, **extra)


def train_from_config(config: RunConfig, *, progress: bool = True) -> TrainResult:
    """Train the model that `config` describes on its data dir; write checkpoints, history and config."""
    manifest = load_manifest(config.data.data_dir)
    if not manifest.select("train"):
        raise DataError(f"{config.data.data_dir}: the manifest has no training images")
    m = config.model
    seed_everything(config.train.seed)  # the head's initial weights depend on it
    model, pre = create_model(
        m.arch,
        num_classes=len(manifest.classes),
        weights=m.weights,
        head=m.head,
        dropout=m.dropout,
        freeze=m.freeze,
    )
    pre: Preprocessing = pre.with_size(config.data.image_size)
    train_ds = ManifestDataset(
        manifest, "train", build_transform(pre, train=True, augment=config.data.augment)
    )
    val_records = manifest.select("val")
    val_ds = ManifestDataset(manifest, "val", build_transform(pre)) if val_records else None

    run_dir = Path(config.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.json")
    meta = {
        "model_config": {**m.model_dump(mode="json"), "num_classes": len(manifest.classes)},
        "classes": manifest.classes,
        "preprocessing": pre,
        "train_config": config.model_dump(mode="json"),
    }
    trainer = Trainer(
        model, config.train, callbacks=[CheckpointWriter(run_dir, model, meta)], progress=progress
    )
    start = time.perf_counter()
    history = trainer.fit(train_ds, val_ds)
    _write_history(run_dir, history, time.perf_counter() - start)
    return TrainResult(run_dir, history, run_dir / "best.pt", manifest.classes)


def _write_history(run_dir: Path, history: History, seconds: float) -> None:
    (run_dir / "history.json").write_text(
        json.dumps({**history.to_dict(), "wall_seconds": seconds}, indent=2) + "\n"
    )
    rows = [vars(e) for e in history.epochs]
    with (run_dir / "history.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
