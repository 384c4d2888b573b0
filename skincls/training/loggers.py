"""Loggers: a run's per-epoch metrics for experiment trackers (TensorBoard, MLflow), as callbacks.

The run dir's own history files (`history.json`/`history.csv`, the `csv` logger: `HistoryWriter`)
are always written; `create_loggers` adds the trackers that `logging.loggers` names. Their packages are
optional extras, imported only when chosen. A tracker opens at the first epoch's end, so a run that
fails before any epoch ended leaves nothing behind; a resumed run continues what it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write
from ..config import LoggerConfig, RunConfig
from ..config_file import one_line
from ..errors import ConfigError, TrainingError, opt
from .callbacks import Callback, HistoryWriter, Trainer
from .history import EpochRecord, History

__all__ = [
    "TRACKING_FILES",
    "CSVLogger",
    "Logger",
    "MLflowLogger",
    "TensorBoardLogger",
    "check_loggers",
    "create_loggers",
    "epoch_metrics",
    "flatten_config",
    "remove_tracking_files",
]

CSVLogger = HistoryWriter
"""The `csv` logger: history.json/history.csv in the run dir (what `skincls runs` reads)."""

MLFLOW_RUN = "mlflow_run.json"  # which MLflow run a run dir's metrics go to (for resume=True)
TRACKING_FILES = ("tensorboard", "mlruns", MLFLOW_RUN)
"""What the trackers write into a run dir by default (what `overwrite=True` removes with the run)."""


def epoch_metrics(record: EpochRecord) -> dict[str, float]:
    """One epoch's scalars under tracker names (`train/loss`, `val/accuracy`, `lr`...); no val: none."""
    metrics = {
        "train/loss": record.train_loss,
        "train/accuracy": record.train_accuracy,
        "val/loss": record.val_loss,
        "val/accuracy": record.val_accuracy,
        "lr": record.lr,
        "epoch_seconds": record.seconds,
    }
    return {k: float(v) for k, v in metrics.items() if v is not None}


def flatten_config(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A resolved config as flat `section.key` → text (lists and None as JSON): MLflow's params."""
    out: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return out


class Logger(Callback):
    """A tracker: `open` at the first epoch's end, `log_metrics` per epoch, `close` when `fit` ends.

    Subclasses implement the three; `open` returns the last epoch the tracker already holds (0 for
    a new one), and the epochs of the trainer's history after it are logged (a resumed run's
    earlier epochs, when the tracker starts only now). Put loggers after `ModelCheckpoint`: they
    may read the files it writes at the end.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.resumed_from = 0  # the checkpoint's epoch when `fit` continues a run
        self.opened = False

    def open(self, trainer: Trainer) -> int:
        raise NotImplementedError

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def close(self, trainer: Trainer, status: str) -> None:
        """End the tracker's run; `status` is FINISHED, FAILED or KILLED."""

    def on_fit_start(self, trainer: Trainer) -> None:
        self.resumed_from = trainer.epoch

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord, improved: bool) -> None:
        if not self.opened:
            held = self.open(trainer)
            self.opened = True
            for earlier in trainer.history.epochs[:-1]:
                if earlier.epoch > held:
                    self.log_metrics(epoch_metrics(earlier), earlier.epoch)
        self.log_metrics(epoch_metrics(record), record.epoch)

    def on_fit_end(self, trainer: Trainer, history: History) -> None:
        if self.opened:
            self.opened = False
            self.close(trainer, "FINISHED")

    def on_fit_error(self, trainer: Trainer, error: BaseException) -> None:
        if not self.opened:
            return
        self.opened = False
        try:  # the training error is what matters: a tracker failing now must not hide it
            self.close(trainer, "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        except Exception as exc:
            trainer.log(f"{type(self).__name__}: could not close ({one_line(exc)})")


class TensorBoardLogger(Logger):
    """Scalars per epoch (train/val loss and accuracy, lr) in `RUNDIR/tensorboard`.

    It rewrites the whole history when it opens, hiding (TensorBoard's `purge_step`) what an earlier
    session of the run wrote: a resumed run's curves show each epoch once, as in history.csv.
    """

    def __init__(self, run_dir: str | Path):
        super().__init__(run_dir)
        self._writer_class = _import_tensorboard()
        self.writer = None

    def open(self, trainer: Trainer) -> int:
        self.writer = self._writer_class(log_dir=str(self.run_dir / "tensorboard"), purge_step=1)
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, global_step=step)
        self.writer.flush()  # TensorBoard shows each epoch as it ends

    def close(self, trainer: Trainer, status: str) -> None:
        self.writer.close()


