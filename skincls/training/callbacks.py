"""Trainer callbacks: best weights, early stopping, checkpoints, history files and progress display.

Each is a small object with some of the `Callback` hooks; the trainer calls them in list order, so put
`EarlyStopping` before `ModelCheckpoint` (the saved state then knows the phase has stopped).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..config import TrainConfig
from ..errors import ConfigError
from ..models.checkpoint import ModelSnapshot, snapshot_model, snapshot_state
from .history import EpochRecord, History

__all__ = [
    "BestWeights",
    "Callback",
    "EarlyStopping",
    "HistoryWriter",
    "ModelCheckpoint",
    "RichProgress",
    "callback_states",
    "check_state_keys",
    "load_callback_states",
    "state_key",
]

log = logging.getLogger(__name__)


class Trainer(Protocol):
    """What a callback may use of the trainer that calls it (so callbacks need not import the trainer)."""

    model: torch.nn.Module
    config: TrainConfig
    history: History
    epoch: int
    phase: str
    stop: bool

    def state_dict(self) -> dict[str, Any]: ...


class Callback:
    """Hooks the trainer calls (all optional); `state_dict`/`load_state_dict` make a callback resumable.

    A resumable callback's state is saved under its `state_key` (default: the class name), so it
    finds its way back on resume even if the callback list has changed; two resumable callbacks of
    one trainer need different keys (e.g. a `state_key` property naming what each watches).
    """

    @property
    def state_key(self) -> str:
        """The name this callback's state is saved under in a checkpoint (unique per trainer)."""
        return type(self).__name__

    def on_fit_start(self, trainer: Trainer) -> None: ...
    def on_phase_start(self, trainer: Trainer, phase: str, first: int, last: int) -> None: ...
    def on_extract(self, trainer: Trainer, split: str, done: int, total: int) -> None: ...
    def on_epoch_start(self, trainer: Trainer, epoch: int, batches: int) -> None: ...
    def on_batch_end(self, trainer: Trainer, loss: float, accuracy: float) -> None: ...
    def on_epoch_end(self, trainer: Trainer, record: EpochRecord, improved: bool) -> None: ...
    def on_fit_end(self, trainer: Trainer, history: History) -> None: ...
    def on_fit_error(self, trainer: Trainer, error: BaseException) -> None: ...
    def on_message(self, trainer: Trainer, message: str) -> None: ...


def state_key(callback: Any) -> str:
    """The key a callback's state is saved under: its `state_key`, by default its class name."""
    return getattr(callback, "state_key", None) or type(callback).__name__


def check_state_keys(callbacks: list[Any]) -> list[Any]:
    """Return `callbacks`; refuse two resumable ones with the same `state_key` (whose state would mix).

    Raises:
        ConfigError: two callbacks with a `state_dict` share a key.
    """
    seen: dict[str, Any] = {}
    for cb in callbacks:
        if not hasattr(cb, "state_dict"):
            continue
        key = state_key(cb)
        if key in seen:
            raise ConfigError(
                f"two callbacks save their state under the key {key!r} ({type(seen[key]).__name__} "
                f"and {type(cb).__name__}); give one of them another state_key, so that a resumed "
                "run gives each its own state"
            )
        seen[key] = cb
    return callbacks


def callback_states(callbacks: list[Any]) -> dict[str, Any]:
    """The resumable callbacks' states, each under its `state_key` (a reordered list still matches)."""
    check_state_keys(callbacks)
    return {state_key(cb): cb.state_dict() for cb in callbacks if hasattr(cb, "state_dict")}


def load_callback_states(callbacks: list[Any], saved: dict[str, Any]) -> None:
    """Give each callback its state from `callback_states` output, found by its `state_key`.

    Checkpoints from before state keys saved states as `"{position}:{class}"`: such a state goes to
    the callback of that class where only one saved state has the class, else to the callback of
    that class at that position. A saved state that no callback takes is logged as a warning.
    """
    legacy = _legacy_keys(saved)
    taken = set()
    for i, cb in enumerate(callbacks):
        if not hasattr(cb, "load_state_dict"):
            continue
        name = type(cb).__name__
        for key in (state_key(cb), legacy.get(name), f"{i}:{name}"):
            if key in saved and key not in taken:
                cb.load_state_dict(saved[key])
                taken.add(key)
                break
    for key in sorted(saved.keys() - taken):
        log.warning(
            "resuming: the saved state of callback %r matches no callback of this run (removed or "
            "renamed since the checkpoint was written?); it is not used",
            key,
        )


_POSITIONAL = re.compile(r"(\d+):(.+)")  # the keys of checkpoints from before `state_key`


