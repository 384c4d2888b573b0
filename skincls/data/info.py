"""`dataset.json`: a data dir's own record of what it holds and where it came from, as a typed model.

`fetch` writes it next to `manifest.csv`; `load_manifest`, `fetch`'s up-to-date check, the fetch
report and the model card read it through `DatasetInfo`, never key by key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..atomic import atomic_write
from ..errors import DataError
from .caveats import DatasetCaveats, caveats_for

__all__ = [
    "DATASET_JSON",
    "DatasetIdentity",
    "DatasetInfo",
    "DatasetSource",
    "DuplicateCluster",
    "DuplicateSummary",
    "GroupsSummary",
    "LabelsInfo",
    "MetadataSummary",
    "MovedImage",
    "ProvenanceSummary",
    "ReferenceInfo",
]

DATASET_JSON = "dataset.json"


class _Record(BaseModel):
    # A key this version does not know is a record from another skincls: refuse it rather than guess.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class DatasetSource(_Record):
    """Where the images came from: `kind` is kaggle, archive, source_dir or synthetic."""

    kind: str
    dataset: str | None = None  # the Kaggle dataset name (kind kaggle)
    archive: str | None = None  # the downloaded archive (kind kaggle)
    path: str | None = None  # the archive or folder given (kinds archive, source_dir)
    n: int | None = None  # images generated (kind synthetic)
    layout_root: str = "."  # the folder inside the source that holds split/class/file
    ignored_copies: dict[str, int] = Field(default_factory=dict)  # second copies: root → files


class DuplicateCluster(_Record):
    """Images that show one lesion (exact or near copies), kept together in `split`."""

    id: int
    paths: list[str]
    labels: list[str]
    source_splits: list[str]
    split: str


class DuplicateSummary(_Record):
    """What duplicate search found; pairs are (path, path, Hamming distance in bits)."""

    exact_groups: list[list[str]] = Field(default_factory=list)
    exact_images: int = 0
    near_pairs: int = 0
    near_pairs_exact: int = 0
    near_pairs_across_source_splits: int = 0
    rejected_pairs: list[tuple[str, str, int]] = Field(default_factory=list)
    rejected_pairs_across_source_splits: int = 0
    clusters: list[DuplicateCluster] = Field(default_factory=list)
    images_in_clusters: int = 0
    label_conflicts: list[DuplicateCluster] = Field(default_factory=list)


class MovedImage(_Record):
    """An image moved out of its source split so that its group (or duplicate cluster) stays whole."""

    path: str
    from_split: str = Field(alias="from")
    to: str
    cluster: int
    group: str = ""


class DatasetIdentity(_Record):
    """Which dataset the files were read as (`skincls.data.registry`), and in which layout."""

    name: str | None = None  # a registered name or Kaggle OWNER/NAME; None: unnamed
    title: str | None = None
    layout: str
    detected: bool = False  # the layout was detected from the files, not named


class LabelsInfo(_Record):
    """Where the classes come from: the task and, for diagnoses, the map to classes."""

    task: str  # folders, binary, multiclass or as_given
    rule: str | None = None
    map: dict[str, str] | None = None  # binary task: diagnosis code → class
    codes: dict[str, str] | None = None  # diagnosis code → what it means
    source: list[str] | None = None  # the metadata file(s) the labels were read from


class LabelsCsvOption(_Record):
    """The `labels_csv` file a data dir was prepared with (its hash is in the fingerprint)."""

    name: str
    sha256: str
    columns: list[Any]  # image column, label column, group columns (or None)


class MetadataSummary(_Record):
    """What a metadata CSV held and how its rows matched the images."""

    layout: str | None = None
    metadata_files: list[str] = Field(default_factory=list)
    rows: int = 0
    rows_used: int = 0
    rows_repeating_an_image: int = 0  # rows naming an image an earlier row names, same label
    rows_without_image: int = 0
    rows_without_image_examples: list[str] = Field(default_factory=list)
    rows_unreadable: list[tuple[str, str]] = Field(default_factory=list)  # (image, reason)
    diagnoses: dict[str, int] = Field(default_factory=dict)
    classes: dict[str, int] = Field(default_factory=dict)
    # Lesions whose photos carry different diagnoses (e.g. mel on one, nv on another), and how many
    # of them end up in different classes; examples: lesion id → diagnosis → images.
    lesions_with_several_diagnoses: int = 0
    lesions_with_several_classes: int = 0
    lesion_conflict_examples: dict[str, dict[str, int]] = Field(default_factory=dict)
    # The dataset's own labels → canonical codes (PAD-UFES-20, DDI, Fitzpatrick17k), and how.
    label_map: dict[str, str] = Field(default_factory=dict)
    label_notes: list[str] = Field(default_factory=list)
    # Binary task: diagnosis → images whose class by the map differs from the dataset's own label.
    label_disagreements: dict[str, int] = Field(default_factory=dict)


class LargestGroup(_Record):
    group: str
    images: int
    labels: dict[str, int]
    example: str
    split: str | None = None


class GroupsSummary(_Record):
    """Lesion, patient and duplicate groups joined (`skincls.data.grouping`): what stays together."""

    n_groups: int
    n_images: int
    groups_by_kind: dict[str, int] = Field(default_factory=dict)
    images_per_group: dict[str, int] = Field(default_factory=dict)  # group size → groups
    groups_with_several_images: int = 0
    groups_with_several_lesions: int = 0
    duplicates_joining_ids: int = 0
    largest: list[LargestGroup] = Field(default_factory=list)
    groups_across_splits: int | None = None


class ReferenceInfo(_Record):
    """A reference dataset given to `fetch(reference=...)` (`skincls.data.references`)."""

    name: str
    path: str
    images: int  # reference images with lesion/patient ids, hashed
    unreadable: int = 0


class ProvenanceSummary(_Record):
    """Which images are copies of reference images, per class, and the warnings that follow."""

    references: list[ReferenceInfo] = Field(default_factory=list)
    max_distance: int
    confirm_distance: int | None = None
    matched: int = 0  # images that are copies of a reference image
    ambiguous: int = 0  # images matching reference images of several lesions (all joined)
    per_class: dict[str, dict[str, int]] = Field(default_factory=dict)  # class → source → images
    warnings: list[str] = Field(default_factory=list)


class DatasetInfo(_Record):
    """The content of `dataset.json`. Only `classes` is required (a hand-made data dir may say little)."""

    classes: list[str]
    counts: dict[str, dict[str, int]] = Field(default_factory=dict)  # split → class → images
    format: int | None = None  # fetch's preparation version
    fingerprint: str | None = None  # hash of the inputs and options (fetch's up-to-date check)
    source: DatasetSource | None = None
    val_fraction: float | None = None
    test_fraction: float | None = None
    seed: int | None = None
    near_dup_distance: int | None = None
    near_dup_confirm: int | None = None
    layout: str | None = None  # the layout asked for: a dataset's (dataset=NAME) or "auto"
    labels_csv: LabelsCsvOption | None = None
    reference: list[str] | None = None  # fingerprints of the reference datasets
    class_order: str | None = None
    dataset: DatasetIdentity | None = None
    labels: LabelsInfo | None = None
    metadata: MetadataSummary | None = None
    n_files: int | None = None  # files in the source's dataset tree
    n_kept: int | None = None
    skipped: list[tuple[str, str]] = Field(default_factory=list)  # (path, reason)
    duplicates: DuplicateSummary | None = None
    groups: GroupsSummary | None = None
    provenance: ProvenanceSummary | None = None
    moved: list[MovedImage] = Field(default_factory=list)
    skin_tone: dict | None = None  # `skintone.skin_tone_summary`: ITA categories per split

    @property
    def dataset_name(self) -> str | None:
        """The named dataset these images are: the one downloaded by name, or the one an offline
        source was read as by name (`dataset=NAME`). None for synthetic data, a labels CSV and a
        source whose layout was only detected (a folder of class folders is not thereby the Kaggle
        dataset)."""
        if self.source is None or self.source.kind == "synthetic":
            return None
        if self.source.kind == "kaggle":
            return self.source.dataset
        named = self.layout not in (None, "auto") and self.dataset is not None
        return self.dataset.name if named else None

    @property
    def caveats(self) -> DatasetCaveats | None:
        """Known biases of the named source dataset; None for synthetic, custom or unnamed data."""
        return caveats_for(self.dataset_name)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, by_alias=True) + "\n"

    def save(self, data_dir: str | Path) -> Path:
        """Write `data_dir/dataset.json` atomically; returns its path."""
        path = Path(data_dir) / DATASET_JSON
        with atomic_write(path, "w") as fh:
            fh.write(self.to_json())
        return path

    @classmethod
    def read(cls, path: str | Path) -> DatasetInfo:
        """Read a `dataset.json` file.

        Raises:
            DataError: the file is missing, not JSON, or not a record this version writes.
        """
        path = Path(path)
        try:
            return cls.model_validate_json(path.read_bytes())
        except (OSError, ValidationError) as exc:
            why = "missing or unreadable" if isinstance(exc, OSError) else "not a valid record"
            raise DataError(f"{path} is {why}; run `skincls fetch` again") from exc

    @classmethod
    def load(cls, data_dir: str | Path) -> DatasetInfo:
        """Read `data_dir/dataset.json` (see `read`)."""
        return cls.read(Path(data_dir) / DATASET_JSON)
