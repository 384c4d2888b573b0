"""Run directories: find them and summarise each from its files, without loading any weights.

A run dir is what `skincls train` writes: `config.json`, `history.json`, `best.pt`, `last.pt`. Its
summary comes from the two JSON files and from the checkpoint's metadata (its epoch and val metrics,
test metrics once `skincls evaluate` stored them; another dataset's are only named, never shown as
the run's test), read as `load_checkpoint` reads it (a `.pt` or a safetensors file) with its weights
left on disk. The best epoch is best.pt's own: history.json is written every epoch, the checkpoints
only every `train.checkpoint_interval` seconds, so after a kill the history may name a best epoch
never written.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import CheckpointError, ConfigError, call, spell_options
from ..models.checkpoint import FORMAT
from ..models.checkpoint_checks import (
    MetricNumber,
    check_metadata,
    describe_validation_error,
    read_checkpoint_file,
)

__all__ = ["RunSummary", "find_runs", "list_runs", "summarize_run"]

_MARKERS = ("config.json", "history.json", "best.pt")
_JSON_LIMIT = 10_000_000  # a run's JSON files are kilobytes; refuse to parse anything huge


class _Epoch(BaseModel):
    """What is read of one `history.json` epoch record (strict: a number is a number)."""

    model_config = ConfigDict(extra="allow", strict=True)

    epoch: int = Field(ge=1)
    train_loss: MetricNumber | None = None
    train_accuracy: MetricNumber | None = None
    val_loss: MetricNumber | None = None
    val_accuracy: MetricNumber | None = None


class _History(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    epochs: list[_Epoch]
    best_epoch: int | None = None


@dataclass
class RunSummary:
    """What `skincls runs` shows of one run dir; None where the run does not say."""

    path: Path
    arch: str | None = None
    data_dir: str | None = None
    epochs_run: int | None = None
    epochs_planned: int | None = None
    best_epoch: int | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    test: dict[str, Any] | None = None  # accuracy, sensitivity, specificity, roc_auc, n_images
    # Other datasets measured with `evaluate --save`: their metrics keys (`ddi:test`) → n_images.
    other_data: dict[str, Any] = field(default_factory=dict)
    size_bytes: int = 0
    problems: list[str] = field(default_factory=list)  # files that could not be read

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


def find_runs(root: str | Path) -> list[Path]:
    """Run dirs at or under `root` (folders holding config.json, history.json or best.pt), sorted.

    Raises:
        ConfigError: `root` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder; give the folder your runs are in (e.g. runs)")
    found = {p.parent for name in _MARKERS for p in root.rglob(name) if p.is_file()}
    return sorted(found)


def list_runs(root: str | Path) -> list[RunSummary]:
    """`summarize_run` of every run dir under `root`."""
    return [summarize_run(p) for p in find_runs(root)]


def summarize_run(run_dir: str | Path) -> RunSummary:
    """Summarise one run dir from config.json, history.json and best.pt's metadata.

    The best epoch and its val metrics are best.pt's own. Unreadable or malformed files are noted
    in `problems` (and what they would say is left out), never raised: one broken run must not
    hide the others.
    """
    run_dir = Path(run_dir)
    s = RunSummary(run_dir, size_bytes=_size(run_dir))
    config = _read_json(run_dir / "config.json", s)
    if isinstance(config, dict):
        s.arch = _text(_get(config, "model", "arch"))
        s.data_dir = _text(_get(config, "data", "data_dir"))
        epochs, finetune = _get(config, "train", "epochs"), _get(config, "train", "finetune_epochs")
        if _whole(epochs):
            s.epochs_planned = epochs + (finetune if _whole(finetune) else 0)
    history = _read_history(run_dir / "history.json", s)
    if history is not None:
        s.epochs_run = len(history.epochs)
    meta = _checkpoint_metadata(run_dir / "best.pt", s)
    if meta is not None:
        s.arch = s.arch or _text(_get(meta, "model", "arch"))
        s.best_epoch = meta.get("epoch")
        s.val_loss = _get(meta, "metrics", "val", "loss")
        s.val_accuracy = _get(meta, "metrics", "val", "accuracy")
        test = _get(meta, "metrics", "test")
        if isinstance(test, dict):
            keys = ("accuracy", "sensitivity", "specificity", "roc_auc", "n_images")
            s.test = {k: test.get(k) for k in keys}
        s.other_data = _other_data(meta)
    _compare_best(s, history, run_dir / "best.pt", meta)
    return s


def _other_data(meta: Any) -> dict[str, Any]:
    """The stored metrics of other datasets than the run's own (keyed `<data dir name>:<split>`)."""
    metrics = meta.get("metrics")
    if not isinstance(metrics, dict):
        return {}
    return {
        k: v.get("n_images")
        for k, v in metrics.items()
        if isinstance(k, str) and isinstance(v, dict) and v.get("data") is not None
    }


def _compare_best(s: RunSummary, history: _History | None, best: Path, meta: Any) -> None:
    """Note a best epoch in history.json that best.pt does not hold (its weights are not on disk)."""
    named = history.best_epoch if history is not None else None
    if named is None or named == s.best_epoch or (meta is None and best.is_file()):
        return
    holds = f"best.pt holds epoch {s.best_epoch}" if meta is not None else "there is no best.pt"
    resume = call("train_from_config", "...", resume=True)
    s.problems.append(
        spell_options(
            f"history.json is ahead of the checkpoints: it names epoch {named} the best, but "
            f"{holds} (the run stopped before writing that epoch); the table shows what best.pt "
            f"holds, and `{resume}` continues from last.pt"
        )
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def _size(run_dir: Path) -> int:
    total = 0
    for p in run_dir.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        except OSError:
            pass
    return total


def _read_json(path: Path, summary: RunSummary) -> Any:
    if not path.is_file():
        return None
    try:
        with path.open("rb") as fh:
            data = fh.read(_JSON_LIMIT + 1)
        if len(data) > _JSON_LIMIT:
            raise ValueError("too large")
        return json.loads(data)
    except (OSError, ValueError, RecursionError) as exc:
        summary.problems.append(f"{path.name}: {exc}")
        return None


def _read_history(path: Path, summary: RunSummary) -> _History | None:
    data = _read_json(path, summary)
    if data is None:
        return None
    try:
        return _History.model_validate(data)
    except ValidationError as exc:
        summary.problems.append(f"{path.name}: {describe_validation_error(exc)}")
        return None


def _checkpoint_metadata(path: Path, summary: RunSummary) -> dict[str, Any] | None:
    """The checkpoint's checked metadata, its tensors memory-mapped, not read (no weights in memory).

    Checked as `load_checkpoint` checks it (types, ranges, size), so a checkpoint that no command
    would load shows as a problem, not as numbers (or a crash, or gigabytes of JSON).
    """
    if not path.is_file():
        return None
    try:
        data = read_checkpoint_file(path, weights=False)
    except CheckpointError as exc:  # the reason load_checkpoint would give, e.g. "best.pt is empty"
        reason = str(exc).replace(str(path), path.name)
        summary.problems.append(
            reason if reason.startswith(path.name) else f"{path.name}: {reason}"
        )
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        summary.problems.append(f"{path.name}: not a skincls checkpoint")
        return None
    try:
        check_metadata(path, data)
    except CheckpointError as exc:
        summary.problems.append(f"{path.name}: unreadable: {str(exc).removeprefix(f'{path}: ')}")
        return None
    data.pop("state_dict", None)
    data.pop("training_state", None)
    return data