def _legacy_keys(saved: dict[str, Any]) -> dict[str, str]:
    """Class name → its positional key `"{i}:{class}"`, for each class that has only one."""
    found = [(m[2], key) for key in saved if (m := _POSITIONAL.fullmatch(key))]
    counts = Counter(name for name, _ in found)
    return {name: key for name, key in found if counts[name] == 1}


class BestWeights(Callback):
    """Keeps a CPU copy of the weights of the best epoch in `state`."""

    def __init__(self):
        self.state: dict[str, torch.Tensor] | None = None

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord, improved: bool) -> None:
        if improved:
            self.state = {
                k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()
            }


class EarlyStopping(Callback):
    """Ends a phase after `patience` epochs without improvement of the trainer's monitored metric."""

    def __init__(self, patience: int):
        self.patience = patience
        self.wait = 0

    def on_phase_start(self, trainer: Trainer, phase: str, first: int, last: int) -> None:
        if trainer.epoch < first:  # a new phase (not a resumed one) gets the full patience
            self.wait = 0

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord, improved: bool) -> None:
        self.wait = 0 if improved else self.wait + 1
        if self.wait >= self.patience:
            trainer.stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.wait = int(state["wait"])


class ModelCheckpoint(Callback):
    """Writes `best.pt` (the best epoch by the monitored metric) and `last.pt` (with resume state).

    Args:
        run_dir: Folder for the two files.
        save: `save(path, snapshot, extra, training_state)` writes one checkpoint atomically, e.g.
            with `save_checkpoint`; `snapshot` is the model's `ModelSnapshot` (CPU weights, config,
            preprocessing) taken at the epoch's end, `extra` holds the epoch and its metrics,
            `training_state` the trainer's state (None for best.pt).
        last: Also write `last.pt`, so that `resume=True` can continue the run.
        background: Write from a thread while the next epoch trains (the next write, the end of
            `fit` and a crash all wait for it); the snapshot and training state are then CPU copies
            that training cannot change. Writing a VGG head's 1.4 GB `last.pt` otherwise costs
            seconds per epoch.
        interval: With `last`, write at an epoch's end only once `interval` seconds have passed
            since the previous write (and always when `fit` ends): a killed run then resumes from at
            most that much training ago (plus the epoch in progress). A better epoch in between is
            kept in memory and written to `best.pt` with the next `last.pt`, so the two files never
            disagree. 0: both files at every epoch's end.
        clock: Seconds, monotonic (for tests).
    """

    def __init__(
        self,
        run_dir: str | Path,
        save: Callable[[Path, ModelSnapshot, dict[str, Any], dict[str, Any] | None], None],
        *,
        last: bool = True,
        background: bool = False,
        interval: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.run_dir = Path(run_dir)
        self.save = save
        self.last = last
        self.background = background
        self.interval = interval if last else 0.0
        self.clock = clock
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._since = clock()
        self._best: tuple[ModelSnapshot, dict[str, Any]] | None = None  # not on disk yet
        self._unsaved: dict[str, Any] | None = None  # the ended epoch whose files are not written

    def on_fit_start(self, trainer: Trainer) -> None:
        self._since = self.clock()

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord, improved: bool) -> None:
        if not (improved or self.last):
            return
        extra = _epoch_fields(record, trainer.history)
        due = self.interval <= 0 or self.clock() - self._since >= self.interval
        if improved and not due:  # training goes on mutating the weights: keep a copy
            self._best = (snapshot_model(trainer.model, copy_weights=True), extra)
        self._unsaved = extra
        if due:
            self._flush(trainer, extra, improved)

    def _flush(self, trainer: Trainer, extra: dict[str, Any], improved: bool) -> None:
        """Write the pending best epoch (or this one, if it improved) and this epoch's `last.pt`."""
        self._wait()
        # One CPU snapshot for both files; in the background a copy, as training goes on mutating
        # the live weights and optimizer state.
        snapshot = snapshot_model(trainer.model, copy_weights=self.background)
        jobs = []
        if improved:
            jobs.append((self.run_dir / "best.pt", snapshot, extra, None))
        elif self._best is not None:
            jobs.append((self.run_dir / "best.pt", *self._best, None))
        if self.last:
            state = trainer.state_dict()
            state = snapshot_state(state) if self.background else state
            jobs.append((self.run_dir / "last.pt", snapshot, extra, state))
        self._best = self._unsaved = None
        self._since = self.clock()
        if not self.background:
            self._write(jobs)
            return
        self._thread = threading.Thread(target=self._write, args=(jobs,), daemon=True)
        self._thread.start()

    def _write(self, jobs: list) -> None:
        try:
            for path, snapshot, extra, state in jobs:
                self.save(path, snapshot, extra, state)
        except BaseException as exc:
            if not self.background:
                raise
            self._error = exc

    def _wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def on_fit_end(self, trainer: Trainer, history: History) -> None:
        if self._unsaved is not None:  # the last epochs' files (a held-back best), at the end
            self._flush(trainer, self._unsaved, improved=False)
        self._wait()

    def on_fit_error(self, trainer: Trainer, error: BaseException) -> None:
        if self._thread is not None:  # finish the completed epochs' files before dying
            self._thread.join()
            self._thread = None
        if self._best is not None and self._error is None:  # a completed epoch's copy: keep it
            best, self._best = self._best, None
            self._write([(self.run_dir / "best.pt", *best, None)])


