"""Pipeline: config → plan (data, model) → Trainer → run dir → training and checkpoints; what `skincls
train` and the demo call.

Each stage is a function handing a record to the next (`RunPlan`, `Resumed`, `RunDir`). Everything
is checked before anything is written (device, run dir, data, model, resume state); the run dir is
then created and locked for the whole run, so a second writer is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from ..config import RunConfig
from ..data.dataset import ManifestDataset, build_transform
from ..data.patient_context import CONTEXT_COLUMNS
from ..data.provenance import training_record
from ..data.splits import Manifest, load_manifest
from ..data.tabular import MetadataEncoder, metadata_columns
from ..errors import ConfigError, DataError, Interrupted, SkinclsError, call, opt
from ..inference.metadata import context_rows
from ..locks import DirLock
from ..models.checkpoint import ModelSnapshot, save_checkpoint
from ..models.classifier import create_model
from ..preprocessing import Preprocessing
from ..runtime import resolve_device, seed_everything
from .callbacks import Callback, EarlyStopping, HistoryWriter, ModelCheckpoint, RichProgress
from .distributed import Dist, close_distributed, distributed_ready, init_distributed
from .features import FeatureSet
from .history import History
from .loggers import check_loggers, create_loggers
from .rundir import (
    RUN_FILES,
    Resumed,
    check_run_to_resume,
    default_run_dir,
    drop_unresumable,
    feature_cache_dir,
    load_resume,
    lock_run_dir,
    prepare_run_dir,
    refuse_nonempty,
)
from .trainer import Trainer

__all__ = [
    "RUN_FILES",
    "CheckpointWriter",
    "Resumed",
    "RunDir",
    "RunPlan",
    "TrainResult",
    "build_trainer",
    "default_run_dir",
    "feature_cache_dir",
    "fit_run",
    "open_run_dir",
    "plan_run",
    "train_from_config",
]


@dataclass
class TrainResult:
    run_dir: Path
    history: History
    best_checkpoint: Path
    classes: list[str]


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

    A chain of stages, each handing a record to the next: `plan_run` (check everything, build the
    model and datasets) → `build_trainer` (and load a run to resume) → `open_run_dir` (create and
    lock it, write config.json) → `fit_run` (callbacks, checkpoints, training) → `TrainResult`.

    Args:
        config: Data, model and training recipe plus the run directory (`out`; None: a new
            `runs/ARCH-YYYYMMDD-HHMMSS`). The data dir is recorded absolute (resolved).
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
        CheckpointError: `resume` without a run in `out` (checked before the model is built), or
            without a resumable `last.pt`; the run dir is left as it was.
        LockError: another process trains into `out`.
        Interrupted: the run was interrupted (Ctrl-C); the message says what its run dir kept and
            how to resume it.
    """
    if resume and overwrite:
        raise ConfigError(f"give {opt('resume=True')} or {opt('overwrite=True')}, not both")
    owned = not distributed_ready()
    # Under torchrun: join the process group; each rank gets its own device (GPU LOCAL_RANK).
    dist, device = init_distributed(config.train.device)
    try:
        plan = plan_run(
            config, device=device, resume=resume, overwrite=overwrite, backbone=backbone,
            preprocessing=preprocessing, manifest=manifest,
        )  # fmt: skip
        trainer, resumed = build_trainer(plan, device=device, dist=dist, feature_pool=feature_pool)
        run = open_run_dir(plan, resumed, dist)
        try:
            history = fit_run(plan, run, trainer, resumed, callbacks or [], progress=progress)
        finally:
            run.release()
    finally:
        if owned:
            close_distributed()
    return TrainResult(run.path, history, run.path / "best.pt", plan.manifest.classes)


# -- stage 1: the plan ----------------------------------------------------------------------------
@dataclass
class RunPlan:
    """What `plan_run` checked and built; nothing is written yet."""

    config: RunConfig  # data dir absolute; `out` as given (None: an automatic name)
    run_dir: Path  # the run dir to create (an automatic name moves on if taken meanwhile)
    auto_arch: str | None  # the arch of an automatic run-dir name; None with `out`
    resume: bool
    overwrite: bool
    manifest: Manifest
    model: nn.Module
    train: Dataset
    val: Dataset | None
    record: dict[str, Any]  # the training data, as its checkpoints record it
    own_manifest: bool = (
        False  # the caller's manifest (a cross-validation fold), not the data dir's
    )


