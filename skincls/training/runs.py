"""Run directories: find them and summarise each from its files, without loading any weights.

A run dir is what `skincls train` writes: `config.json`, `history.json`, `best.pt`, `last.pt`. Its
summary comes from the two JSON files and from the checkpoint's metadata (test metrics, once
`skincls evaluate` stored them), read with `torch.load(mmap=True)` so the weights stay on disk.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["RunSummary", "find_runs", "list_runs", "summarize_run"]

_MARKERS = ("config.json", "history.json", "best.pt")
_JSON_LIMIT = 10_000_000  # a run's JSON files are kilobytes; refuse to parse anything huge


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

    Unreadable or malformed files are noted in `problems`, never raised: one broken run must not
    hide the others.
    """
    run_dir = Path(run_dir)
    s = RunSummary(run_dir, size_bytes=_size(run_dir))
    config = _read_json(run_dir / "config.json", s)
    if isinstance(config, dict):
        s.arch = _get(config, "model", "arch")
        s.data_dir = _get(config, "data", "data_dir")
        epochs, finetune = _get(config, "train", "epochs"), _get(config, "train", "finetune_epochs")
        if isinstance(epochs, int):
            s.epochs_planned = epochs + (finetune if isinstance(finetune, int) else 0)
    history = _read_json(run_dir / "history.json", s)
    if isinstance(history, dict) and isinstance(history.get("epochs"), list):
        records = [e for e in history["epochs"] if isinstance(e, dict)]
        s.epochs_run = len(records)
        s.best_epoch = history.get("best_epoch")
        best = next((e for e in records if e.get("epoch") == s.best_epoch), None)
        if best is not None:
            s.val_loss, s.val_accuracy = best.get("val_loss"), best.get("val_accuracy")
    meta = _checkpoint_metadata(run_dir / "best.pt", s)
    if meta is not None:
        s.arch = s.arch or _get(meta, "model", "arch")
        if s.best_epoch is None:  # no history.json: best.pt knows its own epoch and val metrics
            s.best_epoch = meta.get("epoch")
            s.val_loss = _get(meta, "metrics", "val", "loss")
            s.val_accuracy = _get(meta, "metrics", "val", "accuracy")
        test = _get(meta, "metrics", "test")
        if isinstance(test, dict):
            keys = ("accuracy", "sensitivity", "specificity", "roc_auc", "n_images")
            s.test = {k: test.get(k) for k in keys}
    return s


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


def _checkpoint_metadata(path: Path, summary: RunSummary) -> dict[str, Any] | None:
    """The checkpoint's dict with its tensors memory-mapped, not read (no weights in memory)."""
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        summary.problems.append(f"{path.name}: not a readable checkpoint ({type(exc).__name__})")
        return None
    if not isinstance(data, dict):
        summary.problems.append(f"{path.name}: not a skincls checkpoint")
        return None
    data.pop("state_dict", None)
    data.pop("training_state", None)
    return data
