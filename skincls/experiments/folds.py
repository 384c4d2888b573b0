"""Folds: K grouped, stratified folds over the non-test images of a manifest.

Groups are what must never straddle two folds (a model would otherwise be scored on another photo of a
lesion it trained on). `record_group` is the one place that reads them from a manifest record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from ..data.grouping import build_grouping, group_folds
from ..data.splits import Manifest, Record
from ..errors import ConfigError, DataError, opt

__all__ = [
    "GROUP_BY",
    "assign_folds",
    "fold_groups",
    "fold_manifest",
    "folds_fingerprint",
    "pool_records",
    "record_group",
]

# `group_by` → the manifest column whose values a fold holds out whole. `site` is the manifest's
# site column (anatomical site: leave-body-site-out); `source` is where the image was taken
# (HAM10000's dataset, ISIC's attribution: leave-hospital-out). Any other manifest column works too.
GROUP_BY = {"patient": "patient_id", "lesion": "lesion_id", "site": "site", "source": "source"}


def record_group(record: Record) -> str:
    """The group of a manifest record: its `group` column (lesion/patient ids joined with duplicate
    clusters) when the manifest has one, else its duplicate cluster, else the image alone."""
    group = getattr(record, "group", None)
    if group not in (None, "", -1):
        return f"group:{group}"
    if record.cluster >= 0:
        return f"cluster:{record.cluster}"
    return f"image:{record.path}"


def fold_groups(records: Sequence[Record], group_by: str | None = None) -> list[str]:
    """The unit a fold keeps whole, per record: its `record_group`, and with `group_by` that
    joined with every other record sharing its value of the column (`GROUP_BY`), so that a fold
    holds out whole sites (sources, patients, lesions) and still never splits a lesion or patient.
    A record without a value keeps its own group. Groups are named by their column values.

    Raises:
        DataError: no record has a value in the column.
    """
    base = [record_group(r) for r in records]
    if group_by is None:
        return base
    column = GROUP_BY.get(group_by, group_by)
    values = [r.column(column) for r in records]
    if not any(values):
        raise DataError(
            f"{opt('group_by', value=group_by)}: no image outside the test split has a "
            f"{column!r} value; give a manifest column the images have, e.g. "
            f"{', '.join(GROUP_BY)}"
        )
    keys = [[b, f"{column}:{v}"] if v else [b] for b, v in zip(base, values)]
    ids = build_grouping(keys, list(range(len(records)))).ids
    names: dict[int, set[str]] = {}
    for g, v in zip(ids, values):
        names.setdefault(g, set()).add(v)
    return [
        f"{column}:{'+'.join(sorted(names[g] - {''}))}" if names[g] - {""} else base[i]
        for i, g in enumerate(ids)
    ]


def pool_records(manifest: Manifest) -> list[Record]:
    """The images cross-validation folds: every record outside the test split, in manifest order."""
    return [r for r in manifest.records if r.split != "test"]


def assign_folds(
    records: Sequence[Record],
    classes: Sequence[str],
    folds: int,
    seed: int = 0,
    group_by: str | None = None,
) -> np.ndarray:
    """Fold index (0..folds-1) per record: whole groups per fold, class mix as even as groups allow.

    `grouping.group_folds` (scikit-learn's `StratifiedGroupKFold`, shuffled with `seed`) does the
    assignment. With `group_by` the groups are `fold_groups`' (whole sites, sources, patients or
    lesions): with as many folds as groups, each fold holds out one of them (leave-one-site-out).

    Raises:
        ConfigError: fewer than 2 folds.
        DataError: fewer groups than folds in all, or in one class (a fold would lack that class);
            with `group_by`, a fold whose training images would lack a class.
    """
    if folds < 2:
        raise ConfigError(f"cross-validation needs at least 2 folds, not {folds}")
    labels = np.array([list(classes).index(r.label) for r in records])
    groups = np.array(fold_groups(records, group_by))
    if group_by is not None:
        n = len(set(groups))
        if n < folds:
            raise DataError(
                f"{opt('group_by', value=group_by)} makes only {n} groups outside the test split "
                f"({', '.join(sorted(set(groups))[:5])}{', …' if n > 5 else ''}), fewer than "
                f"{folds} folds; use {opt('folds', value=max(n, 2))} or fewer"
            )
    else:
        _enough_groups_per_class(labels, groups, classes, folds)
    fold = group_folds(labels, groups, folds, seed).astype(np.int64)
    if group_by is not None:
        _every_class_trained(labels, fold, classes, folds, group_by)
    return fold


def _enough_groups_per_class(labels, groups, classes: Sequence[str], folds: int) -> None:
    for k, name in enumerate(classes):
        n = len(set(groups[labels == k]))
        if n < folds:
            raise DataError(
                f"class {name!r} has only {n} independent images/groups outside the test split, "
                f"fewer than {folds} folds; use {opt('folds', value=max(n, 2))} or fewer"
            )


def _every_class_trained(labels, fold, classes: Sequence[str], folds: int, group_by: str) -> None:
    """Each fold's model must train on every class: refuse folds whose other folds lack one."""
    for k in range(folds):
        missing = [c for i, c in enumerate(classes) if not (labels[fold != k] == i).any()]
        if not (fold == k).any():
            raise DataError(
                f"with {opt('group_by', value=group_by)}, fold {k} holds out no image; use fewer "
                f"{opt('folds')}"
            )
        if missing:
            raise DataError(
                f"with {opt('group_by', value=group_by)}, fold {k}'s training images have no "
                f"{', '.join(map(repr, missing))} (every such image is in the groups it holds "
                f"out); use fewer {opt('folds')} or another {opt('group_by')}"
            )


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