def plan_run(
    config: RunConfig,
    *,
    device: str,
    resume: bool = False,
    overwrite: bool = False,
    backbone: nn.Module | None = None,
    preprocessing: Preprocessing | None = None,
    manifest: Manifest | None = None,
) -> RunPlan:
    """Check the options, the device, the run dir (a run to resume, or room for a new one) and the
    data, then build the model and datasets: in that order, so that a refused run builds (and
    downloads) no model."""
    if backbone is None:
        _check_weights_train(config)
    _check_augment(config)
    check_loggers(config.logging)  # tensorboard/mlflow loggers: their packages are installed
    resolve_device(device)
    arch = config.model.arch if backbone is None else "custom"
    run_dir, auto_arch = _plan_run_dir(config, arch, resume=resume, overwrite=overwrite)
    own_manifest = manifest is not None
    data = config.data.model_copy(update={"data_dir": Path(config.data.data_dir).resolve()})
    config = config.model_copy(update={"data": data})  # found from anywhere (evaluate, resume)
    if manifest is None:
        manifest = load_manifest(config.data.data_dir)
    if not manifest.select("train"):
        raise DataError(f"{config.data.data_dir}: the manifest has no training images")
    model, train, val = _build_model_and_data(config, manifest, backbone, preprocessing, device)
    return RunPlan(
        config, run_dir, auto_arch, resume, overwrite, manifest, model, train, val,
        training_record(manifest), own_manifest,
    )  # fmt: skip