def _epoch_fields(record: EpochRecord, history: History) -> dict[str, Any]:
    """A checkpoint's fields about the epoch it comes from: number, phase, precision, metrics."""
    return {
        "epoch": record.epoch,
        "phase": record.phase,
        "precision": history.precision,  # what each phase ran in (PrecisionPlan)
        "metrics": {
            "train": {"loss": record.train_loss, "accuracy": record.train_accuracy},
            "val": {"loss": record.val_loss, "accuracy": record.val_accuracy},
        },
    }


class HistoryWriter(Callback):
    """Writes `history.json`/`history.csv` after every epoch and a training-curve PNG at the end.

    The final `history.json` also holds `wall_seconds`, the time `fit` took (of this session, when
    resumed).
    """

    def __init__(self, run_dir: str | Path, plot: bool = True):
        self.run_dir = Path(run_dir)
        self.plot = plot
        self._start = time.perf_counter()

    def on_fit_start(self, trainer: Trainer) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord, improved: bool) -> None:
        trainer.history.save(self.run_dir)

    def on_fit_end(self, trainer: Trainer, history: History) -> None:
        history.save(self.run_dir, wall_seconds=time.perf_counter() - self._start)
        if self.plot and history.epochs:
            from .plots import plot_history

            plot_history(history, self.run_dir / "training_curves.png")


class RichProgress(Callback):
    """Progress bars for feature extraction, epochs and batches (ETA, loss, accuracy) and log lines."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.bar: Progress | None = None
        self._loss = self._acc = 0.0
        self._seen = 0

    def on_fit_start(self, trainer: Trainer) -> None:
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            transient=True,
        )
        self.bar.start()
        total = trainer.config.epochs + trainer.config.finetune_epochs
        self.epochs = self.bar.add_task("epochs", total=total, completed=trainer.epoch, info="")
        self.batches = self.bar.add_task("batches", total=None, info="")

    def on_extract(self, trainer: Trainer, split: str, done: int, total: int) -> None:
        self.bar.update(
            self.batches, description=f"features ({split})", completed=done, total=total, info=""
        )

    def on_epoch_start(self, trainer: Trainer, epoch: int, batches: int) -> None:
        self._loss = self._acc = 0.0
        self._seen = 0
        self.bar.reset(self.batches, total=batches, description=f"epoch {epoch} ({trainer.phase})")

    def on_batch_end(self, trainer: Trainer, loss: float, accuracy: float) -> None:
        self._seen += 1
        self._loss += (loss - self._loss) / self._seen
        self._acc += (accuracy - self._acc) / self._seen
        info = f"train_loss {self._loss:.4f} train_acc {self._acc:.3f}"
        self.bar.update(self.batches, advance=1, info=info)

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord, improved: bool) -> None:
        self.bar.advance(self.epochs)
        line = (
            f"epoch {record.epoch} ({record.phase}): train_loss {record.train_loss:.4f} "
            f"train_acc {record.train_accuracy:.3f}"
        )
        if record.val_loss is not None:
            line += f" val_loss {record.val_loss:.4f} val_acc {record.val_accuracy:.3f}"
        # soft_wrap: one line per epoch off a terminal too (rich would wrap at 80 columns there)
        self.console.print(
            line + f" [{record.seconds:.1f}s]" + (" *" if improved else ""), soft_wrap=True
        )

    def on_message(self, trainer: Trainer, message: str) -> None:
        self.console.print(f"[dim]{message}[/]", soft_wrap=True)

    def on_fit_end(self, trainer: Trainer, history: History) -> None:
        if self.bar is not None:
            self.bar.stop()

    def on_fit_error(self, trainer: Trainer, error: BaseException) -> None:
        self.on_fit_end(trainer, trainer.history)
