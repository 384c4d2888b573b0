"""Records fetch's stages hand one another: the options, the plan, staged, verified and curated images.

plan (`FetchPlan`) → stage (`StagedFiles`) → verify (`VerifiedImages`) → curate (`Curated`) → write
(`DatasetInfo`, reported as `FetchReport`). Each stage reads `FetchOptions` and the record before it.
Past verification the images are columns (`table.ImageTable`), never an object per image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..dedup import DEFAULT_CONFIRM_DISTANCE, DEFAULT_NEAR_DUP_DISTANCE
from ..download import DatasetClient
from ..info import DatasetInfo, DuplicateSummary, MovedImage
from ..ingest import MAX_ARCHIVE_BYTES, Layout
from ..sources import SourcePlan
from ..splits import SPLITS, Manifest, Record, load_manifest
from .table import ImageTable, VerifiedImage

__all__ = [
    "Curated",
    "FetchOptions",
    "FetchPlan",
    "FetchReport",
    "ProgressCallback",
    "StagedFiles",
    "VerifiedImage",
    "VerifiedImages",
]

ProgressCallback = Callable[[str, int, "int | None"], None]
"""Called as `(stage, done, total)`; stages: download (bytes), extract, copy, verify (files)."""


@dataclass(frozen=True)
class FetchOptions:
    """Everything `fetch` is asked besides the data dir (see `fetch` for each option's meaning)."""

    # Where the images come from: at most one of source_dir, archive, synthetic; else Kaggle.
    source_dir: str | Path | None = None
    archive: str | Path | None = None
    synthetic: int | None = None
    dataset: str | None = None
    cache_dir: str | Path | None = None
    client: DatasetClient | None = None
    force: bool = False
    max_archive_bytes: int = MAX_ARCHIVE_BYTES
    # How the files become classes and groups.
    task: str | None = None
    malignant: list[str] | None = None
    labels_csv: str | Path | None = None
    image_column: str = "image"
    label_column: str = "label"
    group_columns: list[str] | None = None
    reference: list[str | Path] | None = None
    # Duplicates and splits.
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0
    near_dup_distance: int = DEFAULT_NEAR_DUP_DISTANCE
    near_dup_confirm: int | None = DEFAULT_CONFIRM_DISTANCE
    on_progress: ProgressCallback | None = None
    # How: processes that decode and hash (None: every core); results do not depend on it.
    workers: int | None = None

    def progress(self, stage: str) -> Callable[[int, int | None], None] | None:
        """`on_progress` bound to one stage name, or None without a callback."""
        if self.on_progress is None:
            return None
        report = self.on_progress
        return lambda done, total: report(stage, done, total)


@dataclass
class FetchPlan:
    """What fetch reads and whether it must: the source, how to read it, and its fingerprint.

    Attributes:
        kind: `kaggle`, `archive`, `source_dir` or `synthetic`.
        reading: How the source's files become the dataset (layout, label policy, labels CSV).
        source: `dataset.json`'s source entry: the kind and where (`DatasetSource` fields).
        archive: The archive to extract (given, or downloaded for a Kaggle source).
        source_dir: The folder to copy.
        synthetic: How many images to generate.
        downloaded: The archive was downloaded by this call.
        settings: What the result depends on besides the input files: fingerprinted and recorded
            in `dataset.json` (fractions, seed, near-duplicate distances, layout, labels, references).
        fingerprint: Hash of the input and `settings` (`freshness.inputs_fingerprint`).
        current: The data dir's manifest when it is already up to date (then nothing is written).
    """

    kind: str
    reading: SourcePlan
    source: dict
    archive: str | Path | None = None
    source_dir: str | Path | None = None
    synthetic: int | None = None
    downloaded: bool = False
    settings: dict = field(default_factory=dict)
    fingerprint: str = ""
    current: Manifest | None = None


@dataclass
class StagedFiles:
    """The dataset's files, in place under `images`, and the layout they were read in."""

    images: Path
    layout: Layout


@dataclass
class VerifiedImages:
    """What verification kept and left out.

    Attributes:
        table: The usable images, in layout order, as columns.
        classes: Their classes, sorted (label id = position); at least two.
        skipped: `(path, reason)` for every entry left out, layout and verification alike.
        n_files: Entries of the source tree considered (kept or skipped before verification).
        layout: The layout the files were read in, without its per-file records (dropped once the
            table holds what the later stages need of them).
    """

    table: ImageTable
    classes: list[str]
    skipped: list[tuple[str, str]]
    n_files: int
    layout: Layout


@dataclass
class Curated:
    """The images with their split and group, and what curation found on the way.

    Per image, in table order: `split` (int8 codes, positions in `splits.SPLITS`) and duplicate
    `cluster` (int32) as arrays; `group`, `lesion` and `patient` as sequences that look each name
    up when indexed (`table.Coded`). The manifest rows are made from them one at a time
    (`records`).

    Attributes:
        moved: Images moved out of their source split to keep a group whole.
        duplicates: Exact and near copies, their clusters and label conflicts.
        groups: `Grouping.summary` (groups, sizes, largest groups).
        provenance: `Provenance.report` when references were given, else None.
    """

    table: ImageTable
    split: np.ndarray
    cluster: np.ndarray
    group: Sequence[str]
    lesion: Sequence[str]
    patient: Sequence[str]
    moved: list[MovedImage] = field(default_factory=list)
    duplicates: DuplicateSummary | None = None
    groups: dict | None = None
    provenance: dict | None = None

    def records(self) -> Iterator[Record]:
        """One manifest row per verified image, in table order, each made when it is asked for."""
        for i, im in enumerate(self.table):
            path, attributes = f"images/{im.rel}", (im.row.attributes if im.row else ()) + im.skin
            yield Record(
                path,
                im.label,
                SPLITS[self.split[i]],
                im.sha256,
                int(self.cluster[i]),
                self.group[i],
                self.lesion[i],
                self.patient[i],
                attributes,
            )


@dataclass
class FetchReport:
    """What fetch did.

    Attributes:
        data_dir: The data dir.
        info: Its `dataset.json` content: source, counts, duplicates, moved images, label conflicts.
        skipped: `(path, reason)` for every entry left out (also in `skipped.csv` in the data dir);
            the reason's text before its first colon is its kind.
        changed: False when the data dir was already up to date and nothing was written.
        downloaded: True when the archive was downloaded in this call (Kaggle source only).
    """

    data_dir: Path
    info: DatasetInfo
    skipped: list[tuple[str, str]] = field(default_factory=list)
    changed: bool = True
    downloaded: bool = False
    loaded: Manifest | None = field(default=None, repr=False)

    @property
    def manifest(self) -> Manifest:
        """The resulting manifest, read from the data dir when first asked for: fetch itself never
        holds a record per image (401,059 for ISIC 2024)."""
        if self.loaded is None:
            self.loaded = load_manifest(self.data_dir)
        return self.loaded
