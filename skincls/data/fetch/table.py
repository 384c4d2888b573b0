"""The verified images as columns: a few fixed-width values per image, not objects per image.

ISIC 2024 has 401,059 images: one dataclass, tuple and string per image and field cost ~4 KB an
image in the fetch process. Here an image costs its path, its perceptual hashes (128 bytes), its
SHA-256 (64) and four codes (16); each distinct class, source split, skin tone and metadata row
(lesion, patient, attributes) is kept once (`Pool`), however many images share it.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

import numpy as np

from ..metadata import MetaRow

__all__ = ["ImageTable", "Pool", "VerifiedImage"]

_NO_ROW = MetaRow("", "")
_FIELDS = ("label", "split", "skin", "row")  # the codes kept per image, in this order


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


class Pool:
    """Distinct values, each kept once and named by its code (its position in `values`)."""

    def __init__(self) -> None:
        self.values: list = []
        self._codes: dict = {}

    def code(self, value) -> int:
        found = self._codes.get(value)
        if found is None:
            found = self._codes[value] = len(self.values)
            self.values.append(value)
        return found


class ImageTable:
    """The verified images, in order: their paths, hashes, SHA-256 and pooled fields.

    Attributes:
        rel: Path relative to `images/` per image (`train/benign/3.jpg`).
        pools: The distinct labels, source splits (None: none), skin tones and metadata rows.
    """

    def __init__(self, capacity: int) -> None:
        self.rel: list[str] = []
        self._hashes = np.empty((capacity, 2, 8), np.uint64)
        self._sha = bytearray()  # 64 ASCII hex digits per image
        self._codes = array("I")  # len(_FIELDS) codes per image
        self.pools = {name: Pool() for name in _FIELDS}

    def __len__(self) -> int:
        return len(self.rel)

    def append(self, rel, label, split, sha256, hashes, row=None, skin=()) -> None:
        """Add one image (the fields of `VerifiedImage`); `capacity` images at most."""
        if len(sha256) != 64:
            raise ValueError(f"a SHA-256 is 64 hex digits, not {sha256!r}")
        self._hashes[len(self.rel)] = hashes
        self._sha += sha256.encode("ascii")
        # Only what the manifest and the groups need of the row: rows differing in image alone
        # (a patient's images, one lesion's photos) share one.
        row = replace(row, image="", diagnosis="", malignant=None) if row is not None else _NO_ROW
        p = self.pools
        self._codes.extend(
            (
                p["label"].code(label),
                p["split"].code(split),
                p["skin"].code(skin),
                p["row"].code(row),
            )
        )
        self.rel.append(rel)

    @classmethod
    def of(cls, images: Iterable[VerifiedImage]) -> ImageTable:
        """A table of these images (tests and small sources)."""
        images = list(images)
        table = cls(len(images))
        for im in images:
            table.append(im.rel, im.label, im.split, im.sha256, im.hashes, im.row, im.skin)
        return table

    @property
    def hashes(self) -> np.ndarray:
        """(N, 2, 8) perceptual hashes (`dedup.perceptual_hashes`)."""
        return self._hashes[: len(self.rel)]

    @property
    def sha256(self) -> np.ndarray:
        """(N,) SHA-256 of each image's bytes, ASCII hex (`S64`)."""
        return np.frombuffer(self._sha, dtype="S64")

    def column(self, name: str) -> list:
        """One pooled field per image: `label`, `split`, `skin` or `row` (a `MetaRow`, its image
        and diagnosis blank; blank altogether where the image has none)."""
        values = self.pools[name].values
        return [values[c] for c in self._codes[_FIELDS.index(name) :: len(_FIELDS)]]

    def skin_pairs(self) -> np.ndarray:
        """(N, 2) ITA and skin tone per image, "" where unknown."""
        pairs = [
            (dict(s).get("ita", ""), dict(s).get("skin_tone", ""))
            for s in self.pools["skin"].values
        ]
        codes = np.frombuffer(self._codes, np.uint32)[_FIELDS.index("skin") :: len(_FIELDS)]
        return np.array(pairs or [("", "")], dtype=str)[codes]

    def __iter__(self) -> Iterator[VerifiedImage]:
        """The images one at a time, as `VerifiedImage`s (made as they are asked for)."""
        values = [self.pools[name].values for name in _FIELDS]
        k = len(_FIELDS)
        for i, rel in enumerate(self.rel):
            label, split, skin, row = (v[c] for v, c in zip(values, self._codes[k * i : k * i + k]))
            sha = self._sha[64 * i : 64 * i + 64].decode("ascii")
            yield VerifiedImage(rel, label, split, sha, self._hashes[i], row, skin)
