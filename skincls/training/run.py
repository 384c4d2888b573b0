"""Pipeline: compose config → data → model → Trainer → checkpoints; what `skincls train` and the demo call.

Everything is checked before anything is written (device, data, model, resume state, run dir); the run
dir is then created and locked for the whole run, so a second writer is refused.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..atomic import is_temp_name
from ..config import RunConfig, save_config
from ..data.dataset import ManifestDataset, build_transform
from ..data.provenance import training_record
from ..data.splits import Manifest, load_manifest
from ..errors import CheckpointError, ConfigError, DataError, SkinclsError
from ..locks import LOCK_FILES, DirLock, clean_stale_temps, file_stamp
from ..models.checkpoint import ModelSnapshot, load_checkpoint, save_checkpoint
from ..models.classifier import create_model
from ..preprocessing import Preprocessing
from ..runtime import resolve_device, seed_everything
from .callbacks import Callback, EarlyStopping, HistoryWriter, ModelCheckpoint, RichProgress
from .distributed import close_distributed, distributed_ready, init_distributed
from .features import FeatureSet
from .history import History
from .loggers import check_loggers, create_loggers, remove_tracking_files
from .trainer import Trainer

__all__ = ["RUN_FILES", "TrainResult", "default_run_dir", "feature_cache_dir", "train_from_config"]

RUN_FILES = (
    "last.pt",  # first: a half-removed run must never look resumable from an old epoch
    "best.pt",
    "history.json",
    "history.csv",
    "training_curves.png",
    "config.json",  # last: while any of it is left, --resume starts the run over
)
"""What a run writes into its run dir (what `overwrite` removes)."""

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    history: History
    best_checkpoint: Path
    classes: list[str]


def feature_cache_dir(data_dir: str | Path) -> Path:
    """Where disk-cached backbone features of a data dir live (safe to delete)."""
    return Path(data_dir) / ".cache" / "features"


def default_run_dir(arch: str, root: str | Path = "runs") -> Path:
    """A new run dir name, `runs/ARCH-YYYYMMDD-HHMMSS` (`-2`, `-3`... when taken): never reused."""
    base = Path(root) / f"{arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    for n in itertools.count(1):
        candidate = base if n == 1 else base.with_name(f"{base.name}-{n}")
        if not candidate.exists():
            return candidate
    raise AssertionError("unreachable")  # pragma: no cover


def train_from_config(
    config: RunConfig,
    *,
    progress: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    backbone: nn.Module | None = None,
    preprocessing: Preprocessing | None = None,
    callbacks: list[Callback] | None = None,
    manifest: Manifest | None = None,
    feature_pool: Callable[..., FeatureSet] | None = None,
) -> TrainResult:
    """Train the model that `config` describes on its data dir; write checkpoints, history and config.

    Args:
        config: Data, model and training recipe plus the run directory (`out`; None: a new
            `runs/ARCH-YYYYMMDD-HHMMSS`).
        progress: Show progress bars and per-epoch lines.
        resume: Continue from `out/last.pt` (weights, optimizer, scheduler, RNG, early stopping);
            a run stopped before its first epoch ended (config.json, no last.pt) starts over.
        overwrite: Train into a non-empty `out`, removing the previous run's files first.
        backbone: A custom backbone module (bring your own); `config.model.arch`/`weights` are then
            ignored. `preprocessing` says what its images need.
        callbacks: Extra trainer callbacks, called after the built-in ones.
        manifest: Train on this manifest's train/val splits instead of the data dir's own (a
            cross-validation fold: the same images, other splits).
        feature_pool: Passed to the `Trainer` (a `FeaturePool` shares one feature extraction
            between folds).

    Raises:
        ConfigError: `weights="none"` with backbone layers that would stay frozen at random
            values, `out` not empty (without `resume`/`overwrite`), or a device, model or option
            that cannot work; nothing is written then.
        DataError: no manifest or no training images.
        CheckpointError: `resume` without a resumable `last.pt`; the run dir is left as it was.
        LockError: another process trains into `out`.
    """
    if resume and overwrite:
        raise ConfigError("give --resume or --overwrite, not both")
    # 1. Check everything; nothing is written before the run dir is locked in step 2.
    if backbone is None:
        _check_weights_train(config)
    check_loggers(config.logging)  # --logger tensorboard/mlflow: their packages are installed
    # Under torchrun: join the process group; each rank gets its own device (GPU LOCAL_RANK).
    owned = not distributed_ready()
    dist, device = init_distributed(config.train.device)
    try:
        resolve_device(device)
        train_config_run = config.train.model_copy(update={"device": device})
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
        else:
            model = create_model(m.arch, weights=m.weights, **common)
        pre = model.preprocessing.with_size(config.data.image_size)
        model.preprocessing = pre  # what its checkpoints record
        train_ds = ManifestDataset(
            manifest, "train", build_transform(pre, train=True, augment=config.data.augment)
        )
        val_ds = (
            ManifestDataset(manifest, "val", build_transform(pre))
            if manifest.select("val")
            else None
        )
        auto_name = config.out is None
        if auto_name and resume:
            raise ConfigError("--resume needs --out RUN_DIR: the run to continue")
        arch = m.arch if backbone is None else "custom"
        run_dir = default_run_dir(arch) if auto_name else Path(config.out)
        if run_dir.exists() and not run_dir.is_dir():
            raise ConfigError(f"--out {run_dir} is a file, not a folder; give a folder for the run")
        record = training_record(manifest)
        trainer = Trainer(  # checks the device and precision options; callbacks follow below
            model,
            train_config_run,
            callbacks=[],
            cache_dir=feature_cache_dir(config.data.data_dir),
            num_workers=config.data.num_workers,
            feature_pool=feature_pool,
            dist=dist,
        )
        if dist.enabled:
            bs, n = config.train.batch_size, dist.world_size
            trainer.log(
                f"distributed: {n} processes, global batch {bs} ({bs // n}–{-(-bs // n)} per "
                "process)"
            )
        resume_from = _check_resume(trainer, run_dir, record) if resume else None
        if not resume and not overwrite:
            _refuse_nonempty(run_dir)
        dist.barrier()  # every rank has checked before rank 0 writes

        # 2. Rank 0 creates and locks the run dir and writes in it; the other ranks only train.
        lock = None
        if dist.is_main:
            try:
                lock = _lock_run_dir(run_dir, arch if auto_name else None)
                run_dir = lock.folder
                config = config.model_copy(update={"out": run_dir})
                _prepare_run_dir(lock, config, resume=resume, overwrite=overwrite, last=resume_from)
            except BaseException as exc:
                dist.broadcast((str(run_dir), f"{exc}"))  # the other ranks stop too
                if lock is not None:
                    lock.release()
                raise
        started, failed = dist.broadcast((str(run_dir), None))
        if failed is not None:
            raise SkinclsError(f"rank 0 could not start the run: {failed}")
        run_dir = Path(started)
        config = config.model_copy(update={"out": run_dir})
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
                labels=manifest.info.labels.model_dump() if manifest.info.labels else None,
                train_config=train_config,
                training_data=record,
                training_state=training_state,
                **extra,
            )

        cbs: list[Callback] = []
        if config.train.patience:
            cbs.append(EarlyStopping(config.train.patience))
        if dist.is_main:  # early stopping decides on every rank (same metrics); only rank 0 writes
            interval = config.train.checkpoint_interval
            writer = ModelCheckpoint(run_dir, save, background=True, interval=interval)
            cbs += [writer, HistoryWriter(run_dir)]
            if progress:
                cbs.append(RichProgress())
            cbs += create_loggers(config, run_dir)  # after the files they may log
        trainer.callbacks = cbs + list(callbacks or [])
        try:
            history = trainer.fit(train_ds, val_ds)
            dist.barrier()  # rank 0's checkpoints are complete before any rank returns
        except BaseException:
            if dist.is_main:
                _drop_unresumable(run_dir)
            raise
        finally:
            if lock is not None:
                lock.release()
    finally:
        if owned:
            close_distributed()
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


def _prepare_run_dir(
    lock: DirLock, config: RunConfig, *, resume: bool, overwrite: bool, last: Any
) -> None:
    """Under the lock: check again, clean up after killed runs, clear what is replaced, write config."""
    run_dir = lock.folder
    now = (
        file_stamp(run_dir / "last.pt", content=False) if (run_dir / "last.pt").is_file() else None
    )
    if resume and now != last:
        raise CheckpointError(
            f"cannot resume: {run_dir / 'last.pt'} changed while starting; try again"
        )
    if not resume and not overwrite:
        _refuse_nonempty(run_dir)  # again: another run may have just ended in it
    lock.clean_stale_temps()
    clean_stale_temps(feature_cache_dir(config.data.data_dir))
    if overwrite or (resume and last is None):
        _remove_run_files(run_dir)
    save_config(config, run_dir / "config.json")


def _run_entries(run_dir: Path) -> list[str]:
    """What the folder holds besides lock files and temp files (empty when it does not exist)."""
    try:
        return sorted(
            p.name
            for p in run_dir.iterdir()
            if p.name not in LOCK_FILES and not is_temp_name(p.name)
        )
    except (FileNotFoundError, NotADirectoryError):
        return []


def _refuse_nonempty(run_dir: Path) -> None:
    names = _run_entries(run_dir)
    if names:
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise ConfigError(
            f"run dir {run_dir} is not empty ({shown}); give --resume to continue that run, "
            "--overwrite to replace it, or another --out"
        )


def _lock_run_dir(run_dir: Path, auto_arch: str | None) -> DirLock:
    """Lock `run_dir`; an automatic name (`auto_arch` given) that got taken moves on to the next."""
    while True:
        try:
            return DirLock(
                run_dir,
                "skincls train",
                new=auto_arch is not None,
                advice="wait for it to finish, or give another --out",
            ).acquire()
        except FileExistsError:
            run_dir = default_run_dir(auto_arch, run_dir.parent)


def _drop_unresumable(run_dir: Path) -> None:
    """After a failure before any checkpoint: remove what was written (nothing could resume it)."""
    if (run_dir / "last.pt").exists() or (run_dir / "best.pt").exists():
        return
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)


def _remove_run_files(run_dir: Path) -> None:
    removed = []
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_file():
            path.unlink()
            removed.append(name)
    removed += remove_tracking_files(run_dir)
    if removed:
        log.warning("replacing the run in %s: removed its %s", run_dir, ", ".join(removed))


def _check_resume(trainer: Trainer, run_dir: Path, record: dict[str, Any]):
    """Load `last.pt` into the trainer; its stamp, or None to start over (no epoch had ended).

    `record` is the `training_record` of the data about to be trained on: it must be the data
    last.pt was trained on, so that the run's record (and every overlap check) stays true.
    """
    last = run_dir / "last.pt"
    if not last.is_file():
        if (run_dir / "config.json").is_file():
            log.warning(
                "no last.pt in %s yet (the run stopped before its first epoch ended): starting "
                "that run from the beginning",
                run_dir,
            )
            return None
        raise CheckpointError(
            f"cannot resume: {run_dir} holds no run (no last.pt, no config.json); train without "
            "--resume"
        )
    stamp = file_stamp(last, content=False)
    ckpt = load_checkpoint(last)
    state = ckpt.data.get("training_state")
    if state is None:
        raise CheckpointError(f"cannot resume from {last}: it holds no training state")
    _check_same_data(last, ckpt.data.get("training_data"), record)
    try:
        trainer.model.load_state_dict(ckpt.data["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"cannot resume from {last}: its weights don't fit this model ({_first_mismatch(exc)}); "
            "resume with the run's own options (its config.json), or train into another --out"
        ) from exc
    trainer.load_state_dict(state)
    return stamp


def _check_same_data(last: Path, trained: Any, now: dict[str, Any]) -> None:
    """Refuse to resume on other train/val images than `last.pt` trained on (a re-split data dir).

    Otherwise the new test split may hold images the first epochs trained on, while the record
    (and `evaluate`'s overlap check) would describe only the new split.
    """
    if not isinstance(trained, dict) or "train" not in trained:
        log.warning("%s records no training data: cannot check it is the same data", last)
        return
    old_train, new_train = set(trained.get("train") or ()), set(now["train"])
    old_val, new_val = set(trained.get("val") or ()), set(now["val"])
    if old_train == new_train and old_val == new_val:
        return
    if old_train != new_train:
        what = (
            f"{len(old_train - new_train)} of the {len(old_train)} images it trained on are not "
            f"training images now, and {len(new_train - old_train)} training images are new"
        )
    else:
        what = f"its {len(old_val)} validation images changed ({len(old_val ^ new_val)} differ)"
    raise CheckpointError(
        f"cannot resume from {last}: the data is not the split it was trained on ({what}; was the "
        "data dir fetched again?), and resuming could test it on images it trained on; train "
        "into a new --out, or fetch back the split the run used (the same source, options and "
        "--seed)"
    )


def _first_mismatch(exc: RuntimeError) -> str:
    """The first line of a `load_state_dict` error that names a tensor (its message is many lines)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    named = [
        ln for ln in lines if ln.startswith(("size mismatch", "Missing key", "Unexpected key"))
    ]
    first = (named or lines or ["unknown difference"])[0].rstrip(".")
    more = len(named) - 1
    return first + (f"; {more} more" if more > 0 else "")
