"""Guards: limits and checks for untrusted input and failing disks, shared by fetch's stages.

Zip bombs are refused from the archive's directory before anything is written, and the limits are
enforced again while streaming, because a zip's headers can lie. Operating-system errors (disk full,
permissions, a read-only or impossible path) stop fetch with one line naming the file and what to do:
a file that could not be written is never passed off as a damaged input.
"""

from __future__ import annotations

import errno
import functools
import os
import zipfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from ..errors import DataError, opt

__all__ = [
    "MAX_COMPRESSION_RATIO",
    "MAX_MEMBER_BYTES",
    "CountingReader",
    "LimitExceeded",
    "check_archive_members",
    "check_inputs_outside",
    "check_writable_dir",
    "os_error",
    "output_dir_checked",
]

# One member may expand to at most this much: dermoscopy images are a few MB, even as raw TIFF.
MAX_MEMBER_BYTES = 1 << 30
# JPEG and PNG do not compress further (~1:1); raw BMP/TIFF of skin rarely past 1:10. A deflate bomb
# reaches ~1:1000. Members (and archives) expanding to less than `_RATIO_FLOOR` are not checked: a
# small, very compressible file can do no harm.
MAX_COMPRESSION_RATIO = 100
_RATIO_FLOOR = 1 << 20
_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}

_ADVICE = {
    errno.ENOSPC: f"free disk space there (or choose another {opt('data_dir')}) and run fetch "
    "again",
    errno.EDQUOT: "free space in your disk quota and run fetch again",
    errno.EACCES: "fix the permissions there (or choose another folder) and run fetch again",
    errno.EPERM: "fix the permissions there (or choose another folder) and run fetch again",
    errno.EROFS: "the file system is read-only: choose another folder",
    errno.ENOTDIR: "a part of that path is a file, not a folder: choose another path",
}


def os_error(exc: OSError, doing: str) -> DataError:
    """A one-line `DataError` for an OS error: what failed, on which file, and what to do.

    Example: `cannot write data/images/train/benign/3.jpg: No space left on device (ENOSPC); free
    disk space there (or choose another data_dir) and run fetch again`.
    """
    code = errno.errorcode.get(exc.errno or 0)
    what = exc.strerror or str(exc) or type(exc).__name__
    advice = _ADVICE.get(exc.errno or 0, "fix the cause and run fetch again")
    where = f" ({exc.filename})" if exc.filename and str(exc.filename) not in doing else ""
    return DataError(f"{doing}{where}: {what}{f' ({code})' if code else ''}; {advice}")


