"""Run dirs: what a run writes in one, the checks before writing there (empty, resumable, the same
data) and the cleanup after a failure."""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import is_temp_name
from ..config import RunConfig, save_config
from ..errors import CheckpointError, ConfigError, opt
from ..locks import LOCK_FILES, DirLock, FileStamp, clean_stale_temps, file_stamp
from ..models.checkpoint import Checkpoint, load_checkpoint
from .loggers import remove_tracking_files

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = [
    "RUN_FILES",
    "Resumed",
    "check_run_to_resume",
    "default_run_dir",
    "drop_unresumable",
    "feature_cache_dir",
    "load_resume",
    "lock_run_dir",
    "prepare_run_dir",
    "recorded_data_dir",
    "refuse_nonempty",
    "remove_run_files",
    "run_entries",
]

log = logging.getLogger(__name__)

RUN_FILES = (
    "last.pt",  # first: a half-removed run must never look resumable from an old epoch
    "best.pt",
    "history.json",
    "history.csv",
    "training_curves.png",
    "config.json",  # last: while any of it is left, resuming starts the run over
)
"""What a run writes into its run dir (what `overwrite` removes)."""


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


@dataclass(frozen=True)
class Resumed:
    """The `last.pt` a run resumes from: its stamp (checked again under the lock) and epoch."""

    stamp: FileStamp
    epoch: int


def prepare_run_dir(
    lock: DirLock, config: RunConfig, *, resume: bool, overwrite: bool, last: FileStamp | None
) -> None:
    """Under the lock: check again (`last`: last.pt's stamp when resuming from it), clean up after
    killed runs, clear what is replaced, write config.json."""
    run_dir = lock.folder
    now = (
        file_stamp(run_dir / "last.pt", content=False) if (run_dir / "last.pt").is_file() else None
    )
    if resume and now != last:
        raise CheckpointError(
            f"cannot resume: {run_dir / 'last.pt'} changed while starting; try again"
        )
    if not resume and not overwrite:
        refuse_nonempty(run_dir)  # again: another run may have just ended in it
    lock.clean_stale_temps()
    clean_stale_temps(feature_cache_dir(config.data.data_dir))
    if overwrite or (resume and last is None):
        remove_run_files(run_dir)
    save_config(config, run_dir / "config.json")


def run_entries(run_dir: Path) -> list[str]:
    """What the folder holds besides lock files and temp files (empty when it does not exist)."""
    try:
        return sorted(
            p.name
            for p in run_dir.iterdir()
            if p.name not in LOCK_FILES and not is_temp_name(p.name)
        )
    except (FileNotFoundError, NotADirectoryError):
        return []


def refuse_nonempty(run_dir: Path) -> None:
    """Refuse a run dir that holds anything (a new run never mixes with another's files)."""
    names = run_entries(run_dir)
    if names:
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise ConfigError(
            f"run dir {run_dir} is not empty ({shown}); give {opt('resume=True')} to continue that "
            f"run, {opt('overwrite=True')} to replace it, or another {opt('out')}"
        )


def lock_run_dir(run_dir: Path, auto_arch: str | None) -> DirLock:
    """Lock `run_dir`; an automatic name (`auto_arch` given) that got taken moves on to the next."""
    while True:
        try:
            return DirLock(
                run_dir,
                "skincls train",
                new=auto_arch is not None,
                advice=f"wait for it to finish, or give another {opt('out')}",
            ).acquire()
        except FileExistsError:
            run_dir = default_run_dir(auto_arch, run_dir.parent)


def drop_unresumable(run_dir: Path) -> None:
    """After a failure before any checkpoint: remove what was written (nothing could resume it)."""
    if (run_dir / "last.pt").exists() or (run_dir / "best.pt").exists():
        return
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)


def remove_run_files(run_dir: Path) -> None:
    removed = []
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_file():
            path.unlink()
            removed.append(name)
    removed += remove_tracking_files(run_dir)
    if removed:
        log.warning("replacing the run in %s: removed its %s", run_dir, ", ".join(removed))


def check_run_to_resume(run_dir: Path) -> None:
    """Refuse to resume where no run is (no last.pt, no config.json): before any model is built."""
    if not ((run_dir / "last.pt").is_file() or (run_dir / "config.json").is_file()):
        raise CheckpointError(
            f"cannot resume: {run_dir} holds no run (no last.pt, no config.json); train without "
            + opt("resume=True")
        )


def load_resume(trainer: Trainer, run_dir: Path, record: dict[str, Any]) -> Resumed | None:
    """Load `last.pt` into the trainer; what it resumes from, or None to start over (no epoch had
    ended).

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
        check_run_to_resume(run_dir)  # gone since it was checked: raises
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
            f"resume with the run's own options (its config.json), or train into another {opt('out')}"
        ) from exc
    trainer.load_state_dict(state)
    return Resumed(stamp, int(state["epoch"]))


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
        f"into a new {opt('out')}, or fetch back the split the run used (the same source, options "
        f"and {opt('seed')})"
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


def recorded_data_dir(ckpt: Checkpoint) -> Path | None:
    """The data dir `ckpt` was trained on, from its recorded config (None when it records none).

    Runs record it absolute. An older checkpoint's relative one was relative to the folder training
    ran in: found from the run dir's recorded (relative) `out`, which the checkpoint's folder ends
    with; failing that, it is taken relative to the current folder.
    """
    recorded = ckpt.data.get("train_config")
    data = recorded.get("data") if isinstance(recorded, dict) else None
    data_dir = data.get("data_dir") if isinstance(data, dict) else None
    if not isinstance(data_dir, str) or not data_dir:
        return None
    path = Path(data_dir)
    out = recorded.get("out")
    if path.is_absolute() or not isinstance(out, str) or Path(out).is_absolute():
        return path
    folder, parts = ckpt.path.resolve().parent, Path(out).parts
    if ".." not in parts and folder.parts[-len(parts) :] == parts:
        return Path(*folder.parts[: -len(parts)]) / path
    return path
