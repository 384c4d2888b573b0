"""HDF5: images stored as encoded bytes inside one HDF5 file (ISIC 2024's `train-image.hdf5`).

Such an image's path is the HDF5 file's path followed by `/<key>.jpg` (`images/train-image.hdf5/
ISIC_0015670.jpg`): the manifest names it like any other image, and every stage that reads an image
(`images.load_image`) reads its bytes from the file, never from 401,059 files on disk. h5py is an
optional dependency (`pip install 'skincls[hdf5]'`), imported only when such a file is read.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataError

__all__ = ["HDF5_SUFFIXES", "hdf5_key_array", "hdf5_member", "key_text", "read_member"]

HDF5_SUFFIXES = (".hdf5", ".h5")
_INSTALL = "pip install 'skincls[hdf5]'"
# Open files of this process, by (pid, path, inode, mtime): a DataLoader worker forked from a
# process that had the file open must open its own (an HDF5 handle does not survive a fork), and a
# file replaced at the same path (fetch run again in one process) must not be read through the
# old handle, which still reads the deleted file's images.
_OPEN: dict[tuple[int, str, int, int], object] = {}


def _h5py():
    try:
        import h5py
    except ImportError:
        raise DataError(
            f"reading images stored in an HDF5 file (ISIC 2024's train-image.hdf5) needs h5py, "
            f"the hdf5 extra: {_INSTALL}"
        ) from None
    return h5py


def _file(path: Path):
    try:
        st = path.stat()
    except OSError as exc:
        raise DataError(f"cannot read {path} as an HDF5 file: {exc}") from None
    key = (os.getpid(), str(path), st.st_ino, st.st_mtime_ns)
    handle = _OPEN.get(key)
    if handle is None:
        for old in [k for k in _OPEN if k[:2] == key[:2]]:  # that path's earlier file
            _OPEN.pop(old).close()
        handle = _OPEN[key] = _open(path)
    return handle


def _open(path: Path):
    try:
        return _h5py().File(path, "r")
    except OSError as exc:
        raise DataError(f"cannot read {path} as an HDF5 file: {exc}") from None


def hdf5_key_array(path: str | Path) -> np.ndarray:
    """The names of the images stored in an HDF5 file as one sorted array of their bytes
    (`S<longest>`, sorted: bytes order, which is UTF-8 text's order too): no object per name.

    Listed twice by HDF5's link iteration: once for the count and the longest name, once into
    the array (`key_text` turns one back into the name h5py's `keys()` gives). The file is
    opened for this alone, its metadata cache held to `_LISTING_CACHE`: HDF5's default grows to
    32 MiB with the group's size (+10 MiB of the process's memory at 160,000 names, measured),
    and the allocator keeps what it freed.
    """
    with _open(Path(path)) as f:
        _hold_metadata_cache(f, _LISTING_CACHE)
        return _key_array(f.id.links)


_LISTING_CACHE = 1 << 20  # bytes: the listing reads each part of the group once, in order


def _hold_metadata_cache(f, size: int) -> None:
    """Cap the HDF5 metadata cache of the open file `f` at `size` bytes (h5py's own config)."""
    config = f.id.get_mdc_config()
    config.set_initial_size, config.initial_size = True, size
    config.min_size, config.max_size = min(config.min_size, size), size
    f.id.set_mdc_config(config)


def _key_array(links) -> np.ndarray:
    size = [0, 1]  # names, longest

    def measure(name: bytes) -> None:
        size[0], size[1] = size[0] + 1, max(size[1], len(name))

    links.iterate(measure)
    keys = np.zeros(size[0], f"S{size[1]}")
    at = [0]

    def put(name: bytes) -> None:  # returning None: iteration goes on
        keys[at[0]] = name
        at[0] += 1

    links.iterate(put)
    if len(keys) > 1 and bool(np.any(keys[:-1] > keys[1:])):  # bytes order: UTF-8's = str's
        keys.sort()
    return keys


def key_text(name: bytes) -> str | bytes:
    """A name as h5py's `keys()` gives it: UTF-8 text, else the bytes."""
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        return bytes(name)


def read_member(path: str | Path, key: str) -> bytes:
    """The encoded bytes stored under `key` (a scalar dataset of bytes) in the HDF5 file `path`.

    Raises:
        DataError: the file cannot be read as HDF5, has no such key, or holds no bytes under it.
    """
    f = _file(Path(path))
    if key not in f:
        raise DataError(f"{path} holds no image {key!r}")
    value = f[key][()]
    if isinstance(value, bytes):
        return value
    if hasattr(value, "tobytes"):  # np.void (opaque) or a uint8 array
        return value.tobytes()
    raise DataError(f"{path}: {key!r} holds {type(value).__name__}, not the bytes of an image")


def hdf5_member(path: str | Path) -> tuple[Path, str] | None:
    """`(HDF5 file, key)` when `path` names an image inside an HDF5 file, else None."""
    path = Path(path)
    if path.parent.suffix.lower() in HDF5_SUFFIXES and path.parent.is_file():
        return path.parent, path.stem
    return None
