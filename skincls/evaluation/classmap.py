"""Class mapping: measure a model on a dataset whose label set differs from the one it learnt.

External validation (a HAM10000 model on PAD-UFES-20, a benign/malignant model on DDI) needs each of
the data's classes matched to one of the model's: by the same name, else by the same canonical
diagnosis code (`MEL`, `melanoma` → mel), else, for a benign/malignant model and data whose classes
are diagnosis codes, by the binary map the model was trained with (recorded in its checkpoint; the
default map when it has none). Images of a class the model does not know are counted and reported
(`ClassMapping`), never measured as if they were another class, and never silently dropped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from pydantic import BaseModel

from ..data.dataset import ManifestDataset
from ..data.metadata import BENIGN, DEFAULT_BINARY_MAP, MALIGNANT, normalise_diagnosis
from ..data.splits import Manifest, Record
from ..errors import DataError, opt

__all__ = ["ClassMapping", "map_classes", "mapped_dataset"]


class ClassMapping(BaseModel):
    """How a dataset's classes were matched to a model's, and what of one split that left out.

    Attributes:
        data_classes: The dataset's classes; model_classes: the model's.
        mapped: Data class → the model class its images count as.
        how: Data class → how it was matched (`same name`, `diagnosis code`, `binary map`).
        unknown: Data classes the model does not know: their images are not measured.
        split: The split counted below (None until counted).
        images: Data class → images of the split (all classes, mapped or not).
        left_out: Images of the split of `unknown` classes.
    """

    data_classes: list[str]
    model_classes: list[str]
    mapped: dict[str, str]
    how: dict[str, str]
    unknown: list[str] = []
    split: str | None = None
    images: dict[str, int] = {}
    left_out: int = 0

    def counted(self, records: Sequence[Record], split: str) -> ClassMapping:
        """This mapping with the images of `records` (one split) counted per data class."""
        images = Counter(r.label for r in records)
        return self.model_copy(
            update={
                "split": split,
                "images": {c: images[c] for c in self.data_classes},
                "left_out": sum(images[c] for c in self.unknown),
            }
        )

    def lines(self) -> list[str]:
        """The mapping as report lines, and a warning when images were left out."""
        where = {None: "", "all": " in all splits"}.get(self.split, f" in the {self.split} split")
        parts = [
            f"{d} → {m} ({self.images.get(d, 0)}, {self.how[d]})" for d, m in self.mapped.items()
        ]
        out = [f"Class mapping (data → model, images{where}): " + "; ".join(parts)]
        if self.unknown:
            unknown = ", ".join(f"{c} ({self.images.get(c, 0)})" for c in self.unknown)
            out.append(f"Not classes of the model, left out of every metric: {unknown}")
        if self.left_out:
            total = sum(self.images.values())
            out.append(
                f"WARNING: {self.left_out} of {total} images{where} are of classes the model "
                f"does not know; the metrics below are of the other {total - self.left_out}"
            )
        return out


def map_classes(
    data_classes: Sequence[str], model_classes: Sequence[str], labels: dict | None = None
) -> ClassMapping:
    """Match each data class to a model class (see the module's rule).

    Args:
        data_classes: The dataset's classes (its manifest's).
        model_classes: The model's classes.
        labels: The checkpoint's record of how its classes were made (`LabelsInfo`): its binary
            map, if any, maps diagnosis codes to benign/malignant.

    Raises:
        DataError: no data class matches any model class.
    """
    by_code = {normalise_diagnosis(m): m for m in model_classes}
    binary = set(model_classes) == {BENIGN, MALIGNANT}
    bmap = (labels or {}).get("map") or DEFAULT_BINARY_MAP
    mapped, how, unknown = {}, {}, []
    for d in data_classes:
        code = normalise_diagnosis(d)
        if d in model_classes:
            mapped[d], how[d] = d, "same name"
        elif code in by_code:
            mapped[d], how[d] = by_code[code], "diagnosis code"
        elif binary and code in bmap:
            mapped[d], how[d] = bmap[code], "binary map"
        else:
            unknown.append(d)
    if not mapped:
        raise DataError(
            f"none of the data's classes {list(data_classes)} is one of the model's "
            f"{list(model_classes)} (matched by name, diagnosis code, or for a benign/malignant "
            "model the binary map): evaluate on data with diagnoses, e.g. fetched with "
            f"{opt('task', value='multiclass')}"
        )
    return ClassMapping(
        data_classes=list(data_classes),
        model_classes=list(model_classes),
        mapped=mapped,
        how=how,
        unknown=unknown,
    )


def mapped_dataset(
    manifest: Manifest, split: str, transform, mapping: ClassMapping, metadata=None, extra=None
) -> ManifestDataset:
    """The split's images of mapped classes, labelled with the model's class indices.

    Raises:
        DataError: none of the split's images is of a class the model knows.
    """
    ds = ManifestDataset(manifest, split, transform, metadata=metadata, extra=extra)
    keep = [i for i, r in enumerate(ds.records) if r.label in mapping.mapped]
    ds.records = [ds.records[i] for i in keep]
    if ds.metadata_matrix is not None:  # a fused model's rows, kept in step with the records
        ds.metadata_matrix = ds.metadata_matrix[keep]
    if not ds.records and manifest.select(split):
        raise DataError(
            f"none of the {split} split's images is of a class the model knows "
            f"(its classes there: {sorted({r.label for r in manifest.select(split)})})"
        )
    ds.classes = list(mapping.model_classes)
    ds.targets = [ds.classes.index(mapping.mapped[r.label]) for r in ds.records]
    return ds
