"""The verified images as columns: a few fixed-width values per image, not objects per image.

ISIC 2024 has 401,059 images: one dataclass, tuple and string per image and field cost ~4 KB an
image in the fetch process. Here an image costs its path's bytes (in one blob), its perceptual
hashes (128 bytes), its SHA-256 (32) and four codes (16); each distinct class, source split, skin
tone and metadata row (lesion, patient, attributes) is kept once (`Pool`), however many images
share it. Columns are read back as arrays of codes (`codes`) or as sequences made when indexed
(`Coded`), never as a list per image.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..hashcache import sha256_hex
from ..lazy import Mapped
from ..metadata import MetaRow

__all__ = ["COLUMNS", "Coded", "Column", "ImageTable", "Pool", "VerifiedImage"]

COLUMNS = ".columns.partial"  # the data dir's folder for a fetch's file-backed columns

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


class Column:
    """Fixed-width values appended one after another, read back as one array. In memory, or with a
    `path` (a new file): appended there a chunk (64 KiB: a table's 4 columns buffer 256 KiB
    whatever the number of images) at a time and read back memory-mapped, read-only, so the
    page cache holds them, not the process's own memory."""

    _CHUNK = 1 << 16

    def __init__(self, dtype: np.dtype | str, path: Path | None = None) -> None:
        self.dtype, self.path = np.dtype(dtype), path
        self._buf = bytearray()
        self._written = 0  # bytes in the file
        self._mapped: np.ndarray | None = None
        if path is not None:
            path.write_bytes(b"")

    def extend(self, data: bytes) -> None:
        """Append values as their bytes (`dtype`'s layout)."""
        self._buf += data
        if self.path is not None and len(self._buf) >= self._CHUNK:
            self._write()

    def _write(self) -> None:
        with open(self.path, "ab") as fh:
            fh.write(self._buf)
        self._written += len(self._buf)
        self._buf = bytearray()

    @property
    def array(self) -> np.ndarray:
        """The values appended so far, (N,) of `dtype`: with a `path`, a read-only memory map."""
        if self.path is None:
            return np.frombuffer(self._buf, self.dtype)
        if self._buf:
            self._write()
        n = self._written // self.dtype.itemsize
        if not n:  # (an empty file cannot be mapped)
            return np.empty(0, self.dtype)
        if self._mapped is None or len(self._mapped) != n:
            self._mapped = np.memmap(self.path, self.dtype, "r", shape=(n,))
        return self._mapped


class Coded(Sequence):
    """A value per item, looked up when asked for: `values[codes[i]]` (`values` may itself be
    any sequence, e.g. one that makes its values)."""

    def __init__(self, codes: np.ndarray, values: Sequence) -> None:
        self.codes, self.values = codes, values

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.values[c] for c in self.codes[i].tolist()]
        return self.values[int(self.codes[i])]

    def __iter__(self) -> Iterator:
        for start in range(0, len(self.codes), 1 << 16):
            yield from self[start : start + (1 << 16)]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.asarray(list(self.values), dtype=dtype)[self.codes]


