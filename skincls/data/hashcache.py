"""Hash cache: each image's perceptual hashes and skin tone, kept by the SHA-256 of its bytes.

Decoding and hashing an image in its 8 orientations is most of what fetch spends per image. The
results depend on the bytes alone, so a re-fetch, or a dataset that grew, looks each file's SHA-256
up here and decodes only images it has not seen. The cache names the decoder and hashes it was made
with (`CACHE_VERSION`); a cache of another version is ignored, never mixed in. It is held as
fixed-width arrays (~200 bytes an image), searched by sorted SHA-256: no object per image. Skin
tones are stored as a code per image into a table of the distinct (ITA, skin tone) pairs; caches
written before (an (N, 2) array of pairs, `skin`) are still read.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from .dedup import shared_indices
from .images import DECODER
from .ingest import Inspection

__all__ = ["CACHE_NAME", "CACHE_VERSION", "HashCache", "sha256_hex"]

CACHE_NAME = "hash_cache.npz"
# What a cached entry depends on besides the bytes: change it when the hashes or the ITA change.
CACHE_VERSION = f"{DECODER}|phash+dhash 8x8 of 32px, 8 orientations|ita border ring/1"


class HashCache:
    """SHA-256 (hex) → the `Inspection` of a usable image, loaded from and saved to one `.npz` file.

    `save` writes the images of this fetch only: a cache never grows past the images of the last
    fetch.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._sha = np.empty(0, "S64")  # sorted, ASCII hex
        self._row = np.empty(0, np.int64)  # each sorted entry's row in `_hashes` and `_skin`
        self._hashes = np.empty((0, 2, 8), np.uint64)
        self._skin = np.empty(0, np.uint32)  # each row's code in `_skin_values`
        self._skin_values = np.empty((0, 2), dtype=str)  # distinct (ITA, skin tone) pairs
        if self.path is not None and self.path.is_file():
            self._load(self.path)

    def __len__(self) -> int:
        return len(self._sha)

    def _load(self, path: Path) -> None:
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["version"]) != CACHE_VERSION:
                    return
                sha, hashes, (skin, values) = z["sha256"].astype("S64"), z["hashes"], _skin(z)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, UnicodeEncodeError):
            return  # a damaged cache is only slower: everything is hashed again
        n = len(sha)
        if (
            skin.dtype.kind not in "iu"
            or hashes.shape != (n, 2, 8)
            or skin.shape != (n,)
            or values.shape[1:] != (2,)
        ):
            return
        if n and not 0 <= skin.min() <= skin.max() < len(values):
            return
        self._row = np.argsort(sha, kind="stable")
        self._sha, self._hashes = sha[self._row], hashes
        self._skin, self._skin_values = skin.astype(np.uint32), values

    def get(self, sha256: str) -> Inspection | None:
        """The cached inspection of a usable image with these bytes, or None."""
        key = sha256.encode("ascii")
        i = int(np.searchsorted(self._sha, key))
        if i == len(self._sha) or self._sha[i] != key:
            return None
        row = self._row[i]
        ita, tone = (str(v) for v in self._skin_values[self._skin[row]])
        skin = (("ita", ita), ("skin_tone", tone))
        return Inspection(None, sha256, self._hashes[row].copy(), skin)

    def save(
        self,
        sha256: np.ndarray,
        hashes: np.ndarray,
        skin: np.ndarray,
        skin_values: np.ndarray,
    ) -> None:
        """Write the usable images of this fetch (atomically), each SHA-256 once (its first
        entry); without a path, nothing. The arrays are written one at a time, `_CHUNK` rows at
        a time: the hex digests and copies are never made whole.

        Args:
            sha256: (N,) raw bytes (`V32`) or ASCII hex (`S64`).
            hashes: (N, 2, 8) perceptual hashes.
            skin: (N,) each image's code in `skin_values`.
            skin_values: (K, 2) the distinct ITA and skin tone pairs, "" where unknown.
        """
        if self.path is None:
            return
        sha256 = np.asarray(sha256)  # (a memory map stays one)
        # An image's bytes again (`dedup.shared_indices`: ~9 transient bytes an image): left out.
        again = np.sort([i for group in shared_indices(sha256) for i in group[1:]]).astype(np.int64)
        n_in, n = len(sha256), len(sha256) - len(again)

        def rows(a: np.ndarray) -> Callable[[int, int], np.ndarray]:
            return lambda i, j: np.delete(a[i:j], again[(again >= i) & (again < j)] - i, axis=0)

        arrays = {
            "version": lambda: np.array(CACHE_VERSION),
            "sha256": _Rows("S64", (n,), lambda i, j: sha256_hex(rows(sha256)(i, j)), n_in),
            "hashes": _Rows(np.uint64, (n, 2, 8), rows(hashes), n_in),
            "skin_codes": _Rows(np.uint32, (n,), rows(skin), n_in),
            "skin_values": lambda: np.asarray(skin_values, dtype=str).reshape(-1, 2),
        }
        with atomic_path(self.path) as tmp, open(tmp, "wb") as fh:
            _write_npz(fh, arrays)


_CHUNK = 1 << 12  # rows of an array made and written at once (~0.5 MiB of hashes)


@dataclass(frozen=True)
class _Rows:
    """An array of `shape` written `_CHUNK` rows at a time: `part(start, end)` makes the rows of
    input rows `start` to `end` (of `n_in`, those left out dropped)."""

    dtype: object
    shape: tuple[int, ...]
    part: Callable[[int, int], np.ndarray]
    n_in: int

    def write(self, out) -> None:
        dtype = np.dtype(self.dtype)
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False}
        np.lib.format.write_array_header_1_0(out, {**header, "shape": self.shape})
        for start in range(0, self.n_in, _CHUNK):
            part = self.part(start, min(start + _CHUNK, self.n_in))
            out.write(np.ascontiguousarray(part, dtype=dtype).tobytes())


def _skin(z) -> tuple[np.ndarray, np.ndarray]:
    """A cache file's skin tones as (codes, distinct pairs); an older file's (N, 2) pairs coded."""
    if "skin_codes" in z:
        return z["skin_codes"], z["skin_values"]
    values, codes = np.unique(z["skin"].reshape(-1, 2), axis=0, return_inverse=True)
    return codes.reshape(-1), values


def _write_npz(fh, arrays: dict[str, Callable[[], np.ndarray] | _Rows]) -> None:
    """`np.savez` of arrays made one at a time (or a chunk of rows at a time), each freed once
    written."""
    with zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, make in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as out:
                if isinstance(make, _Rows):
                    make.write(out)
                else:
                    np.lib.format.write_array(out, np.asanyarray(make()), allow_pickle=False)


# Each byte's two hex digits, as ASCII codes: (256, 2) uint8.
_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)[
    np.stack([np.arange(256) >> 4, np.arange(256) & 15], axis=1)
]


def sha256_hex(sha256: np.ndarray) -> np.ndarray:
    """(N,) SHA-256 as ASCII hex (`S64`), of raw bytes (`V32`) or hex already."""
    if sha256.dtype.kind == "S":
        return np.asarray(sha256, dtype="S64")
    raw = np.ascontiguousarray(sha256).view(np.uint8).reshape(-1, 32)
    return _HEX[raw].reshape(len(raw), 64).view("S64").ravel()
