"""What a model was trained on: compact content hashes of its train and val images, and overlap checks.

A checkpoint keeps the record (`training_data`); `skincls evaluate` compares the images of the split it
is given against it by content, not by path, so a copied or renamed data dir is still recognised.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .splits import Manifest, Record

__all__ = ["HASH_DIGITS", "Overlap", "find_overlap", "image_hashes", "training_record"]

HASH_DIGITS = 16
"""Hex digits kept of each image's SHA-256 (64 bits: no accidental match among millions of images)."""

_HASH = f"sha256 of the image file's bytes, first {HASH_DIGITS} hex digits"


def image_hashes(manifest: Manifest, records: Iterable[Record]) -> list[str]:
    """The shortened content hash of each record (from the manifest; hashed from the file if absent)."""
    out = []
    for r in records:
        digest = r.sha256
        if not digest:  # a manifest written without hashes: hash the file the model reads
            digest = hashlib.sha256((manifest.root / r.path).read_bytes()).hexdigest()
        out.append(digest[:HASH_DIGITS].lower())
    return out


def training_record(manifest: Manifest) -> dict[str, Any]:
    """What a checkpoint stores about its data: the data dir's fingerprint and train/val image hashes.

    Hashes only (sorted, shortened), no paths or labels: about 20 bytes per image.
    """
    return {
        "data_fingerprint": manifest.info.fingerprint,
        "hash": _HASH,
        "train": sorted(set(image_hashes(manifest, manifest.select("train")))),
        "val": sorted(set(image_hashes(manifest, manifest.select("val")))),
    }


@dataclass(frozen=True)
class Overlap:
    """How many images of one split the model saw while training (as train or as val images)."""

    split: str
    n_images: int
    in_train: int
    in_val: int
    same_data_dir: bool  # the split's data dir has the fingerprint of the training data dir

    @property
    def any(self) -> bool:
        return bool(self.in_train or self.in_val)

    def describe(self) -> str:
        """One line: what overlaps and what that means for the numbers."""
        seen = []
        if self.in_train:
            seen.append(f"{self.in_train} as training images")
        if self.in_val:
            seen.append(f"{self.in_val} as validation images")
        return (
            f"{self.in_train + self.in_val} of the {self.n_images} {self.split} images were seen in "
            f"training ({' and '.join(seen)}, matched by content hash): these numbers are not a "
            "held-out estimate"
        )


def find_overlap(
    record: Mapping[str, Any] | None, manifest: Manifest, split: str
) -> Overlap | None:
    """Compare a split's images with a checkpoint's `training_data` record; None without a record."""
    if not record or "train" not in record:
        return None
    train, val = set(record.get("train") or ()), set(record.get("val") or ())
    hashes = image_hashes(manifest, manifest.select(split))
    in_train = sum(h in train for h in hashes)
    in_val = sum(h in val and h not in train for h in hashes)
    fp = record.get("data_fingerprint")
    return Overlap(
        split=split,
        n_images=len(hashes),
        in_train=in_train,
        in_val=in_val,
        same_data_dir=fp is not None and fp == manifest.info.fingerprint,
    )
