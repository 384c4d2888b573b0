"""Write: the data dir's record of the fetch, `manifest.csv`, `skipped.csv` and `dataset.json` (last).

`dataset.json` holds the fingerprint that makes the next identical fetch a no-op, so it is written
only once everything else is in place.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from ..freshness import FORMAT_VERSION
from ..info import DatasetInfo, DatasetSource
from ..skintone import skin_tone_counts
from ..splits import SPLITS, stream_manifest
from .records import Curated, FetchPlan, VerifiedImages
from .table import Pool

__all__ = ["dataset_info", "write_dataset"]

_COUNTED = ("skin_tone", "ita", "fitzpatrick")  # the columns `skin_tone_counts` reads
_IMAGES_AT_ONCE = 1 << 16


def write_dataset(
    data_dir: Path, plan: FetchPlan, verified: VerifiedImages, curated: Curated
) -> DatasetInfo:
    """Write `manifest.csv` (the curated records, made row by row), `skipped.csv` and
    `dataset.json` into `data_dir`; return `dataset.json`'s content as written."""
    return stream_manifest(data_dir, curated.records, dataset_info(plan, verified, curated))


def dataset_info(plan: FetchPlan, verified: VerifiedImages, curated: Curated) -> DatasetInfo:
    """`dataset.json`'s content: where the images came from, how they were read and curated."""
    layout = verified.layout
    return DatasetInfo(
        classes=verified.classes,
        format=FORMAT_VERSION,
        fingerprint=plan.fingerprint,
        source=DatasetSource(
            **plan.source,
            layout_root="/".join(layout.prefix) or ".",
            ignored_copies=layout.ignored_copies,
        ),
        **{k: v for k, v in plan.settings.items() if k != "labels"},
        class_order="sorted class names; label id = position in classes",
        dataset=plan.reading.describe(layout),
        # What the classes are (the settings hold the policy asked for).
        labels=plan.reading.labels_info(layout),
        metadata=getattr(layout, "summary", None),
        n_files=verified.n_files,
        n_kept=len(verified.table),
        skipped=verified.skipped,
        duplicates=curated.duplicates,
        groups=curated.groups,
        provenance=curated.provenance,
        moved=curated.moved,
        skin_tone=_skin_tones(curated),
    )


def _skin_tones(curated: Curated) -> dict | None:
    """`skintone.skin_tone_summary` of the curated images, counted from their codes (split, skin
    tone, metadata row): no manifest record is made for it."""
    table = curated.table
    skin, rows = table.pools["skin"].values, table.pools["row"].values
    # A row matters only by the columns counted: rows alike in them share a code, so the
    # (split, skin tone, row) combinations number a few, not one per image.
    alike = Pool()
    row_code = np.fromiter((alike.code(_counted(r.attributes)) for r in rows), np.int32, len(rows))
    shape = (len(SPLITS), len(skin), len(alike.values))
    combos: Counter = Counter()
    for start in range(0, len(table), _IMAGES_AT_ONCE):  # a fixed amount of memory, whatever N
        part = slice(start, start + _IMAGES_AT_ONCE)
        key = curated.split[part].astype(np.int64) * shape[1] + table.codes("skin")[part]
        key = key * shape[2] + row_code[table.codes("row")[part]]
        combos.update(dict(zip(*(x.tolist() for x in np.unique(key, return_counts=True)))))
    counts: Counter = Counter()
    for (s, k, r), m in zip(
        zip(*np.unravel_index(np.array(list(combos), np.int64), shape)), combos.values()
    ):
        a = dict(alike.values[r] + skin[k])  # as the manifest row's columns
        counts[SPLITS[s], a.get("skin_tone", ""), a.get("ita", ""), a.get("fitzpatrick", "")] += m
    return skin_tone_counts(counts)


def _counted(attributes: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """A row's attributes `_skin_tones` counts by, in the row's order (a later one wins)."""
    return tuple((k, v) for k, v in attributes if k in _COUNTED)
