"""Trainer: fits a model on a training set, validating each epoch. It knows neither skin nor any model class.

The loop optimises and measures (its inner loops are in `steps`); checkpoints, early stopping,
progress and history files are callbacks (`callbacks`). What it needs to know of the model, the model
says through optional methods (`contract`): its parameter groups, what each phase freezes, a frozen
feature extractor whose features are computed once (`features`) when the training images are not
augmented, and how a batch maps to its inputs. An optional second phase fine-tunes what the first
kept frozen.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..config import TrainConfig
from ..errors import ConfigError, TrainingError
from ..runtime import (
    describe_device,
    get_rng_state,
    plan_precision,
    resolve_device,
    seed_everything,
    set_rng_state,
)
from .callbacks import (
    BestWeights,
    Callback,
    callback_states,
    check_state_keys,
    load_callback_states,
)
from .contract import (
    Phase,
    batch_splitter,
    cache_split,
    freeze_for,
    param_groups_for,
    plan_phases,
    split_batch,
)
from .distributed import Dist, shard_bounds
from .divergence import diverged, nonfinite_weight
from .ema import WeightEMA
from .features import FeatureSet, backbone_fingerprint, cache_refusal, load_or_extract
from .history import BestTracker, EpochRecord, History
from .mixup import mixed_shares
from .optim import build_losses, build_phase_optimization
from .steps import (
    Placement,
    ReplayBatches,
    batch_denominator,
    class_targets,
    train_epoch,
    validate,
)

__all__ = ["Callback", "EpochRecord", "History", "Trainer"]


class Trainer:
    """Supervised training with cross-entropy; the defaults are the original recipe (Adam 1e-3, batch 20).

    Args:
        model: A classifier returning logits. Optional methods (`contract`) tell the trainer its
            parameter groups, what each phase freezes (needed for `finetune_epochs`), a frozen
            feature extractor to cache, and how a batch maps to its inputs; a plain `nn.Module`
            trains whole, in one group, on `(inputs..., target)` batches. `SkinClassifier` has them.
        config: The optimisation recipe.
        callbacks: Objects with any of the `Callback` hooks, called in order. Default: keep the
            best weights in memory (`BestWeights`). Two resumable callbacks (with a `state_dict`)
            must have different `state_key`s (ConfigError).
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
        self._place = Placement(self.device, self.amp_dtype)
        self.history = History(monitor=self.config.monitor)
        self.epoch = 0  # last completed epoch
        self.phase = ""
        self.stop = False  # set by a callback (early stopping) to end the current phase
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None
        self.scaler = None
        self._shuffle = torch.Generator()
        self._loader_rng = torch.Generator()
        self._mix = torch.Generator()  # mixup's coefficients and partners
        self._resume: dict | None = None
        # The EpochRecord field that decides `improved` and steps a plateau schedule (set by `fit`).
        self._best = BestTracker(self.config.monitor)
        self._backbone_fp: str | None = None  # the current phase's, computed when first needed
        self._split_batch = batch_splitter(model)
        # The current phase's split of the model (`split_for_cache`), and its extractor while frozen:
        # then it runs outside what trains (the rest), in the feature precision, as it was cached.
        self._split: tuple[nn.Module, nn.Module] | None = None
        self._extractor: nn.Module | None = None
        self._rest: nn.Module | None = None  # what trains after a frozen extractor (DDP-wrapped)
        self._whole: nn.Module = model  # what trains otherwise (DDP-wrapped)
        self._when = "none"  # when the phase's scheduler steps
        # The weights' moving average: validated, and what callbacks (checkpoints) see.
        self.ema = WeightEMA(self.config.ema_decay) if self.config.ema_decay > 0 else None

    @property
    def callbacks(self) -> list[Callback]:
        return self._callbacks

    @callbacks.setter
    def callbacks(self, callbacks: Sequence[Callback]) -> None:
        self._callbacks = check_state_keys(list(callbacks))  # each state needs its own key

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue after the last completed epoch (not the model's weights)."""
        return {
            "epoch": self.epoch,
            "phase": self.phase,
            "stop": self.stop,
            "best_value": self._best.value,
            "history": self.history.to_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": get_rng_state(shuffle=self._shuffle, loader=self._loader_rng, mix=self._mix),
            "callbacks": callback_states(self.callbacks),
            "ema": self.ema.state_dict() if self.ema is not None else None,
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
        # Conv weights in channels_last: faster convolutions on CPU and GPU.
        self.model.to(self.device).to(memory_format=torch.channels_last)
        self._best.monitor = cfg.monitor if val is not None else "train_loss"
        self._split_batch = batch_splitter(self.model)
        targets = class_targets(train, self._split_batch)
        num_classes = len(getattr(train, "classes", [])) or int(max(targets)) + 1
        losses = build_losses(cfg, targets, num_classes, self.device)
        self.criterion, self._sum_criterion = losses.train, losses.summed
        self._val_criterion, sample_weights = losses.val, losses.sample_weights
        self._targets = torch.as_tensor(targets)
        self._mix.manual_seed(cfg.seed + 2)  # a checkpoint from before mixup existed has no state
        if self._resume is None:
            seed_everything(cfg.seed)
            self._shuffle.manual_seed(cfg.seed)
            self._loader_rng.manual_seed(cfg.seed + 1)
        else:
            self._restore(self._resume)
        self.history.monitor = self._best.monitor  # what picks the best epoch, as monitored
        self.history.precision = self.precision.to_dict()
        self.log(describe_device(self.device, self.precision))
        if self.ema is not None:
            self.log(
                f"weight EMA (decay {self.ema.decay:g}): validated and checkpointed instead of "
                "the raw weights"
            )
        self._emit("on_fit_start")
        try:
            for phase in plan_phases(cfg, self.model):
                if phase.last <= self.epoch or (phase.name == self.phase and self.stop):
                    continue
                self._run_phase(phase, train, val, sample_weights)
        except BaseException as exc:
            self._emit("on_fit_error", exc)
            raise
        self._resume = None
        self._emit("on_fit_end", self.history)
        return self.history

    # -- one phase: freeze → caches → optimization → wrap → epochs -------------------------------
    def _run_phase(self, phase: Phase, train: Dataset, val: Dataset | None, sample_weights) -> None:
        resuming = self._freeze(phase)
        data = self._caches(train, val)
        self._optimization(phase, len(train), resuming)
        self._wrap()
        self._emit("on_phase_start", phase.name, phase.first, phase.last)
        for epoch in range(max(phase.first, self.epoch + 1), phase.last + 1):
            if self._epoch(phase, epoch, data, sample_weights):
                break
        self._resume = None

    def _freeze(self, phase: Phase) -> bool:
        """Let the model freeze what `phase` freezes; whether the phase resumes a saved state."""
        freeze_for(self.model, phase)
        resuming = self._resume is not None and self._resume["phase"] == phase.name
        self.phase, self.stop = phase.name, False
        self._backbone_fp = None  # the extractor may have changed (fine-tuned, unfrozen)
        self._split = cache_split(self.model)
        frozen = self._split is not None and not any(
            p.requires_grad for p in self._split[0].parameters()
        )
        self._extractor = self._split[0] if frozen else None
        return resuming

    def _caches(self, train: Dataset, val: Dataset | None) -> _PhaseData:
        """The phase's data: cached features where they can be, else loaders of the datasets."""
        cfg = self.config
        data = _PhaseData(train, val, self._features(train, "train"))
        data.val_fs = self._features(val, "val") if val is not None else None
        if data.train_fs is None:
            self.dist.check_last_batch(len(train), cfg.batch_size)
            data.loader = self._place.loader(
                train, self.num_workers, batch_sampler=data.sampler, generator=self._loader_rng
            )
        if val is not None and data.val_fs is None:
            data.val_loader = self._place.loader(
                self.dist.share(val), self.num_workers, batch_size=cfg.batch_size
            )
        return data

    def _optimization(self, phase: Phase, n_train: int, resuming: bool) -> None:
        """The phase's optimizer over the model's parameter groups, its schedule and fp16 scaler."""
        cfg = self.config
        opt = build_phase_optimization(
            param_groups_for(self.model, phase),
            cfg,
            epochs=phase.last - phase.first + 1,
            steps_per_epoch=math.ceil(n_train / cfg.batch_size),
            maximise=self._best.maximise,
            fp16_on=self.device if self.amp_dtype == torch.float16 else None,
            resume=self._resume if resuming else None,
        )
        self.optimizer, self.scheduler, self.scaler = opt.optimizer, opt.scheduler, opt.scaler
        self._when = opt.when

    def _wrap(self) -> None:
        """What trains: the rest after a frozen extractor (on cached features or in the loop), or
        the whole model; in DistributedDataParallel when distributed (rebuilt per phase: freezing
        changes what trains)."""
        self._rest, self._whole = None, self.model
        if self._extractor is not None:
            self._rest = self.dist.wrap(self._split[1], self.device)
        else:
            self._whole = self.dist.wrap(self.model, self.device)

    def _epoch(self, phase: Phase, epoch: int, data: _PhaseData, sample_weights) -> bool:
        """Train and validate one epoch, tell the callbacks; whether the phase stops here."""
        start = time.perf_counter()
        global_batches, mixes = self._draw_batches(len(data.train), sample_weights, data.sampler)
        lr = self.optimizer.param_groups[0]["lr"]
        self._emit("on_epoch_start", epoch, len(data.sampler))
        self._use_weights("raw")
        self.model.train()
        train_loss, train_acc = self._train_epoch(data, global_batches, epoch, mixes)
        self._use_weights("ema")  # validated, and what the callbacks see and save
        val_loss = val_acc = None
        if data.val is not None:
            val_loss, val_acc = self._validate(data.val_fs, data.val_loader)
        # Before any callback sees the epoch: a diverged model must never become best.pt/last.pt.
        self._check_finite(epoch, val_loss)
        record = EpochRecord(
            epoch, phase.name, train_loss, train_acc, val_loss, val_acc, lr,
            time.perf_counter() - start,
        )  # fmt: skip
        improved = self._best.update(record)
        if improved:
            self.history.best_epoch = epoch
        if self._when == "epoch":
            self.scheduler.step(self._best.of(record))
        self.epoch = epoch
        self.history.epochs.append(record)
        self._emit("on_epoch_end", record, improved)
        self.stop = bool(self.dist.broadcast(self.stop))  # rank 0's decision, on every rank
        if self.stop:
            self.history.stopped_early.append(phase.name)
            self.log(f"early stop: {phase.name} phase ended after epoch {epoch}")
        return self.stop

    def _draw_batches(
        self, n: int, sample_weights, sampler: ReplayBatches
    ) -> tuple[list[torch.Tensor], list[tuple[float, torch.Tensor]] | None]:
        """The epoch's global batches (and mixup's pairs); this rank's shares go to `sampler`."""
        cfg = self.config
        if sample_weights is None:
            order = torch.randperm(n, generator=self._shuffle)
        else:
            order = torch.multinomial(sample_weights, n, True, generator=self._shuffle)
        global_batches = list(order.split(cfg.batch_size))
        mixes = None
        if cfg.mixup:
            sampler.batches, mixes = mixed_shares(
                cfg.mixup, global_batches, self._mix, self.dist.rank, self.dist.world_size
            )
        else:
            sampler.batches = [self.dist.shard(b.tolist()) for b in global_batches]
        return global_batches, mixes

    def _train_epoch(
        self,
        data: _PhaseData,
        global_batches: list[torch.Tensor],
        epoch: int,
        mixes: list[tuple[float, torch.Tensor]] | None = None,
    ) -> tuple[float, float]:
        world = self.dist.world_size
        denominators = [
            batch_denominator(self.criterion.weight, self._targets, b) for b in global_batches
        ]

        def loss(i: int, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            if world == 1:
                return self.criterion(logits, y)
            # DDP averages the ranks' gradients: scale the share's sum to the global batch's mean.
            # (Mixup's permuted labels have the same denominator: the same labels, reordered.)
            return self._sum_criterion(logits, y) * (world / denominators[i][0])

        def weight(
            i: int, n: int
        ) -> float:  # this share's part of (batch loss × global batch size)
            return n if world == 1 else denominators[i][1] / world

        if data.train_fs is not None:  # (features, targets): the rest of the model trains on them
            forward, split = self._rest, split_batch
            batches = (
                data.train_fs.batch(torch.tensor(b, dtype=torch.long)) for b in data.sampler.batches
            )
        else:
            forward, batches, split = self._forward, data.loader, self._split_batch
        total, correct, seen = train_epoch(
            forward,
            (b for b, _ in zip(batches, denominators, strict=True)),
            loss=loss,
            weight=weight,
            optimizer=self.optimizer,
            place=self._place,
            split=split,
            scaler=self.scaler,
            after_step=self._after_step,
            on_batch_end=lambda loss, acc: self._emit("on_batch_end", loss, acc),
            diverged=partial(self._diverged, epoch),
            mixes=mixes,
        )
        total, correct, seen = self.dist.sum([total, correct, seen], self.device)
        return total / seen, correct / seen

    def _after_step(self) -> None:
        if self._when == "step":
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)

    def _use_weights(self, which: str) -> None:
        """With a weight EMA: put the "raw" (to train) or the "ema" weights into the model."""
        if self.ema is not None:
            self.ema.use(self.model, which)

    def _validate(
        self, features: FeatureSet | None, loader: DataLoader | None
    ) -> tuple[float, float]:
        self.model.eval()
        if features is not None:
            forward, split = self._split[1], split_batch
            idx = torch.arange(*shard_bounds(len(features), self.dist.rank, self.dist.world_size))
            batches = (features.batch(b) for b in idx.split(self.config.batch_size))
        else:
            forward, batches, split = self._forward, loader, self._split_batch
        total, correct, seen = validate(
            forward, batches, criterion=self._val_criterion, place=self._place, split=split
        )
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
        why = cache_refusal(self._split[0] if self._split else None, dataset, mode)
        if why is not None:
            self.history.cache[split] = "off"
            if mode != "off" or split == "train":
                self.log(f"feature cache off for {split} ({self.phase} phase): {why}")
            return None
        backbone_fp = None
        if mode in ("auto", "disk") and callable(getattr(dataset, "fingerprint", None)):
            if self._backbone_fp is None:  # a disk cache key: hash the extractor once per phase
                self._backbone_fp = backbone_fingerprint(self._extractor)
            backbone_fp = self._backbone_fp
        custom_split = self._split_batch is not split_batch
        fs = self.feature_pool(
            self._extractor,
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
            **({"split_batch": self._split_batch} if custom_split else {}),
        )
        self.history.cache[split] = fs.source
        key = f"features_{split}_seconds"
        self.history.timings[key] = self.history.timings.get(key, 0.0) + fs.seconds
        self.log(
            f"feature cache: {split} features {tuple(fs.features.shape)} {fs.source}, {fs.precision}"
            + (f" in {fs.seconds:.1f}s ({len(fs) / fs.seconds:.1f} images/s)" if fs.seconds else "")
        )
        return fs

    def _autocast(self, dtype: torch.dtype | str | None = "train"):
        if isinstance(dtype, str):
            dtype = self.precision.dtype(dtype)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def _forward(self, *args, **kwargs) -> torch.Tensor:
        """The model on a batch's inputs; a frozen extractor runs in the feature pass's precision,
        as cached."""
        if self._extractor is None:
            return self._whole(*args, **kwargs)
        with self._autocast("features"):
            f = self._extractor(*args, **kwargs)
        return self._rest(f.float())

    def _restore(self, state: dict) -> None:
        self.epoch, self.phase, self.stop = state["epoch"], state["phase"], state["stop"]
        self._best.value = state["best_value"]
        self.history = History.from_dict(state["history"])
        set_rng_state(state["rng"], shuffle=self._shuffle, loader=self._loader_rng, mix=self._mix)
        load_callback_states(self.callbacks, state.get("callbacks", {}))
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"], self.device)

    def _emit(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(self, *args)


@dataclass
class _PhaseData:
    """What a phase trains and validates on: cached features, or the datasets through loaders."""

    train: Dataset
    val: Dataset | None
    train_fs: FeatureSet | None = None
    val_fs: FeatureSet | None = None
    loader: DataLoader | None = None  # replays `sampler`'s batches
    val_loader: DataLoader | None = None
    sampler: ReplayBatches = field(default_factory=ReplayBatches)