class MLflowLogger(Logger):
    """An MLflow run: the config as params, per-epoch metrics (step = epoch), the best epoch's
    metrics and `best.pt` with the run's JSON files as artifacts at the end.

    The run's id is kept in `RUNDIR/mlflow_run.json`: a resumed run continues the same MLflow run
    (in the store where it started).

    Args:
        run_dir: The run dir.
        params: The resolved config, flattened (`flatten_config`).
        uri: The tracking store; None: `$MLFLOW_TRACKING_URI`, else an SQLite store in
            `RUNDIR/mlruns` (with the artifacts beside it).
        experiment: The MLflow experiment; None: `$MLFLOW_EXPERIMENT_NAME`, else "skincls".
    """

    def __init__(
        self,
        run_dir: str | Path,
        params: dict[str, str],
        uri: str | None = None,
        experiment: str | None = None,
    ):
        super().__init__(run_dir)
        self.mlflow = _import_mlflow()
        self.params = params
        self.uri = uri
        self.experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "skincls"
        self.client = None
        self.run_id: str | None = None

    def open(self, trainer: Trainer) -> int:
        recorded = self._recorded() if self.resumed_from else None
        if recorded is not None and self._continue(trainer, recorded):
            return self.resumed_from
        uri, folder = self._store()
        with self._errors(f"cannot start a run in the MLflow store {uri}", ConfigError):
            self.client = self.mlflow.MlflowClient(tracking_uri=uri)
            experiment = self._experiment(folder)
            run = self.client.create_run(
                experiment,
                run_name=self.run_dir.name,
                tags={"skincls.run_dir": str(self.run_dir.resolve())},
            )
            self.run_id = run.info.run_id
            self._log_params(self.params)
        with atomic_write(self.run_dir / MLFLOW_RUN, "w") as fh:
            json.dump({"tracking_uri": uri, "run_id": self.run_id}, fh, indent=2)
            fh.write("\n")
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        batch = [self.mlflow.entities.Metric(k, v, now, step) for k, v in metrics.items()]
        with self._errors(f"could not log epoch {step}'s metrics"):
            self.client.log_batch(self.run_id, metrics=batch)

    def close(self, trainer: Trainer, status: str) -> None:
        with self._errors("could not finish the run"):
            if status == "FINISHED":
                self._log_outcome(trainer.history)
            self.client.set_terminated(self.run_id, status)

    # -- helpers ----------------------------------------------------------------------------------
    def _store(self) -> tuple[str, Path | None]:
        """The tracking URI, and the run dir's own store folder when it is the default."""
        uri = self.uri or os.environ.get("MLFLOW_TRACKING_URI")
        if uri:
            return uri, None
        folder = (self.run_dir / "mlruns").resolve()
        folder.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{folder / 'mlflow.db'}", folder

    def _experiment(self, folder: Path | None) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        # The run dir's store keeps its artifacts beside it (MLflow's default: ./mlruns of the cwd).
        location = (folder / "artifacts").as_uri() if folder is not None else None
        return self.client.create_experiment(self.experiment, artifact_location=location)

    def _recorded(self) -> dict[str, str] | None:
        path = self.run_dir / MLFLOW_RUN
        try:
            data = json.loads(path.read_text())
            return {"tracking_uri": str(data["tracking_uri"]), "run_id": str(data["run_id"])}
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{path} is unreadable ({one_line(exc)}); remove it to log the resumed run as a "
                "new MLflow run"
            ) from exc

    def _continue(self, trainer: Trainer, recorded: dict[str, str]) -> bool:
        """Continue the recorded MLflow run; False (with a note) if its store no longer has it."""
        uri, run_id = recorded["tracking_uri"], recorded["run_id"]
        with self._errors(f"cannot open the MLflow store {uri}", ConfigError):
            self.client = self.mlflow.MlflowClient(tracking_uri=uri)
            try:
                run = self.client.get_run(run_id)
            except self.mlflow.exceptions.MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                trainer.log(f"MLflow: run {run_id} is not in {uri} any more; starting a new one")
                return False
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            held = run.data.params
            self._log_params({k: v for k, v in self.params.items() if k not in held})
        changed = sorted(k for k, v in self.params.items() if k in held and held[k] != v)
        if self.uri and self.uri != uri:
            trainer.log(f"MLflow: continuing run {run_id} in {uri}, where it started")
        if changed:  # MLflow params cannot change
            trainer.log(f"MLflow: params keep their first values: {', '.join(changed)} changed")
        return True

    def _log_params(self, params: dict[str, str]) -> None:
        items = [self.mlflow.entities.Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per request
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def _log_outcome(self, history: History) -> None:
        """The best epoch's metrics (and test metrics, if evaluated) and the run's files."""
        metrics = _best_metrics(self.run_dir / "best.pt", history)
        if metrics:
            self.log_metrics(metrics, history.best_epoch or 0)
        for name in ("best.pt", "config.json", "history.json", "training_curves.png"):
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))

    def _errors(self, what: str, kind: type[Exception] = TrainingError):
        return _reraise(f"MLflow: {what}", kind)


