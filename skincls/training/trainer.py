"""Trainer: fits a model on a training set, validating each epoch. It knows nothing about skin.

The loop optimises and measures; checkpoints, early stopping, progress and history files are callbacks
(`skincls.callbacks`). A frozen backbone's features are computed once (`skincls.features`) when the
training images are not augmented, and an optional second phase fine-tunes the unfrozen backbone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, TensorDataset

from ..config import TrainConfig
from ..errors import ConfigError, TrainingError
from ..runtime import (
    get_rng_state,
    plan_precision,
    resolve_device,
    seed_everything,
    seed_worker,
    set_rng_state,
)
from .callbacks import BestWeights, Callback
from .distributed import Dist, shard_bounds
from .divergence import diverged, nonfinite_weight
from .features import FeatureSet, backbone_fingerprint, can_cache, load_or_extract
from .history import EpochRecord, History
from .optim import balanced_class_weights, build_optimizer, build_scheduler, param_groups

__all__ = ["Callback", "EpochRecord", "History", "Trainer"]


@dataclass(frozen=True)
class _Phase:
    name: str
    first: int  # first epoch number (1-based, counted across phases)
    last: int
    freeze: str | int | None  # freeze policy applied at the phase's start; None = leave the model's


class _Batches(Sampler):
    """A batch sampler replayed from index lists the trainer draws itself (same order cached or not)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class Trainer:
    """Supervised training with cross-entropy; the defaults are the original recipe (Adam 1e-3, batch 20).

    Args:
        model: A classifier returning logits. A `SkinClassifier` (or anything with `backbone`,
            `features` and `head`) also gets the feature cache and the fine-tuning phase.
        config: The optimisation recipe.
        callbacks: Objects with any of the `Callback` hooks, called in order. Default: keep the
            best weights in memory (`BestWeights`).
        cache_dir: Where `cache_features="disk"` (or "auto" with large features) keeps features.
        num_workers: DataLoader worker processes (seeded from the run's seed).
        feature_pool: Where cached features come from, called like `load_or_extract` (default);
            a `FeaturePool` serves the folds of a cross-validation from one extraction.
        dist: This process's place in a `torchrun` job (see `distributed`); default one process.
            Each rank trains on its share of every global batch through DistributedDataParallel;
            metrics are summed over ranks, so every rank sees the same numbers and decisions.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig | None = None,
        *,
        callbacks: Sequence[Callback] | None = None,
        cache_dir: str | None = None,
        num_workers: int = 0,
        feature_pool: Callable[..., FeatureSet] | None = None,
        dist: Dist | None = None,
    ):
        self.model = model
        self.config = config or TrainConfig()
        self.callbacks = list(callbacks) if callbacks is not None else [BestWeights()]
        self.cache_dir = cache_dir
        self.num_workers = num_workers
        self.feature_pool = feature_pool or load_or_extract
        self.dist = dist or Dist()
        self.device = resolve_device(self.config.device)
        self.precision = plan_precision(self.config.precision, self.device)
        self.amp_dtype = self.precision.dtype("train")
        self.history = History(monitor=self.config.monitor)
        self.epoch = 0  # last completed epoch
        self.phase = ""
        self.stop = False  # set by a callback (early stopping) to end the current phase
        self.best_value: float | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None
        self.scaler = None
        self._shuffle = torch.Generator()
        self._loader_rng = torch.Generator()
        self._resume: dict | None = None
        # The EpochRecord field that decides `improved` and steps a plateau schedule (set by `fit`).
        self._monitor = self.config.monitor
        self._backbone_fp: str | None = None  # the current phase's, computed when first needed

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue after the last completed epoch (not the model's weights)."""
        return {
            "epoch": self.epoch,
            "phase": self.phase,
            "stop": self.stop,
            "best_value": self.best_value,
            "history": self.history.to_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": get_rng_state(shuffle=self._shuffle, loader=self._loader_rng),
            "callbacks": {
                f"{i}:{type(cb).__name__}": cb.state_dict()
                for i, cb in enumerate(self.callbacks)
                if hasattr(cb, "state_dict")
            },
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()` output on the next `fit` (the model's weights are loaded by the caller)."""
        self._resume = state

    def log(self, message: str) -> None:
        """Record a note in the history and show it through the callbacks."""
        self.history.notes.append(message)
        self._emit("on_message", message)

    # -- the loop -------------------------------------------------------------------------------
    def fit(self, train: Dataset, val: Dataset | None = None) -> History:
        """Train for `epochs` (+ `finetune_epochs`); return the per-epoch history.

        The monitored metric (`config.monitor`, or train loss without `val`) decides `improved` for
        the callbacks; a callback setting `trainer.stop` ends the current phase.
        """
        cfg = self.config
        if len(train) == 0:
            raise ConfigError("the training set is empty")
        model = self.model.to(self.device)
        model.to(
            memory_format=torch.channels_last
        )  # conv weights only; faster convs on CPU and GPU
        self._monitor = cfg.monitor if val is not None else "train_loss"
        targets = _targets(train)
        num_classes = len(getattr(train, "classes", [])) or int(max(targets)) + 1
        balanced = (
            balanced_class_weights(targets, num_classes)
            if "balanced" in (cfg.class_weights, cfg.sampler)
            else None
        )
        self.criterion = nn.CrossEntropyLoss(
            weight=balanced.to(self.device) if cfg.class_weights == "balanced" else None,
            label_smoothing=cfg.label_smoothing,
        )
        self._val_criterion = nn.CrossEntropyLoss(
            reduction="sum"
        )  # plain CE: comparable across runs
        # Distributed: each rank sums its share's losses and divides by the whole global batch's
        # denominator (its size, or its summed class weights), so DDP's average is the 1-process loss.
        self._sum_criterion = nn.CrossEntropyLoss(
            weight=self.criterion.weight, label_smoothing=cfg.label_smoothing, reduction="sum"
        )
        self._targets = torch.as_tensor(targets)
        sample_weights = balanced[torch.as_tensor(targets)] if cfg.sampler == "balanced" else None
        if self._resume is None:
            seed_everything(cfg.seed)
            self._shuffle.manual_seed(cfg.seed)
            self._loader_rng.manual_seed(cfg.seed + 1)
        else:
            self._restore(self._resume)
        self.history.precision = self.precision.to_dict()
        self.log(
            f"{self.device.type}, {torch.get_num_threads()} threads, {self.precision.describe()}"
        )
        self._emit("on_fit_start")
        try:
            for phase in self._phases():
                if phase.last <= self.epoch or (phase.name == self.phase and self.stop):
                    continue
                self._run_phase(phase, train, val, sample_weights)
        except BaseException as exc:
            self._emit("on_fit_error", exc)
            raise
        self._resume = None
        self._emit("on_fit_end", self.history)
        return self.history

    def _phases(self) -> list[_Phase]:
        cfg = self.config
        if not cfg.finetune_epochs:
            return [_Phase("train", 1, cfg.epochs, None)]
        if not hasattr(self.model, "backbone"):
            raise ConfigError(
                "fine-tuning needs a model with a `backbone` (e.g. from create_model)"
            )
        unfreeze = "none" if cfg.unfreeze == "all" else cfg.unfreeze
        last = cfg.epochs + cfg.finetune_epochs
        return [
            _Phase("head", 1, cfg.epochs, None),
            _Phase("finetune", cfg.epochs + 1, last, unfreeze),
        ]

    def _run_phase(
        self, phase: _Phase, train: Dataset, val: Dataset | None, sample_weights
    ) -> None:
        cfg = self.config
        if phase.freeze is not None:
            from ..models.classifier import set_freeze

            set_freeze(self.model, phase.freeze)
        resuming = self._resume is not None and self._resume["phase"] == phase.name
        self.phase, self.stop = phase.name, False
        self._backbone_fp = None  # the backbone may have changed (fine-tuned, unfrozen)
        train_fs = self._features(train, "train")
        val_fs = self._features(val, "val") if val is not None else None
        steps = math.ceil(len(train) / cfg.batch_size)
        mult = cfg.backbone_lr_mult if phase.freeze is not None else 1.0
        self.optimizer = build_optimizer(param_groups(self.model, cfg.lr, mult), cfg)
        epochs = phase.last - phase.first + 1
        self.scheduler, when = build_scheduler(
            self.optimizer,
            cfg,
            epochs=epochs,
            steps_per_epoch=steps,
            maximise=self._maximise,
        )
        if self.amp_dtype == torch.float16:
            self.scaler = torch.amp.GradScaler(self.device.type)
        if resuming:
            self.optimizer.load_state_dict(self._resume["optimizer"])
            if self.scheduler is not None and self._resume["scheduler"] is not None:
                self.scheduler.load_state_dict(self._resume["scheduler"])
            if self.scaler is not None and self._resume["scaler"] is not None:
                self.scaler.load_state_dict(self._resume["scaler"])
        # What trains: the head alone (cached features, or a frozen backbone in the loop) or the whole
        # model; in DistributedDataParallel when distributed (rebuilt per phase: freezing changes).
        self._head = self.model.head if hasattr(self.model, "head") else None
        self._whole = self.model
        if train_fs is not None or can_cache(self.model) is None:
            self._head = self.dist.wrap(self.model.head, self.device)
        else:
            self._whole = self.dist.wrap(self.model, self.device)
        sampler = _Batches()
        loader = None
        if train_fs is None:
            self._check_shards(len(train))
            loader = self._loader(train, batch_sampler=sampler, generator=self._loader_rng)
        val_loader = None
        if val is not None and val_fs is None:
            val_loader = self._loader(self._my_share(val), batch_size=cfg.batch_size)
        self._emit("on_phase_start", phase.name, phase.first, phase.last)
        for epoch in range(max(phase.first, self.epoch + 1), phase.last + 1):
            start = time.perf_counter()
            if sample_weights is None:
                order = torch.randperm(len(train), generator=self._shuffle)
            else:
                order = torch.multinomial(sample_weights, len(train), True, generator=self._shuffle)
            global_batches = order.split(cfg.batch_size)
            sampler.batches = [self.dist.shard(b.tolist()) for b in global_batches]
            lr = self.optimizer.param_groups[0]["lr"]
            self._emit("on_epoch_start", epoch, len(sampler))
            self.model.train()
            denominators = [self._denominator(b) for b in global_batches]
            if train_fs is not None:
                batches = (
                    train_fs.batch(torch.tensor(b, dtype=torch.long)) for b in sampler.batches
                )
                train_loss, train_acc = self._train_epoch(
                    self._head, batches, when, denominators, epoch
                )
            else:
                train_loss, train_acc = self._train_epoch(
                    self._forward, loader, when, denominators, epoch
                )
            val_loss = val_acc = None
            if val is not None:
                val_loss, val_acc = self._validate(val_fs, val_loader)
            # Before any callback sees the epoch: a diverged model must never become best.pt/last.pt.
            self._check_finite(epoch, val_loss)
            record = EpochRecord(
                epoch, phase.name, train_loss, train_acc, val_loss, val_acc, lr,
                time.perf_counter() - start,
            )  # fmt: skip
            improved = self._update_best(record)
            if when == "epoch":
                self.scheduler.step(self._monitored(record))
            self.epoch = epoch
            self.history.epochs.append(record)
            self._emit("on_epoch_end", record, improved)
            self.stop = bool(self.dist.broadcast(self.stop))  # rank 0's decision, on every rank
            if self.stop:
                self.history.stopped_early.append(phase.name)
                self.log(f"early stop: {phase.name} phase ended after epoch {epoch}")
                break
        self._resume = None

    def _train_epoch(
        self,
        forward: nn.Module,
        batches,
        when: str,
        denominators: list[tuple[float, int]],
        epoch: int,
    ) -> tuple[float, float]:
        total, correct, seen = 0.0, 0, 0
        world = self.dist.world_size
        for step, ((x, y), (denominator, n_global)) in enumerate(
            zip(batches, denominators, strict=True), 1
        ):
            x, y = self._to_device(x), y.to(self.device, non_blocking=True)
            with self._autocast():
                logits = forward(x)
                if world == 1:
                    loss = self.criterion(logits.float(), y)
                else:  # DDP averages the ranks' gradients: scale the share's sum to the batch mean
                    loss = self._sum_criterion(logits.float(), y) * (world / denominator)
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
            if when == "step":
                self.scheduler.step()
            n = len(y)
            # One device-to-host transfer per step for both numbers (counts < 2**24 are exact).
            hits = (logits.argmax(1) == y).sum().float()
            batch_loss, batch_correct = torch.stack([loss.detach().float(), hits]).tolist()
            if not math.isfinite(batch_loss):
                raise self._diverged(epoch, f"the training loss is {batch_loss} at step {step}")
            batch_correct = int(batch_correct)
            # This share's part of (global batch loss × global batch size); summed over ranks below.
            weight = n if world == 1 else n_global / world
            total, correct, seen = total + batch_loss * weight, correct + batch_correct, seen + n
            self._emit("on_batch_end", batch_loss, batch_correct / max(n, 1))
        total, correct, seen = self.dist.sum([total, correct, seen], self.device)
        return total / seen, correct / seen

    @torch.inference_mode()
    def _validate(
        self, features: FeatureSet | None, loader: DataLoader | None
    ) -> tuple[float, float]:
        self.model.eval()
        if features is not None:
            forward = self.model.head
            idx = torch.arange(*shard_bounds(len(features), self.dist.rank, self.dist.world_size))
            batches = (features.batch(b) for b in idx.split(self.config.batch_size))
        else:
            forward, batches = self._forward, loader
        total, correct, seen = 0.0, 0, 0
        for x, y in batches:
            x, y = self._to_device(x), y.to(self.device, non_blocking=True)
            with self._autocast():
                logits = forward(x).float()
            total += self._val_criterion(logits, y).item()
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        total, correct, seen = self.dist.sum([total, correct, seen], self.device)
        return total / seen, correct / seen

    def _check_finite(self, epoch: int, val_loss: float | None) -> None:
        if val_loss is not None and not math.isfinite(val_loss):
            raise self._diverged(epoch, f"the validation loss is {val_loss}")
        bad = nonfinite_weight(self.model)
        if bad is not None:
            raise self._diverged(epoch, f"the weights hold NaN or inf ({bad})")

    def _diverged(self, epoch: int, what: str) -> TrainingError:
        fp16 = self.amp_dtype == torch.float16
        return diverged(epoch, self.phase, what, lr=self.config.lr, fp16=fp16)

    # -- helpers --------------------------------------------------------------------------------
    def _features(self, dataset: Dataset | None, split: str) -> FeatureSet | None:
        mode = self.config.cache_features
        if dataset is None:
            return None
        why = "--cache-features off" if mode == "off" else can_cache(self.model)
        if why is None:
            det = getattr(
                dataset, "deterministic", True if isinstance(dataset, TensorDataset) else None
            )
            if det is False:
                why = "augmentation needs the backbone in the loop"
            elif det is None and mode == "auto":
                why = "the dataset does not say its transform is deterministic"
        if why is not None:
            self.history.cache[split] = "off"
            if mode != "off" or split == "train":
                self.log(f"feature cache off for {split} ({self.phase} phase): {why}")
            return None
        backbone_fp = None
        if mode in ("auto", "disk") and callable(getattr(dataset, "fingerprint", None)):
            if self._backbone_fp is None:  # a disk cache key: hash the backbone once per phase
                self._backbone_fp = backbone_fingerprint(self.model)
            backbone_fp = self._backbone_fp
        fs = self.feature_pool(
            self.model,
            dataset,
            mode=mode,
            backbone_fp=backbone_fp,
            cache_dir=self.cache_dir,
            device=self.device,
            batch_size=self.config.inference_batch_size,
            num_workers=self.num_workers,
            autocast_dtype=self.precision.dtype("features"),
            on_progress=lambda done, total: self._emit("on_extract", split, done, total),
            log=self.log,
            **({"dist": self.dist} if self.dist.enabled else {}),
        )
        self.history.cache[split] = fs.source
        key = f"features_{split}_seconds"
        self.history.timings[key] = self.history.timings.get(key, 0.0) + fs.seconds
        self.log(
            f"feature cache: {split} features {tuple(fs.features.shape)} {fs.source}, {fs.precision}"
            + (f" in {fs.seconds:.1f}s ({len(fs) / fs.seconds:.1f} images/s)" if fs.seconds else "")
        )
        return fs

    def _loader(self, dataset: Dataset, **kwargs) -> DataLoader:
        kwargs.setdefault(
            "generator", torch.Generator().manual_seed(0)
        )  # keep the global RNG untouched
        return DataLoader(
            dataset,
            num_workers=self.num_workers,
            worker_init_fn=seed_worker,
            pin_memory=self.device.type == "cuda",
            **kwargs,
        )

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x

    def _autocast(self, dtype: torch.dtype | str | None = "train"):
        if isinstance(dtype, str):
            dtype = self.precision.dtype(dtype)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model on images; a frozen backbone runs in the feature pass's precision, as cached."""
        if can_cache(self.model) is not None:
            return self._whole(x)
        with self._autocast("features"):
            f = self.model.features(x)
        return self._head(f.float())

    def _denominator(self, batch: torch.Tensor) -> tuple[float, int]:
        """What the mean training loss of a global batch divides by, and the batch's size."""
        weight = self.criterion.weight
        if weight is None:
            return float(len(batch)), len(batch)
        return float(weight.cpu()[self._targets[batch]].sum()), len(batch)

    def _my_share(self, dataset: Dataset) -> Dataset:
        """This rank's contiguous share of `dataset` (the whole of it in one process)."""
        if not self.dist.enabled:
            return dataset
        return Subset(
            dataset, range(*shard_bounds(len(dataset), self.dist.rank, self.dist.world_size))
        )

    def _check_shards(self, n: int) -> None:
        """Images through the DataLoader: every rank needs at least one image of every batch."""
        last = n % self.config.batch_size
        if self.dist.enabled and 0 < last < self.dist.world_size:
            raise ConfigError(
                f"the last batch of {n} training images has {last} image(s) for "
                f"{self.dist.world_size} processes; choose a --batch-size that leaves at least one "
                "per process, or use fewer processes"
            )

    @property
    def _maximise(self) -> bool:
        """Whether the monitored metric improves upwards (accuracy) rather than down (a loss)."""
        return self._monitor == "val_accuracy"

    def _monitored(self, record: EpochRecord) -> float:
        return getattr(record, self._monitor)

    def _update_best(self, record: EpochRecord) -> bool:
        value = self._monitored(record)
        better = self.best_value is None or (
            value > self.best_value if self._maximise else value < self.best_value
        )
        if better:
            self.best_value, self.history.best_epoch = value, record.epoch
        return better

    def _restore(self, state: dict) -> None:
        self.epoch, self.phase, self.stop = state["epoch"], state["phase"], state["stop"]
        self.best_value = state["best_value"]
        self.history = History.from_dict(state["history"])
        set_rng_state(state["rng"], shuffle=self._shuffle, loader=self._loader_rng)
        saved = state.get("callbacks", {})
        for i, cb in enumerate(self.callbacks):
            key = f"{i}:{type(cb).__name__}"
            if key in saved and hasattr(cb, "load_state_dict"):
                cb.load_state_dict(saved[key])

    def _emit(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(self, *args)


def _targets(dataset: Dataset) -> list[int]:
    """Class index per item, without loading images when the dataset lists them."""
    if hasattr(dataset, "targets"):
        return [int(t) for t in dataset.targets]
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].tolist()
    return [int(dataset[i][1]) for i in range(len(dataset))]
