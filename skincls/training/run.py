"""Pipeline: compose config → data → model → Trainer → checkpoints; what `skincls train` and the demo call."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..config import RunConfig, save_config
from ..data.dataset import ManifestDataset, build_transform
from ..data.splits import Manifest, load_manifest
from ..errors import CheckpointError, ConfigError, DataError
from ..models.checkpoint import ModelSnapshot, load_checkpoint, save_checkpoint
from ..models.classifier import create_model
from ..preprocessing import Preprocessing
from ..runtime import seed_everything
from .callbacks import Callback, EarlyStopping, HistoryWriter, ModelCheckpoint, RichProgress
from .features import FeatureSet
from .history import History
from .trainer import Trainer

__all__ = ["TrainResult", "feature_cache_dir", "train_from_config"]


@dataclass
class TrainResult:
    run_dir: Path
    history: History
    best_checkpoint: Path
    classes: list[str]


def feature_cache_dir(data_dir: str | Path) -> Path:
    """Where disk-cached backbone features of a data dir live (safe to delete)."""
    return Path(data_dir) / ".cache" / "features"


def train_from_config(
    config: RunConfig,
    *,
    progress: bool = True,
    resume: bool = False,
    backbone: nn.Module | None = None,
    preprocessing: Preprocessing | None = None,
    callbacks: list[Callback] | None = None,
    manifest: Manifest | None = None,
    feature_pool: Callable[..., FeatureSet] | None = None,
) -> TrainResult:
    """Train the model that `config` describes on its data dir; write checkpoints, history and config.

    Args:
        config: Data, model and training recipe plus the run directory (`out`).
        progress: Show progress bars and per-epoch lines.
        resume: Continue from `out/last.pt` (weights, optimizer, scheduler, RNG, early stopping).
        backbone: A custom backbone module (bring your own); `config.model.arch`/`weights` are then
            ignored. `preprocessing` says what its images need.
        callbacks: Extra trainer callbacks, called after the built-in ones.
        manifest: Train on this manifest's train/val splits instead of the data dir's own (a
            cross-validation fold: the same images, other splits).
        feature_pool: Passed to the `Trainer` (a `FeaturePool` shares one feature extraction
            between folds).

    Raises:
        ConfigError: `weights="none"` with backbone layers that would stay frozen at random values.
        DataError: no manifest or no training images.
        CheckpointError: `resume` without a resumable `last.pt`.
    """
    if backbone is None:
        _check_weights_train(config)
    if manifest is None:
        manifest = load_manifest(config.data.data_dir)
    if not manifest.select("train"):
        raise DataError(f"{config.data.data_dir}: the manifest has no training images")
    m = config.model
    seed_everything(config.train.seed)  # the head's initial weights depend on it
    common = {
        "num_classes": len(manifest.classes),
        "head": m.head,
        "dropout": m.dropout,
        "freeze": m.freeze,
    }
    if backbone is not None:
        model = create_model(backbone=backbone, preprocessing=preprocessing, **common)
        pre = model.preprocessing
    else:
        model = create_model(m.arch, weights=m.weights, **common)
        pre = model.preprocessing
    pre = pre.with_size(config.data.image_size)
    model.preprocessing = pre  # what its checkpoints record
    train_ds = ManifestDataset(
        manifest, "train", build_transform(pre, train=True, augment=config.data.augment)
    )
    val_ds = (
        ManifestDataset(manifest, "val", build_transform(pre)) if manifest.select("val") else None
    )

    run_dir = Path(config.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.json")
    train_config = config.model_dump(mode="json")

    def save(
        path: Path,
        snapshot: ModelSnapshot,
        extra: dict[str, Any],
        training_state: dict[str, Any] | None,
    ) -> None:
        save_checkpoint(
            path,
            snapshot,
            classes=manifest.classes,
            # How the classes were made (task, diagnosis map): read by the model card and export.
            labels=manifest.info.get("labels"),
            train_config=train_config,
            training_state=training_state,
            **extra,
        )

    cbs: list[Callback] = []
    if config.train.patience:
        cbs.append(EarlyStopping(config.train.patience))
    cbs += [ModelCheckpoint(run_dir, save, background=True), HistoryWriter(run_dir)]
    if progress:
        cbs.append(RichProgress())
    trainer = Trainer(
        model,
        config.train,
        callbacks=cbs + list(callbacks or []),
        cache_dir=feature_cache_dir(config.data.data_dir),
        num_workers=config.data.num_workers,
        feature_pool=feature_pool,
    )
    if resume:
        _resume(trainer, run_dir / "last.pt")
    history = trainer.fit(train_ds, val_ds)
    return TrainResult(run_dir, history, run_dir / "best.pt", manifest.classes)


def _check_weights_train(config: RunConfig) -> None:
    """Refuse a random backbone that never trains: the head would learn from noise.

    Such a run "succeeds" at the accuracy of always answering the majority class. Training some
    stages (`--train-stages N`, or a fine-tuning phase) is allowed: they learn on top of the random ones.
    """
    m = config.model
    if m.weights != "none" or m.freeze not in ("backbone", 0) or config.train.finetune_epochs:
        return
    option = "--freeze backbone" if m.freeze == "backbone" else "--train-stages 0"
    raise ConfigError(
        f"--weights none with {option} keeps the whole backbone frozen at random "
        "values, so the head would learn from noise; train from scratch with --freeze none, or "
        "start from pretrained weights (--weights imagenet, or --weights FILE)"
    )


def _resume(trainer: Trainer, last: Path) -> None:
    if not last.is_file():
        raise CheckpointError(f"cannot resume: {last} does not exist; train without --resume")
    ckpt = load_checkpoint(last)
    state = ckpt.data.get("training_state")
    if state is None:
        raise CheckpointError(f"cannot resume from {last}: it holds no training state")
    try:
        trainer.model.load_state_dict(ckpt.data["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"cannot resume from {last}: its weights don't fit this model (changed options?): {exc}"
        ) from exc
    trainer.load_state_dict(state)
