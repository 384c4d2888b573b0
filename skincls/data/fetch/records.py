"""Records fetch's stages hand one another: the options, the plan, staged, verified and curated images.

plan (`FetchPlan`) → stage (`StagedFiles`) → verify (`VerifiedImages`) → curate (`Curated`) → write
(`Manifest`, reported as `FetchReport`). Each stage reads `FetchOptions` and the record before it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..dedup import DEFAULT_CONFIRM_DISTANCE, DEFAULT_NEAR_DUP_DISTANCE
from ..download import DatasetClient
from ..info import DatasetInfo, DuplicateSummary, MovedImage
from ..ingest import MAX_ARCHIVE_BYTES, Layout
from ..metadata import MetaRow
from ..sources import SourcePlan
from ..splits import Manifest, Record

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


@dataclass(frozen=True)
class VerifiedImage:
    """An image that decoded: its path under `images/`, class, source split, hashes and metadata.

    Attributes:
        rel: Path relative to `images/` (`train/benign/3.jpg`).
        label: Its class.
        split: The split its source put it in, or None.
        sha256: Hash of its bytes.
        hashes: (2, 8) perceptual hashes (`dedup.perceptual_hashes`).
        row: Its metadata row (lesion and patient ids), or None in a class-folder layout.
        skin: Its estimated skin tone, `(("ita", "…"), ("skin_tone", "…"))` (`data.skintone`).
    """

    rel: str
    label: str
    split: str | None
    sha256: str
    hashes: np.ndarray
    row: MetaRow | None = None
    skin: tuple[tuple[str, str], ...] = ()


@dataclass
class VerifiedImages:
    """What verification kept and left out.

    Attributes:
        images: The usable images, in layout order.
        classes: Their classes, sorted (label id = position); at least two.
        skipped: `(path, reason)` for every entry left out, layout and verification alike.
        n_files: Entries of the source tree considered (kept or skipped before verification).
        layout: The layout the files were read in.
    """

    images: list[VerifiedImage]
    classes: list[str]
    skipped: list[tuple[str, str]]
    n_files: int
    layout: Layout


@dataclass
class Curated:
    """The images with their split and group, and what curation found on the way.

    Attributes:
        records: One manifest row per verified image, in the same order.
        moved: Images moved out of their source split to keep a group whole.
        duplicates: Exact and near copies, their clusters and label conflicts.
        groups: `Grouping.summary` (groups, sizes, largest groups).
        provenance: `Provenance.report` when references were given, else None.
    """

    records: list[Record]
    moved: list[MovedImage] = field(default_factory=list)
    duplicates: DuplicateSummary | None = None
    groups: dict | None = None
    provenance: dict | None = None


@dataclass
class FetchReport:
    """What fetch did.

    Attributes:
        manifest: The resulting manifest (its `info` is `dataset.json`).
        skipped: `(path, reason)` for every entry left out (also in `skipped.csv` in the data dir);
            the reason's text before its first colon is its kind.
        changed: False when the data dir was already up to date and nothing was written.
        downloaded: True when the archive was downloaded in this call (Kaggle source only).
    """

    manifest: Manifest
    skipped: list[tuple[str, str]] = field(default_factory=list)
    changed: bool = True
    downloaded: bool = False

    @property
    def info(self) -> DatasetInfo:
        """The dataset.json content: source, duplicates, moved images, label conflicts."""
        return self.manifest.info
