"""Folds: K grouped, stratified folds over the non-test images of a manifest.

Groups are what must never straddle two folds (a model would otherwise be scored on another photo of a
lesion it trained on). `record_group` is the one place that reads them from a manifest record.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from ..data.splits import Manifest, Record
from ..errors import ConfigError, DataError, opt

__all__ = ["assign_folds", "fold_manifest", "folds_fingerprint", "pool_records", "record_group"]


def record_group(record: Record) -> str:
    """The group of a manifest record: its `group` column (lesion/patient ids joined with duplicate
    clusters) when the manifest has one, else its duplicate cluster, else the image alone."""
    group = getattr(record, "group", None)
    if group not in (None, "", -1):
        return f"group:{group}"
    if record.cluster >= 0:
        return f"cluster:{record.cluster}"
    return f"image:{record.path}"


def pool_records(manifest: Manifest) -> list[Record]:
    """The images cross-validation folds: every record outside the test split, in manifest order."""
    return [r for r in manifest.records if r.split != "test"]


def assign_folds(
    records: Sequence[Record], classes: Sequence[str], folds: int, seed: int = 0
) -> np.ndarray:
    """Fold index (0..folds-1) per record: whole groups per fold, class mix as even as groups allow.

    scikit-learn's `StratifiedGroupKFold` (shuffled with `seed`) does the assignment.

    Raises:
        ConfigError: fewer than 2 folds.
        DataError: fewer groups than folds in all, or in one class (a fold would lack that class).
    """
    if folds < 2:
        raise ConfigError(f"cross-validation needs at least 2 folds, not {folds}")
    labels = np.array([list(classes).index(r.label) for r in records])
    groups = np.array([record_group(r) for r in records])
    for k, name in enumerate(classes):
        n = len(set(groups[labels == k]))
        if n < folds:
            raise DataError(
                f"class {name!r} has only {n} independent images/groups outside the test split, "
                f"fewer than {folds} folds; use {opt('folds', value=max(n, 2))} or fewer"
            )
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold = np.full(len(records), -1, dtype=np.int64)
    with warnings.catch_warnings():
        # Raised when a class has fewer members than folds; checked above in terms of groups.
        warnings.simplefilter("ignore", UserWarning)
        for k, (_, held_out) in enumerate(splitter.split(np.zeros(len(records)), labels, groups)):
            fold[held_out] = k
    return fold


def folds_fingerprint(records: Sequence[Record], fold: np.ndarray) -> str:
    """A hash of which image is in which fold: a resumed CV must find the same assignment."""
    h = hashlib.sha256()
    for r, k in zip(records, fold):
        h.update(f"{r.path}\0{r.label}\0{r.sha256}\0{int(k)}\n".encode())
    return h.hexdigest()


def fold_manifest(
    manifest: Manifest, records: Sequence[Record], fold: np.ndarray, k: int | None
) -> Manifest:
    """A manifest over `records` whose train split is every fold but `k` and whose val split is `k`.

    `k=None` puts every record in train (a refit on all non-test images).
    """
    out = [
        replace(r, split="val" if k is not None and f == k else "train")
        for r, f in zip(records, fold)
    ]
    folded = Manifest(manifest.root, list(manifest.classes), out)
    # The same record, with the fold's own counts.
    folded.info = manifest.info.model_copy(update={"counts": folded.counts()})
    return folded
