"""Training history: per-epoch records with every metric named after its split, saved as JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..atomic import atomic_write

__all__ = ["BestTracker", "EpochRecord", "History"]


@dataclass
class EpochRecord:
    """Metrics of one epoch; `val_*` are None without a validation set. `lr` is the head's at the start."""

    epoch: int
    phase: str
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    lr: float
    seconds: float


@dataclass
class BestTracker:
    """The best value so far of `monitor` (an `EpochRecord` field): accuracy up, a loss down."""

    monitor: str = "val_loss"
    value: float | None = None

    @property
    def maximise(self) -> bool:
        return self.monitor == "val_accuracy"

    def of(self, record: EpochRecord) -> float:
        return getattr(record, self.monitor)

    def update(self, record: EpochRecord) -> bool:
        """Whether `record` improves on the best so far (then it becomes the best)."""
        value = self.of(record)
        better = self.value is None or (value > self.value if self.maximise else value < self.value)
        if better:
            self.value = value
        return better


@dataclass
class History:
    """Per-epoch records, the best epoch under `monitor`, and notes on how the run went."""

    epochs: list[EpochRecord] = field(default_factory=list)
    best_epoch: int | None = None
    monitor: str = "val_loss"
    stopped_early: list[str] = field(default_factory=list)  # phases ended by early stopping
    cache: dict[str, str] = field(default_factory=dict)  # split → how its features were obtained
    timings: dict[str, float] = field(default_factory=dict)  # e.g. features_train_seconds
    precision: dict[str, str] = field(
        default_factory=dict
    )  # phase → fp32/bf16/fp16 (PrecisionPlan)
    notes: list[str] = field(default_factory=list)

    @property
    def best(self) -> EpochRecord | None:
        return next((e for e in self.epochs if e.epoch == self.best_epoch), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["epochs"] = [EpochRecord(**e) for e in data.get("epochs", [])]
        return cls(**kwargs)

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=[f.name for f in fields(EpochRecord)])
        writer.writeheader()
        writer.writerows(asdict(e) for e in self.epochs)
        return buf.getvalue()

    def save(self, run_dir: str | Path, **extra: Any) -> None:
        """Write `history.json` (with `extra` keys, e.g. wall time) and `history.csv` atomically."""
        run_dir = Path(run_dir)
        for name, text in (
            ("history.json", json.dumps({**self.to_dict(), **extra}, indent=2) + "\n"),
            ("history.csv", self.to_csv()),
        ):
            with atomic_write(run_dir / name, "w") as fh:
                fh.write(text)