def _plan_run_dir(
    config: RunConfig, arch: str, *, resume: bool, overwrite: bool
) -> tuple[Path, str | None]:
    """The run dir and, for an automatic name, its arch; a `resume` needs a run there, and a new
    run an empty folder."""
    auto = config.out is None
    if auto and resume:
        raise ConfigError(f"{opt('resume=True')} needs {opt('out=RUN_DIR')}: the run to continue")
    run_dir = default_run_dir(arch) if auto else Path(config.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(
            f"{opt('out')} {run_dir} is a file, not a folder; give a folder for the run"
        )
    if resume:
        check_run_to_resume(run_dir)
    if not resume and not overwrite:
        refuse_nonempty(run_dir)
    return run_dir, arch if auto else None


def _build_model_and_data(
    config: RunConfig,
    manifest: Manifest,
    backbone: nn.Module | None,
    preprocessing: Preprocessing | None,
    device: str = "cpu",
) -> tuple[nn.Module, Dataset, Dataset | None]:
    """The model `config.model` describes (on `backbone` when given) and its train/val datasets."""
    m = config.model
    seed_everything(config.train.seed)  # the head's initial weights depend on it
    common: dict[str, Any] = {
        "num_classes": len(manifest.classes),
        "head": m.head,
        "dropout": m.dropout,
        "freeze": m.freeze,
    }
    encoder = fit_metadata(config, manifest)
    if encoder is not None:
        common["metadata"] = {**metadata_settings(encoder), "image": m.use_image}
        common["metadata"]["patient_context"] = m.patient_context
    if backbone is not None:
        model = create_model(backbone=backbone, preprocessing=preprocessing, **common)
    else:
        model = create_model(m.arch, weights=m.weights, image_size=config.data.image_size, **common)
    pre = model.preprocessing.with_size(config.data.image_size)
    model.preprocessing = pre  # what its checkpoints record
    extra: dict[str, list | None] = {"train": None, "val": None}
    if m.patient_context:
        encoder, extra = _fit_context(model, manifest, encoder, resolve_device(device))
    augment, policy = config.data.augment, config.data.augment_policy
    train_tf = build_transform(pre, train=True, augment=augment, policy=policy)
    train = ManifestDataset(manifest, "train", train_tf, metadata=encoder, extra=extra["train"])
    val = None
    if manifest.select("val"):
        val = ManifestDataset(
            manifest, "val", build_transform(pre), metadata=encoder, extra=extra["val"]
        )
    return model, train, val


def fit_metadata(config: RunConfig, manifest: Manifest) -> MetadataEncoder | None:
    """The metadata encoder `config.model.metadata` asks for, fitted on the training split only;
    None for images only. With patient context its columns are placeholders here (numeric: their
    width is known), fitted by `_fit_context` once the backbone's embeddings exist.

    Raises:
        ConfigError: columns the data lacks, a metadata-only model without metadata, or patient
            context without patient ids or with a backbone that trains.
    """
    m = config.model
    available = {k for r in manifest.records for k, _ in r.attributes}
    columns = metadata_columns(m.metadata, available)
    if m.patient_context:
        _check_patient_context(config, manifest)
        columns += list(CONTEXT_COLUMNS)
    if not columns:
        if not m.use_image:
            raise ConfigError(
                f"{opt('model.use_image=False')} needs metadata to learn from: give "
                f"{opt('model.metadata')} (auto, or columns)"
            )
        return None
    train = manifest.select("train")
    return MetadataEncoder.fit(
        [dict(r.attributes) for r in train], columns, numeric=CONTEXT_COLUMNS
    )


def _check_patient_context(config: RunConfig, manifest: Manifest) -> None:
    if not any(r.patient_id for r in manifest.select("train")):
        raise ConfigError(
            f"{opt('model.patient_context')} needs patient ids, and no training image has one; "
            "train without it"
        )
    if config.model.freeze != "backbone" or config.train.finetune_epochs:
        raise ConfigError(
            f"{opt('model.patient_context')} compares image embeddings of a frozen backbone; "
            f"train with {opt('model.freeze', value='backbone')} and no fine-tuning phase"
        )


def _fit_context(
    model: nn.Module, manifest: Manifest, encoder: MetadataEncoder, device
) -> tuple[MetadataEncoder, dict[str, list | None]]:
    """Each split's patient context (from its own images only), and the encoder refitted with the
    training split's context values; the model's stored encoder updated to it."""
    model.to(device)
    tf = build_transform(model.preprocessing)
    extra: dict[str, list | None] = {"train": None, "val": None}
    for split in extra:
        if manifest.select(split):
            extra[split] = context_rows(model, manifest, split, tf, device)
    train = [{**dict(r.attributes), **e} for r, e in zip(manifest.select("train"), extra["train"])]
    fitted = MetadataEncoder.fit(train, encoder.names, numeric=CONTEXT_COLUMNS)
    if fitted.width != encoder.width:  # numeric columns: always 2 wide
        raise ConfigError("patient context changed the metadata width; this is a bug")
    model.config["metadata"].update(metadata_settings(fitted))
    return fitted, extra


def metadata_settings(encoder: MetadataEncoder) -> dict[str, Any]:
    """A fused model's `metadata` settings: the encoder (plain data) and its width."""
    return {"encoder": encoder.to_dict(), "width": encoder.width, "columns": encoder.names}


# -- stage 2: the trainer, and the run it resumes -------------------------------------------------
def build_trainer(
    plan: RunPlan,
    *,
    device: str,
    dist: Dist,
    feature_pool: Callable[..., FeatureSet] | None = None,
) -> tuple[Trainer, Resumed | None]:
    """The plan's `Trainer` (it checks the device and precision options; callbacks come in
    `fit_run`), with `last.pt`'s state loaded when resuming from one."""
    config = plan.config
    trainer = Trainer(
        plan.model,
        config.train.model_copy(update={"device": device}),
        callbacks=[],
        cache_dir=feature_cache_dir(config.data.data_dir),
        num_workers=config.data.num_workers,
        feature_pool=feature_pool,
        dist=dist,
    )
    if dist.enabled:
        bs, n = config.train.batch_size, dist.world_size
        trainer.log(
            f"distributed: {n} processes, global batch {bs} ({bs // n}–{-(-bs // n)} per process)"
        )
    resumed = load_resume(trainer, plan.run_dir, plan.record) if plan.resume else None
    dist.barrier()  # every rank has checked before rank 0 writes
    return trainer, resumed


# -- stage 3: the run dir -------------------------------------------------------------------------
@dataclass
class RunDir:
    """The created and locked run dir (locked by rank 0, which wrote its config.json)."""

    path: Path
    config: RunConfig  # as written in config.json: `out` is `path`
    lock: DirLock | None = None

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def open_run_dir(plan: RunPlan, resumed: Resumed | None, dist: Dist) -> RunDir:
    """Rank 0 creates and locks the run dir, clears what is replaced and writes config.json; the
    other ranks learn where it is (or that it failed, and stop too)."""
    run_dir, lock = plan.run_dir, None
    if dist.is_main:
        try:
            lock = lock_run_dir(run_dir, plan.auto_arch)
            run_dir = lock.folder
            config = plan.config.model_copy(update={"out": run_dir})
            prepare_run_dir(
                lock, config, resume=plan.resume, overwrite=plan.overwrite,
                last=resumed.stamp if resumed else None,
            )  # fmt: skip
        except BaseException as exc:
            dist.broadcast((str(run_dir), f"{exc}"))  # the other ranks stop too
            if lock is not None:
                lock.release()
            raise
    started, failed = dist.broadcast((str(run_dir), None))
    if failed is not None:
        raise SkinclsError(f"rank 0 could not start the run: {failed}")
    run_dir = Path(started)
    return RunDir(run_dir, plan.config.model_copy(update={"out": run_dir}), lock)


# -- stage 4: training, with its checkpoints ------------------------------------------------------
@dataclass
class CheckpointWriter:
    """Writes a run's best.pt and last.pt (`ModelCheckpoint`'s `save`) with what the run records:
    classes, how they were made, its config and its training data."""

    classes: list[str]
    labels: dict[str, Any] | None
    train_config: dict[str, Any]
    record: dict[str, Any]
    last_epoch: int | None = None  # the epoch last.pt holds (written now, or resumed from)

    def __call__(
        self,
        path: Path,
        snapshot: ModelSnapshot,
        extra: dict[str, Any],
        training_state: dict[str, Any] | None,
    ) -> None:
        save_checkpoint(
            path,
            snapshot,
            classes=self.classes,
            labels=self.labels,
            train_config=self.train_config,
            training_data=self.record,
            training_state=training_state,
            **extra,
        )
        if training_state is not None:
            self.last_epoch = extra["epoch"]

    @classmethod
    def for_run(cls, plan: RunPlan, run: RunDir, resumed: Resumed | None) -> CheckpointWriter:
        info = plan.manifest.info
        return cls(
            plan.manifest.classes,
            # How the classes were made (task, diagnosis map): read by the model card and export.
            info.labels.model_dump() if info.labels else None,
            run.config.model_dump(mode="json"),
            plan.record,
            resumed.epoch if resumed else None,
        )


def fit_run(
    plan: RunPlan,
    run: RunDir,
    trainer: Trainer,
    resumed: Resumed | None,
    callbacks: list[Callback],
    *,
    progress: bool = True,
) -> History:
    """Train with the run's callbacks (early stopping, checkpoints, history, progress, loggers)
    before `callbacks`. A failure before any checkpoint removes what was written; an interruption
    keeps the run dir and says how to resume it (`Interrupted`)."""
    config, dist = run.config, trainer.dist
    writer = CheckpointWriter.for_run(plan, run, resumed)
    cbs: list[Callback] = []
    if config.train.patience:
        cbs.append(EarlyStopping(config.train.patience))
    if dist.is_main:  # early stopping decides on every rank (same metrics); only rank 0 writes
        interval = config.train.checkpoint_interval
        cbs += [ModelCheckpoint(run.path, writer, background=True, interval=interval)]
        cbs += [HistoryWriter(run.path)] + ([RichProgress()] if progress else [])
        cbs += create_loggers(config, run.path)  # after the files they may log
    trainer.callbacks = cbs + list(callbacks)
    try:
        history = trainer.fit(plan.train, plan.val)
        dist.barrier()  # rank 0's checkpoints are complete before any rank returns
    except KeyboardInterrupt as exc:
        if dist.is_main and not isinstance(exc, Interrupted):
            raise Interrupted(_interrupted(plan, run, trainer, writer.last_epoch)) from exc
        raise
    except BaseException:
        if dist.is_main:
            drop_unresumable(run.path)
        raise
    return history


def _interrupted(plan: RunPlan, run: RunDir, trainer: Trainer, last_epoch: int | None) -> str:
    """What an interrupted run kept, and the command that goes on with it (a run on the caller's
    manifest, e.g. a cross-validation fold, is resumed by the command that started it)."""
    cfg = trainer.config
    planned = cfg.epochs + cfg.finetune_epochs
    when = f"in epoch {trainer.epoch + 1}" if trainer.epoch < planned else "after its last epoch"
    command = call("train_from_config", "...", "resume=True", out=str(run.path))
    if plan.own_manifest:
        command = f"the command that started it, with {opt('resume=True')},"
    if last_epoch is not None:
        return (
            f"interrupted {when}: {run.path / 'last.pt'} holds epoch {last_epoch}; {command} "
            "continues from there"
        )
    if trainer.epoch == 0:
        what = "nothing was trained to the end of an epoch"
    else:
        what = (
            f"no checkpoint was written yet (one every {cfg.checkpoint_interval:g} s of training, "
            f"{opt('train.checkpoint_interval')})"
        )
    return (
        f"interrupted {when}: {what}; {run.path} keeps its config.json: {command} starts it again"
    )


def _check_augment(config: RunConfig) -> None:
    """A strong augmentation policy with augmentation off would silently train unaugmented."""
    data = config.data
    if data.augment_policy != "basic" and not data.augment:
        policy = opt("data.augment_policy", value=data.augment_policy)
        basic = opt("data.augment_policy='basic'")
        raise ConfigError(
            f"{policy} needs {opt('data.augment=True')}; to train without augmentation give {basic}"
        )


def _check_weights_train(config: RunConfig) -> None:
    """Refuse a random backbone that never trains: the head would learn from noise.

    Such a run "succeeds" at the accuracy of always answering the majority class. Training some
    stages (`model.freeze=N`, or a fine-tuning phase) is allowed: they learn on top of the random ones.
    """
    m = config.model
    if m.weights != "none" or m.freeze not in ("backbone", 0) or config.train.finetune_epochs:
        return
    option = opt("model.freeze='backbone'") if m.freeze == "backbone" else opt("model.freeze=0")
    none, scratch = opt("model.weights='none'"), opt("model.freeze='none'")
    pretrained = opt("model.weights='imagenet'") + ", or " + opt("model.weights=FILE")
    raise ConfigError(
        f"{none} with {option} keeps the whole backbone frozen at random values, so the head "
        f"would learn from noise; train from scratch with {scratch}, or start from pretrained "
        f"weights ({pretrained})"
    )