class ImageTable:
    """The verified images, in order: their paths, hashes, SHA-256 and pooled fields.

    With a `folder`, every per-image column (perceptual hashes, SHA-256, codes, paths: ~220 bytes
    an image) is a file there, read back memory-mapped: the page cache holds them, not the
    process's own memory, which keeps the pools alone (a value per distinct class, split, skin
    tone and metadata row).

    Attributes:
        pools: The distinct labels, source splits (None: none), skin tones and metadata rows.
    """

    def __init__(self, capacity: int, folder: Path | None = None) -> None:
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        if folder is None or not capacity:  # (an empty file cannot be mapped)
            self._hashes = np.empty((capacity, 2, 8), np.uint64)
        else:
            self._hashes = np.lib.format.open_memmap(
                folder / "hashes.npy", "w+", np.uint64, (capacity, 2, 8)
            )
        file = (lambda name: folder / name) if folder is not None else (lambda name: None)
        self._sha = Column("V32", file("sha256.bin"))  # 32 bytes per image
        self._rel = Column(np.uint8, file("paths.bin"))  # each path's UTF-8 bytes, in turn
        self._ends = Column("<u8", file("path_ends.bin"))  # where each path's bytes end in `_rel`
        self._codes = Column("<u4", file("codes.bin"))  # len(_FIELDS) codes per image
        self._n, self._rel_end = 0, 0
        self.pools = {name: Pool() for name in _FIELDS}

    def __len__(self) -> int:
        return self._n

    def append(self, rel, label, split, sha256, hashes, row=None, skin=()) -> None:
        """Add one image (the fields of `VerifiedImage`); `capacity` images at most."""
        if len(sha256) != 64:
            raise ValueError(f"a SHA-256 is 64 hex digits, not {sha256!r}")
        self._hashes[len(self)] = hashes
        self._sha.extend(bytes.fromhex(sha256))
        # Only what the manifest and the groups need of the row: rows differing in image alone
        # (a patient's images, one lesion's photos) share one.
        row = row.grouping() if row is not None else _NO_ROW
        p = self.pools
        codes = (p["label"].code(label), p["split"].code(split), p["skin"].code(skin))
        self._codes.extend(struct.pack("<4I", *codes, p["row"].code(row)))
        path = rel.encode("utf-8", "surrogatepass")  # any str, undecodable names too
        self._rel.extend(path)
        self._rel_end += len(path)
        self._ends.extend(struct.pack("<Q", self._rel_end))
        self._n += 1

    @classmethod
    def of(cls, images: Iterable[VerifiedImage]) -> ImageTable:
        """A table of these images (tests and small sources)."""
        images = list(images)
        table = cls(len(images))
        for im in images:
            table.append(im.rel, im.label, im.split, im.sha256, im.hashes, im.row, im.skin)
        return table

    @property
    def rel(self) -> Sequence[str]:
        """Path relative to `images/` per image (`train/benign/3.jpg`), made when indexed."""
        return Mapped(len(self), self._path)

    def _path(self, i: int) -> str:
        ends = self._ends.array
        start = int(ends[i - 1]) if i else 0
        return self._rel.array[start : int(ends[i])].tobytes().decode("utf-8", "surrogatepass")

    @property
    def hashes(self) -> np.ndarray:
        """(N, 2, 8) perceptual hashes (`dedup.perceptual_hashes`)."""
        return self._hashes[: len(self)]

    @property
    def sha256(self) -> np.ndarray:
        """(N,) SHA-256 of each image's bytes, ASCII hex (`S64`)."""
        return sha256_hex(self._sha.array)

    @property
    def sha256_raw(self) -> np.ndarray:
        """(N,) SHA-256 of each image's bytes, 32 raw bytes each (`V32`): with a folder, the
        column's read-only memory map, no copy; in memory, a copy."""
        return self._sha.array if self._sha.path is not None else np.array(self._sha.array)

    def sha_hex(self, i: int) -> str:
        """Image `i`'s SHA-256, hex."""
        return self._sha.array[i].tobytes().hex()

    def codes(self, name: str) -> np.ndarray:
        """(N,) codes of one pooled field (`label`, `split`, `skin`, `row`): positions in
        `pools[name].values`, as they are kept: uint32, a read-only view of the codes column
        (memory-mapped with a folder), no copy: 0 bytes an image in the process's own memory."""
        return self._codes.array[_FIELDS.index(name) :: len(_FIELDS)]

    def values(self, name: str) -> Coded:
        """One pooled field per image, looked up when indexed: `label`, `split`, `skin` or `row`
        (a `MetaRow`, its image and diagnosis blank; blank altogether where the image has none)."""
        return Coded(self.codes(name), self.pools[name].values)

    def column(self, name: str) -> list:
        """`values(name)` as a list (tests and small sources)."""
        return list(self.values(name))

    def skin_table(self) -> tuple[np.ndarray, np.ndarray]:
        """Each image's skin tone as (N,) codes (a view, no copy) into (K, 2) distinct ITA and
        skin tone pairs, "" where unknown: 4 bytes an image."""
        pairs = [
            (dict(s).get("ita", ""), dict(s).get("skin_tone", ""))
            for s in self.pools["skin"].values
        ]
        return self.codes("skin"), np.array(pairs, dtype=str).reshape(-1, 2)

    def __iter__(self) -> Iterator[VerifiedImage]:
        """The images one at a time, as `VerifiedImage`s (made as they are asked for)."""
        values = [self.pools[name].values for name in _FIELDS]
        k, codes = len(_FIELDS), self._codes.array
        for i, rel in enumerate(self.rel):
            label, split, skin, row = (v[c] for v, c in zip(values, codes[k * i : k * i + k]))
            yield VerifiedImage(rel, label, split, self.sha_hex(i), self._hashes[i], row, skin)
