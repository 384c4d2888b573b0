"""Splits and the manifest: which image belongs to which split, decided once and written down.

Every later step reads `manifest.csv` and never reshuffles (prepare once, train many).
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..errors import DataError, call, opt
from .cells import safe_path, safe_text
from .grouping import carve_groups
from .info import DATASET_JSON, DatasetInfo

__all__ = [
    "DATASET_JSON",
    "MANIFEST_NAME",
    "SKIPPED_NAME",
    "SPLITS",
    "Manifest",
    "Record",
    "assign_splits",
    "load_manifest",
    "split_codes",
    "split_rank",
    "stream_manifest",
    "unify_groups",
    "unify_ranks",
    "write_manifest",
]

MANIFEST_NAME = "manifest.csv"
SKIPPED_NAME = "skipped.csv"
SPLITS = ("train", "val", "test")
ALL = "all"  # `Manifest.select`: every split (a dataset used whole, for external validation)
_COLUMNS = ("path", "label", "split", "sha256", "cluster", "group", "lesion_id", "patient_id")


@dataclass(frozen=True)
class Record:
    """One image: `path` is relative to the data dir; `cluster` groups duplicates of one another.

    `group` names what must stay in one split with it (its patient, lesion or duplicate cluster,
    joined: `skincls.data.grouping`); `lesion_id` and `patient_id` are the dataset's own, "" when
    not recorded. `attributes` are further manifest columns, `(column, value)` pairs: what the
    dataset's metadata says of the image (sex, age, site, dx_type, fitzpatrick) and its estimated
    skin tone (`ita`, `skin_tone`: `skincls.data.skintone`).
    """

    path: str
    label: str
    split: str
    sha256: str = ""
    cluster: int = -1
    group: str = ""
    lesion_id: str = ""
    patient_id: str = ""
    attributes: tuple[tuple[str, str], ...] = ()

    def column(self, name: str) -> str:
        """The value of manifest column `name` ("" where this image has none)."""
        if name in _COLUMNS:
            return str(getattr(self, name))
        return dict(self.attributes).get(name, "")


@dataclass
class Manifest:
    """The prepared dataset: its root folder, class names (index = label id), records and record.

    `info` is the data dir's `dataset.json` (provenance, duplicates, options); a manifest made in
    memory without one gets a minimal record of its classes and counts.
    """

    root: Path
    classes: list[str]
    records: list[Record]
    info: DatasetInfo | None = None

    def __post_init__(self) -> None:
        if self.info is None:
            self.info = DatasetInfo(classes=list(self.classes), counts=self.counts())

    def select(self, split: str) -> list[Record]:
        """Records of one split, in manifest order; `all`: every record (an external test set)."""
        if split == ALL:
            return list(self.records)
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}, {ALL}")
        return [r for r in self.records if r.split == split]

    def counts(self) -> dict[str, dict[str, int]]:
        """`{split: {class: n}}` for every split and class (zeros included)."""
        c = Counter((r.split, r.label) for r in self.records)
        return {s: {k: c[(s, k)] for k in self.classes} for s in SPLITS}

    def label_index(self, label: str) -> int:
        return self.classes.index(label)


_RANK = {s: k for k, s in enumerate(SPLITS)}  # how held out: train 0, val 1, test 2


def split_rank(source_split: str | None) -> int:
    """How held out a source split is: its position in `SPLITS` (none or another name: train)."""
    return _RANK.get(source_split or "train", 0)


def unify_groups(source_splits: Sequence[str | None], groups: Sequence[int]) -> list[str]:
    """Put every group wholly in its most held-out split (test, then val, then train).

    A duplicate found in the source's test split pulls its training copies into test, so no image is
    trained on and then scored. Items without a source split count as train.

    Returns:
        A split per item; compare with `source_splits` to see which items moved.
    """
    rank = np.array([split_rank(s) for s in source_splits], np.int8)
    return [SPLITS[k] for k in unify_ranks(rank, groups).tolist()]


def unify_ranks(rank: np.ndarray, groups: Sequence[int]) -> np.ndarray:
    """`unify_groups` of codes: per item, the highest `split_rank` in its group."""
    if not len(rank):
        return np.zeros(0, np.int8)
    g = np.asarray(groups).ravel()
    if not (g.dtype.kind in "iu" and g.min() >= 0 and g.max() <= len(g)):  # as they are: 0..N
        g = np.unique(g, return_inverse=True)[1].ravel()
    best = np.zeros(int(g.max()) + 1, np.int8)
    np.maximum.at(best, g, rank)
    return best[g]


def assign_splits(
    labels: Sequence[str],
    source_splits: Sequence[str | None],
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    groups: Sequence[int] | None = None,
) -> list[str]:
    """Assign each item to train/val/test, stratified by label, seeded, and whole groups at a time.

    The source's own test (and val) items keep their split. When no item comes with a test split, a
    stratified `test_fraction` of groups is carved out first; when none comes with a val split,
    `val_fraction` of the remaining training items become validation, whole groups at a time and
    stratified by label (`grouping.carve_groups`: scikit-learn's `StratifiedGroupKFold` folds).
    With `groups` (lesion, patient and duplicate groups), a group never straddles two splits (see
    `unify_groups`).

    Returns:
        A split name per item, in input order.
    """
    y = np.unique(np.asarray(labels), return_inverse=True)[1].ravel()
    rank = np.array([split_rank(s) for s in source_splits], np.int8)
    codes = split_codes(
        y, rank, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, groups=groups
    )
    return [SPLITS[k] for k in codes.tolist()]


def split_codes(
    labels: np.ndarray,
    source_ranks: np.ndarray,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    groups: Sequence[int] | None = None,
) -> np.ndarray:
    """`assign_splits` of codes: `labels` as integers in the classes' sorted order,
    `source_ranks` by `split_rank`; returns each item's position in `SPLITS` (int8)."""
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1:
        raise DataError("val and test fractions must be in [0, 1)")
    n = len(labels)
    group_ids = np.asarray(groups) if groups is not None else np.arange(n)
    out = unify_ranks(np.asarray(source_ranks, np.int8), group_ids)
    has_test, has_val = (out == 2).any(), (out == 1).any()

    def carve(target: int, fraction: float) -> None:
        # Whole groups, stratified by label, among the items still in train (a mask, not an
        # int64 index: 1 byte an item, and none while every item is in train).
        among = out == 0
        if among.all():
            out[carve_groups(labels, group_ids, fraction, seed)] = target
            return
        held = carve_groups(labels[among], group_ids[among], fraction, seed)
        out[among] = np.where(held, np.int8(target), np.int8(0))

    if not has_test and test_fraction > 0:
        carve(2, test_fraction)
    if not has_val and val_fraction > 0:
        carve(1, val_fraction)
    return out


def write_manifest(data_dir: str | Path, records: Iterable[Record], info: DatasetInfo) -> Manifest:
    """Write `manifest.csv`, `skipped.csv` (`info.skipped`: path, reason) and `dataset.json`
    (`info`, its counts filled in) atomically; `dataset.json` goes last: it marks a finished fetch.

    `info.classes` is the class order (label id = position).

    Returns:
        The manifest as written; its `info` is the `dataset.json` content.
    """
    records = list(records)
    info = stream_manifest(data_dir, lambda: records, info)
    return Manifest(Path(data_dir), list(info.classes), records, info)


def stream_manifest(
    data_dir: str | Path, records: Callable[[], Iterable[Record]], info: DatasetInfo
) -> DatasetInfo:
    """`write_manifest` of records made as they are written: `records()` is iterated twice (the
    columns and counts, then the rows), and no more than one record is held at a time.

    Returns:
        The `dataset.json` content as written.
    """
    data_dir = Path(data_dir)
    extra: dict[str, None] = {}
    pairs: Counter = Counter()
    for r in records():
        extra.update((k, None) for k, _ in r.attributes)
        pairs[(r.split, r.label)] += 1
    with atomic_write(data_dir / MANIFEST_NAME, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*_COLUMNS, *extra])
        writer.writeheader()
        for r in records():
            row = asdict(r)
            row.pop("attributes")
            writer.writerow({**row, **dict(r.attributes)})
    with atomic_write(data_dir / SKIPPED_NAME, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(("path", "reason"))
        # For people, often in a spreadsheet: no cell it would run as a formula, no undecodable name.
        out.writerows((safe_path(path), safe_text(reason)) for path, reason in info.skipped)
    counts = {s: {k: pairs[(s, k)] for k in info.classes} for s in SPLITS}
    info = info.model_copy(update={"counts": counts})
    info.save(data_dir)
    return info


def load_manifest(data_dir: str | Path) -> Manifest:
    """Read a prepared data dir.

    Raises:
        DataError: the folder or its manifest is missing or malformed, with the command to fix it.
    """
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST_NAME
    if not path.is_file():
        raise DataError(
            f"no {MANIFEST_NAME} in {data_dir}: prepare the data first, e.g. "
            f"`{call('fetch', data_dir=str(data_dir))}` (or `{opt('synthetic=500')}` for offline "
            "data)"
        )
    info = DatasetInfo.load(data_dir)
    classes = list(info.classes)
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = set(_COLUMNS[:3]) - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{path} lacks columns {sorted(missing)}; run fetch again")
        extra = [c for c in reader.fieldnames or () if c not in _COLUMNS]
        records = [
            Record(
                path=row["path"],
                label=row["label"],
                split=row["split"],
                sha256=row.get("sha256") or "",
                cluster=int(row.get("cluster") or -1),
                group=row.get("group") or "",
                lesion_id=row.get("lesion_id") or "",
                patient_id=row.get("patient_id") or "",
                attributes=tuple((c, row[c] or "") for c in extra if row[c]),
            )
            for row in reader
        ]
    unknown = {r.label for r in records} - set(classes)
    if unknown:
        raise DataError(f"{path} has labels {sorted(unknown)} not in {DATASET_JSON}'s classes")
    return Manifest(data_dir, classes, records, info)
