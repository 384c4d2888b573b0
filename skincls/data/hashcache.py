"""Hash cache: each image's perceptual hashes and skin tone, kept by the SHA-256 of its bytes.

Decoding and hashing an image in its 8 orientations is most of what fetch spends per image. The
results depend on the bytes alone, so a re-fetch, or a dataset that grew, looks each file's SHA-256
up here and decodes only images it has not seen. The cache names the decoder and hashes it was made
with (`CACHE_VERSION`); a cache of another version is ignored, never mixed in.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from .images import DECODER
from .ingest import Inspection

__all__ = ["CACHE_NAME", "CACHE_VERSION", "HashCache"]

CACHE_NAME = "hash_cache.npz"
# What a cached entry depends on besides the bytes: change it when the hashes or the ITA change.
CACHE_VERSION = f"{DECODER}|phash+dhash 8x8 of 32px, 8 orientations|ita border ring/1"


class HashCache:
    """SHA-256 (hex) → the `Inspection` of a usable image, loaded from and saved to one `.npz` file.

    Only the entries used since loading (`get` hits and `put`) are saved: a cache never grows past
    the images of the last fetch.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._rows: dict[str, int] = {}
        self._hashes = np.empty((0, 2, 8), np.uint64)
        self._skin = np.empty((0, 2), dtype=str)
        self._used: dict[str, Inspection] = {}
        if self.path is not None and self.path.is_file():
            self._load(self.path)

    def __len__(self) -> int:
        return len(self._rows)

    def _load(self, path: Path) -> None:
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["version"]) != CACHE_VERSION:
                    return
                sha, hashes, skin = z["sha256"], z["hashes"], z["skin"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            return  # a damaged cache is only slower: everything is hashed again
        self._rows = {s: i for i, s in enumerate(sha.tolist())}
        self._hashes, self._skin = hashes, skin

    def get(self, sha256: str) -> Inspection | None:
        """The cached inspection of a usable image with these bytes, or None."""
        hit = self._used.get(sha256)
        if hit is None and sha256 in self._rows:
            i = self._rows[sha256]
            skin = (("ita", str(self._skin[i, 0])), ("skin_tone", str(self._skin[i, 1])))
            hit = Inspection(None, sha256, self._hashes[i].copy(), skin)
            self._used[sha256] = hit
        return hit

    def put(self, result: Inspection) -> None:
        """Keep a usable image's inspection (images that were refused are not cached)."""
        if result.reason is None and result.hashes is not None:
            self._used[result.sha256] = result

    def save(self) -> None:
        """Write the entries used since loading (atomically); without a path, nothing."""
        if self.path is None:
            return
        used = list(self._used.values())
        skin = [[dict(r.skin).get("ita", ""), dict(r.skin).get("skin_tone", "")] for r in used]
        with atomic_path(self.path) as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh,
                version=np.array(CACHE_VERSION),
                sha256=np.array([r.sha256 for r in used], dtype="U64"),
                hashes=np.array([r.hashes for r in used], dtype=np.uint64).reshape(-1, 2, 8),
                skin=np.array(skin, dtype=str).reshape(-1, 2),
            )
