"""Sources: what `fetch` is asked to read, resolved once: the dataset's layout, task and label map.

`plan_source` turns the options (`dataset`, `task`, `malignant`, `labels_csv` …) into a
`SourcePlan` that fetch hands to ingest as a selector, fingerprints, and records in `dataset.json`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError, opt
from .ingest import Layout
from .isic2024 import LABEL_RULE
from .layouts import LabelsCsv, MetadataLayout, Selector, make_selector
from .metadata import LabelPolicy, binary_map
from .registry import DatasetSpec, get_dataset

__all__ = ["SourcePlan", "plan_source"]


@dataclass
class SourcePlan:
    """How to read a source: its spec, how diagnoses become classes, and an optional labels CSV."""

    spec: DatasetSpec
    policy: LabelPolicy
    labels_csv: LabelsCsv | None = None
    task_given: bool = False
    forced: bool = False  # the layout was named (dataset=NAME), not detected

    def selector(self) -> Selector:
        """The `select` callable for `ingest.extract_archive` / `copy_source`."""
        layout = self.spec.layout if self.forced else "auto"
        return make_selector(layout, self.policy, self.labels_csv, task_given=self.task_given)

    def check_downloadable(self) -> None:
        """Raise when the dataset cannot come through the Kaggle dataset API (a competition)."""
        if not self.spec.kaggle:
            raise DataError(f"{self.spec.name} cannot be downloaded here: {self.spec.notes}")

    def options(self) -> dict:
        """What the prepared data depends on besides the input files (part of the fingerprint)."""
        out: dict = {"layout": self.spec.layout if self.forced else "auto"}
        out["labels"] = self.policy.describe()
        if self.labels_csv is not None:
            c = self.labels_csv
            out["labels_csv"] = {
                "name": c.name,
                "sha256": hashlib.sha256(c.data).hexdigest(),
                "columns": [c.image_column, c.label_column, c.group_columns],
            }
        return out

    def generate_synthetic(self, root: Path, n: int, seed: int) -> None:
        """Write `n` synthetic images in this dataset's layout (class folders or HAM10000-like)."""
        from .synthetic import generate_synthetic
        from .synthetic_metadata import generate_synthetic_metadata

        layout = self.spec.layout if self.forced else "folders"
        if layout == "folders":
            if self.task_given:
                ham = opt("synthetic=N", "dataset='ham10000'")
                raise DataError(
                    f"{opt('task')} and {opt('malignant')} need diagnoses: use {ham} for a "
                    "HAM10000-like synthetic dataset"
                )
            generate_synthetic(root, n, seed=seed)
        elif layout == "ham10000":
            generate_synthetic_metadata(root, n, seed=seed)
        else:
            raise DataError(
                f"no synthetic generator for the {layout} layout; use "
                f"{opt('dataset', value='ham10000')} or the default"
            )

    def describe(self, layout: Layout) -> dict:
        """The `dataset` entry of `dataset.json`: which dataset and layout the files were read as."""
        name = layout.summary.get("layout") if isinstance(layout, MetadataLayout) else "folders"
        if self.labels_csv is not None:
            return {"name": None, "layout": "labels_csv"}
        if self.forced or name == self.spec.layout:
            return {"name": self.spec.name, "title": self.spec.title, "layout": name}
        return {"name": None, "layout": name, "detected": True}

    def labels_info(self, layout: Layout) -> dict:
        """The `labels` entry of `dataset.json`: task, map, and where the classes come from."""
        if isinstance(layout, MetadataLayout) and layout.summary.get("layout") == "isic2024":
            return {
                "task": "binary",
                "rule": "the metadata's own target column: 1 → malignant, 0 → benign",
                "map": LABEL_RULE,
                "source": layout.summary.get("metadata_files"),
            }
        if isinstance(layout, MetadataLayout):
            return {**self.policy.describe(), "source": layout.summary.get("metadata_files")}
        return {"task": "folders", "rule": "classes are the class folder names"}


def plan_source(
    dataset: str,
    *,
    task: str | None = None,
    malignant: Sequence[str] | None = None,
    labels_csv: str | Path | None = None,
    image_column: str = "image",
    label_column: str = "label",
    group_columns: Sequence[str] | None = None,
    forced: bool = False,
) -> SourcePlan:
    """Resolve the options of `fetch` into a `SourcePlan`.

    Args:
        dataset: A registered name or alias, or a Kaggle OWNER/NAME.
        task: `binary` or `multiclass`; None: binary for metadata datasets, the folder names for
            class-folder ones, the label column as given for a labels CSV.
        malignant: Diagnosis codes that count as malignant in the binary task (default map:
            `metadata.DEFAULT_BINARY_MAP`).
        labels_csv: A CSV naming each image's label (and optional group columns).
        image_column: The labels CSV's image column (file name, stem or relative path).
        label_column: Its label column.
        group_columns: Its group columns (default: `lesion_id`, `patient_id`, `group` if present).
        forced: Read the source in `dataset`'s layout rather than detecting it.

    Raises:
        DataError: unknown dataset or codes, `malignant` with the multiclass task, unreadable CSV.
    """
    spec = get_dataset(dataset)
    if malignant is not None and task == "multiclass":
        raise DataError(
            f"{opt('malignant')} applies to the binary task, not to "
            f"{opt('task', value='multiclass')}"
        )
    policy = LabelPolicy(task or "binary", binary_map(malignant))
    csv = None
    if labels_csv is not None:
        path = Path(labels_csv)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(
                f"cannot read {opt('labels_csv')} {path}: {exc.strerror or exc}"
            ) from None
        csv = LabelsCsv(
            data,
            path.name,
            image_column,
            label_column,
            tuple(group_columns) if group_columns else None,
        )
        policy.as_given = task is None
    given = task is not None or malignant is not None
    return SourcePlan(spec, policy, csv, task_given=given, forced=forced)