def output_dir_checked(option: str, doing: str) -> Callable:
    """Decorate a function whose first argument is the folder it writes into: `check_writable_dir`
    runs before anything (a lock included) touches it, and an OS error anywhere inside (disk full,
    permissions) becomes a one-line `DataError` (`os_error`)."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(folder, *args, **kwargs):
            check_writable_dir(folder, option)
            try:
                return fn(folder, *args, **kwargs)
            except OSError as exc:
                raise os_error(exc, doing) from exc

        return wrapper

    return decorate


def check_writable_dir(path: str | Path, option: str) -> None:
    """Refuse a folder that cannot be created or written, before anything is written.

    The folder need not exist: its nearest existing ancestor must be a folder we may write into.

    Raises:
        DataError: e.g. `data_dir /dev/null/x cannot be created: /dev/null is not a folder`.
    """
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.is_symlink():  # a dangling link: creating through it would land elsewhere
            raise DataError(f"{option} {path} cannot be created: {probe} is a broken symbolic link")
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        if probe == path:
            raise DataError(f"{option} {path} is a file, not a folder: choose a folder")
        raise DataError(f"{option} {path} cannot be created: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise DataError(
            f"{option} {path} is not writable (no write permission on {probe}): "
            "fix the permissions or choose another folder"
        )


def check_inputs_outside(replaced: Iterable[Path], inputs: dict) -> None:
    """Refuse inputs (`{option: path or None}`) inside folders fetch replaces: they would be deleted.

    Raises:
        DataError: e.g. `source_dir data/images/mine lies inside data/images, which fetch replaces`.
    """
    folders = [Path(f).resolve() for f in replaced]
    for option, path in inputs.items():
        if path is None:
            continue
        resolved = Path(path).resolve()
        for folder in folders:
            if resolved == folder or folder in resolved.parents:
                raise DataError(
                    f"{option} {path} lies inside {folder}, which fetch replaces: move it elsewhere"
                )


def check_archive_members(archive: Path, infos: Iterable[zipfile.ZipInfo], max_bytes: int) -> None:
    """Refuse a zip bomb from its directory: total and per-member size, compression ratio, method.

    Raises:
        DataError: naming the entry and the limit it breaks.
    """
    infos = [i for i in infos if not i.is_dir()]
    refuse = f"refusing archive {archive}"
    total = 0
    for info in infos:
        name = info.filename
        if info.flag_bits & 0x41:  # bit 0: encrypted, bit 6: strong encryption
            raise DataError(
                f"{refuse}: entry {name!r} is encrypted; unpack it yourself and use "
                f"{opt('source_dir')}"
            )
        if info.compress_type not in _METHODS:
            raise DataError(
                f"{refuse}: entry {name!r} uses compression method "
                f"{zipfile.compressor_names.get(info.compress_type, info.compress_type)}; only "
                "stored and deflate are accepted (their memory use is bounded): re-zip it or use "
                f"{opt('source_dir')}"
            )
        if info.file_size > MAX_MEMBER_BYTES:
            raise DataError(
                f"{refuse}: entry {name!r} expands to {_size(info.file_size)}, past the "
                f"{_size(MAX_MEMBER_BYTES)} a single image may have (possible zip bomb)"
            )
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > _RATIO_FLOOR and ratio > MAX_COMPRESSION_RATIO:
            raise DataError(
                f"{refuse}: entry {name!r} has compression ratio {ratio:.0f}:1 (limit "
                f"{MAX_COMPRESSION_RATIO}:1), which images never reach (possible zip bomb)"
            )
        total += info.file_size
        if total > max_bytes:
            raise DataError(
                f"{refuse}: it expands past {_size(max_bytes)} (at entry {name!r}); "
                "raise the cap only for a trusted file"
            )
    # Entries sharing compressed data (an overlapping-file bomb) each look harmless; the whole
    # archive's ratio does not.
    size = archive.stat().st_size
    if total > _RATIO_FLOOR and total / max(size, 1) > MAX_COMPRESSION_RATIO:
        raise DataError(
            f"{refuse}: its {len(infos)} entries expand {total / max(size, 1):.0f}× its "
            f"{_size(size)} to {_size(total)} (limit {MAX_COMPRESSION_RATIO}×; possible zip bomb)"
        )


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # unreachable


class LimitExceeded(DataError):
    """More bytes arrived than the header declared (or than a member may have)."""

    def __init__(self, name: str, limit: int):
        super().__init__(
            f"refusing {name}: it holds more than the {limit} bytes its header declares "
            "(damaged or hostile, possible zip bomb); nothing was kept"
        )


class CountingReader:
    """A read-only file wrapper that counts bytes and CRC-32s them, and refuses more than `limit`.

    Read errors become `DataError`s saying which input could not be read, so that an `OSError`
    escaping a copy through this reader always comes from the writing side.
    """

    def __init__(self, raw: BinaryIO, limit: int, name: str):
        self.raw, self.limit, self.name = raw, limit, name
        self.count, self.crc = 0, 0

    def read(self, n: int = -1) -> bytes:
        try:
            data = self.raw.read(n)
        except OSError as exc:
            raise os_error(exc, f"cannot read {self.name}") from exc
        self.count += len(data)
        if self.count > self.limit:
            raise LimitExceeded(self.name, self.limit)
        self.crc = zlib.crc32(data, self.crc)
        return data
