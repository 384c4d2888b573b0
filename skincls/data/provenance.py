"""What a model was trained on: compact hashes of its train and val images and lesions, and overlap checks.

A checkpoint keeps the record (`training_data`); `skincls evaluate` compares the images of the split it
is given against it by content, not by path, so a copied or renamed data dir is still recognised; and
by the dataset's own lesion and patient ids, so another photo of a lesion the model was trained on
(other zoom, angle, day: no hash of the pixels finds it) is recognised too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .splits import Manifest, Record

__all__ = [
    "HASH_DIGITS",
    "Overlap",
    "find_overlap",
    "identity_hashes",
    "image_hashes",
    "is_training_data",
    "training_record",
]

HASH_DIGITS = 16
"""Hex digits kept of each image's SHA-256 (64 bits: no accidental match among millions of images)."""

_HASH = f"sha256 of the image file's bytes, first {HASH_DIGITS} hex digits"
_GROUP_HASH = (
    f"sha256 of 'lesion:<lesion_id>' or 'patient:<patient_id>', first {HASH_DIGITS} hex digits"
)


def image_hashes(manifest: Manifest, records: Iterable[Record]) -> list[str]:
    """The shortened content hash of each record (from the manifest; hashed from the file if absent)."""
    out = []
    for r in records:
        digest = r.sha256
        if not digest:  # a manifest written without hashes: hash the file the model reads
            digest = hashlib.sha256((manifest.root / r.path).read_bytes()).hexdigest()
        out.append(digest[:HASH_DIGITS].lower())
    return out


def identity_hashes(record: Record) -> list[str]:
    """Shortened hashes of the lesion and patient an image shows (none when the dataset has no ids).

    The ids are the dataset's own (HAM10000's `lesion_id`, ISIC 2020's `patient_id`), which other
    datasets reuse for the same lesion (ISIC 2019 keeps HAM10000's), so they match across data dirs.
    """
    out = []
    for kind, value in (("lesion", record.lesion_id), ("patient", record.patient_id)):
        if value:
            out.append(hashlib.sha256(f"{kind}:{value}".encode()).hexdigest()[:HASH_DIGITS])
    return out


def training_record(manifest: Manifest) -> dict[str, Any]:
    """What a checkpoint stores about its data: fingerprint, train/val image and lesion/patient hashes.

    Hashes only (sorted, shortened), no paths, labels or ids: about 20 bytes per image and lesion.
    """
    train, val = manifest.select("train"), manifest.select("val")
    return {
        "data_fingerprint": manifest.info.fingerprint,
        "hash": _HASH,
        "train": sorted(set(image_hashes(manifest, train))),
        "val": sorted(set(image_hashes(manifest, val))),
        "groups": {
            "hash": _GROUP_HASH,
            "train": sorted({h for r in train for h in identity_hashes(r)}),
            "val": sorted({h for r in val for h in identity_hashes(r)}),
        },
    }


def is_training_data(record: Mapping[str, Any] | None, manifest: Manifest) -> bool | None:
    """Whether `manifest` is the data a checkpoint's `training_data` record was made from; None
    without a record (nothing tells).

    It is when the data dir has the recorded fingerprint (fetch's inputs and options), or else when
    its images outside the test split are the model's training and validation images, by content
    hash (a copied, touched or hand-made data dir; an ensemble of CV folds): then its test split is
    the model's own held-out test set. Another dataset, or the same images split again, is not.
    """
    if not record or "train" not in record:
        return None
    fp = record.get("data_fingerprint")
    if fp is not None and fp == manifest.info.fingerprint:
        return True
    recorded = set(record.get("train") or ()) | set(record.get("val") or ())
    held = [r for r in manifest.records if r.split != "test"]
    return set(image_hashes(manifest, held)) == recorded


@dataclass(frozen=True)
class Overlap:
    """What of one split the model saw while training: its images, or their lesions and patients.

    Each image counts once, under the first of: a training image itself (`in_train`, content hash);
    another photo of a training lesion or patient (`lesion_in_train`, matched by id); a validation
    image itself (`in_val`); another photo of a validation lesion or patient (`lesion_in_val`).
    """

    split: str
    n_images: int
    in_train: int
    in_val: int
    same_data_dir: bool  # the split's data dir has the fingerprint of the training data dir
    lesion_in_train: int = 0
    lesion_in_val: int = 0

    @property
    def any(self) -> bool:
        return bool(self.in_train or self.in_val or self.lesion_in_train or self.lesion_in_val)

    @property
    def trained_on(self) -> int:
        """Images the model was fitted to: themselves, or another photo of their lesion or patient."""
        return self.in_train + self.lesion_in_train

    def describe(self) -> str:
        """One line: what overlaps and what that means for the numbers."""
        parts = []
        seen = [
            f"{n} {what}"
            for n, what in (
                (self.in_train, "as training images"),
                (self.in_val, "as validation images"),
            )
            if n
        ]
        if seen:
            parts.append(
                f"{self.in_train + self.in_val} of the {self.n_images} {self.split} images were seen "
                f"in training ({' and '.join(seen)}, matched by content hash)"
            )
        same = [
            what
            for n, what in ((self.lesion_in_train, "training"), (self.lesion_in_val, "validation"))
            if n
        ]
        if same:
            n = self.lesion_in_train + self.lesion_in_val
            parts.append(
                f"{n} {'more ' if seen else ''}of the {self.n_images} {self.split} images show a "
                f"lesion or patient of the {' and '.join(same)} images (another photo of it, matched "
                "by lesion/patient id)"
            )
        return "; ".join(parts) + ": these numbers are not a held-out estimate"

    def refusal(self, what: str) -> str | None:
        """Why fitting (`what`: calibrate, choose a threshold) on this split is refused; None if not."""
        if not self.trained_on:
            return None
        how = []
        if self.in_train:
            how.append(
                f"{self.in_train} of its {self.n_images} images are this model's training images "
                "(matched by content hash)"
            )
        if self.lesion_in_train:
            how.append(
                f"{self.lesion_in_train} {'more' if self.in_train else f'of its {self.n_images}'} "
                "images show a lesion or patient it was trained on (another photo, matched by "
                "lesion/patient id)"
            )
        return (
            f"refusing to {what} on the {self.split} split: {' and '.join(how)}; use images it was "
            "not trained on, such as the val split of its own data dir"
        )


def find_overlap(
    record: Mapping[str, Any] | None, manifest: Manifest, split: str
) -> Overlap | None:
    """Compare a split's images with a checkpoint's `training_data` record; None without a record."""
    if not record or "train" not in record:
        return None
    train, val = set(record.get("train") or ()), set(record.get("val") or ())
    groups = record.get("groups") or {}  # absent in checkpoints made before groups were recorded
    g_train, g_val = set(groups.get("train") or ()), set(groups.get("val") or ())
    records = manifest.select(split)
    hashes = image_hashes(manifest, records)
    in_train = in_val = lesion_in_train = lesion_in_val = 0
    for h, r in zip(hashes, records):
        ids = identity_hashes(r)
        if h in train:
            in_train += 1
        elif any(i in g_train for i in ids):  # a validation image can show a training lesion too
            lesion_in_train += 1
        elif h in val:
            in_val += 1
        elif any(i in g_val for i in ids):
            lesion_in_val += 1
    fp = record.get("data_fingerprint")
    return Overlap(
        split=split,
        n_images=len(hashes),
        in_train=in_train,
        in_val=in_val,
        same_data_dir=fp is not None and fp == manifest.info.fingerprint,
        lesion_in_train=lesion_in_train,
        lesion_in_val=lesion_in_val,
    )