@contextlib.contextmanager
def _reraise(message: str, kind: type[Exception]) -> Iterator[None]:
    """Turn an error inside into `kind` with one line: "{message}: {the error}"."""
    try:
        yield
    except ConfigError:
        raise
    except Exception as exc:
        raise kind(f"{message}: {type(exc).__name__}: {one_line(exc)}") from exc


def _best_metrics(best: Path, history: History) -> dict[str, float]:
    """`best/<split>/<name>` for the best checkpoint's metrics (from its metadata; else history)."""
    metrics: dict[str, Any] = {}
    if best.is_file():  # memory-mapped: the weights are not read
        data = torch.load(best, map_location="cpu", weights_only=True, mmap=True)
        metrics = data.get("metrics") or {}
    elif history.best is not None:
        b = history.best
        metrics = {
            "train": {"loss": b.train_loss, "accuracy": b.train_accuracy},
            "val": {"loss": b.val_loss, "accuracy": b.val_accuracy},
        }
    return dict(_numbers(metrics, "best/"))


def _numbers(data: dict[str, Any], prefix: str) -> Iterator[tuple[str, float]]:
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _numbers(value, f"{prefix}{key}/")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            yield f"{prefix}{key}", float(value)


def _import_tensorboard():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise _missing("tensorboard", exc) from exc
    return SummaryWriter


def _import_mlflow():
    try:
        import mlflow
        import mlflow.entities
        import mlflow.exceptions
    except ImportError as exc:
        raise _missing("mlflow", exc) from exc
    return mlflow


def _missing(name: str, exc: ImportError) -> ConfigError:
    return ConfigError(
        f"{opt('logging.loggers')} {name} needs the {name} package ({one_line(exc)}): "
        f"pip install 'skincls[{name}]'"
    )


_IMPORTS = {"tensorboard": _import_tensorboard, "mlflow": _import_mlflow}


def check_loggers(config: LoggerConfig) -> None:
    """Import the chosen trackers' packages now: a missing one fails before anything is written.

    Raises:
        ConfigError: a package is not installed (the message names the pip extra).
    """
    for name in config.loggers:
        if name in _IMPORTS:
            _IMPORTS[name]()


def create_loggers(config: RunConfig, run_dir: str | Path) -> list[Logger]:
    """The trackers `config.logging` names (TensorBoard, MLflow), besides the history files (csv).

    Raises:
        ConfigError: a chosen tracker's package is not installed.
    """
    loggers: list[Logger] = []
    if "tensorboard" in config.logging.loggers:
        loggers.append(TensorBoardLogger(run_dir))
    if "mlflow" in config.logging.loggers:
        params = flatten_config(config.model_dump(mode="json"))
        loggers.append(MLflowLogger(run_dir, params, uri=config.logging.mlflow_uri))
    return loggers


def remove_tracking_files(run_dir: str | Path) -> list[str]:
    """Remove what the trackers wrote into `run_dir` by default (`TRACKING_FILES`); their names."""
    removed = []
    for name in TRACKING_FILES:
        path = Path(run_dir) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed
