"""Listing: a source folder's files, symbolic links followed, and why any entry is unusable.

Symbolic links in a source folder are followed, to files and to folders alike: a folder of links into
a larger image store is a common way to make a dataset, and the user chose the folder. (Archives are
different: their link entries are refused, see `ingest.extract_archive`.) What is read is the link's
target, and fetch copies it, so the data dir does not change when a link later does.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import DataError, opt
from .cells import printable

__all__ = ["SourceFiles", "is_hidden", "list_source"]


def is_hidden(parts: Iterable[str]) -> bool:
    """Whether a path (as its parts) is hidden: a part starting with a dot, or `__MACOSX`."""
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


@dataclass
class SourceFiles:
    """The files of a source folder, symbolic links followed.

    Attributes:
        files: Relative path → path to read.
        stats: Relative path → `os.stat` of what is read (the link's target).
        unusable: Entries that are no file to take, with the reason (broken link, loop, device).
        hidden: Hidden files and folders (not searched).
    """

    files: dict[PurePosixPath, Path] = field(default_factory=dict)
    stats: dict[PurePosixPath, os.stat_result] = field(default_factory=dict)
    unusable: dict[str, str] = field(default_factory=dict)
    hidden: list[str] = field(default_factory=list)


def list_source(root: str | Path) -> SourceFiles:
    """List a source folder, following symbolic links to files and folders, each reached once per path.

    A link that leads back to a folder above it (a loop), a link whose target is missing and a name
    that is not valid UTF-8 are listed as unusable; hidden entries are listed, not searched.

    Raises:
        DataError: a folder cannot be read (permissions): its images would silently go missing.
    """
    root = Path(root)
    out = SourceFiles()

    def walk(folder: Path, rel: PurePosixPath, above: frozenset) -> None:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise DataError(
                f"cannot read folder {folder}: {exc.strerror or exc}; fix its permissions (e.g. "
                f"chmod -R u+rX) or move it out of {opt('source_dir')}, then run fetch again"
            ) from exc
        for e in entries:
            r = rel / e.name
            if not _decodable(e.name):
                # Python holds such a name with surrogates, which no UTF-8 file (manifest,
                # dataset.json) can store: listed with its bytes escaped, not taken.
                what = "folder" if e.is_dir() else "file"
                out.unusable[printable(str(r)) + "/" * (what == "folder")] = (
                    f"name not valid UTF-8: rename the {what} (its odd bytes are shown as \\xNN) "
                    "to take it, and run fetch again"
                )
                continue
            if is_hidden([e.name]):
                out.hidden.append(str(r))
                continue
            try:
                st = os.stat(e.path)  # follows symbolic links
            except OSError as exc:
                out.unusable[str(r)] = _stat_failure(exc, e.is_symlink())
                continue
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in above:
                    out.unusable[f"{r}/"] = "symbolic link loop: it leads back to a folder above it"
                else:
                    walk(Path(e.path), r, above | {key})
            elif stat.S_ISREG(st.st_mode):
                out.files[r] = Path(e.path)
                out.stats[r] = st
            else:
                out.unusable[str(r)] = "not a regular file (a device, pipe or socket)"

    st = root.stat()
    walk(root, PurePosixPath(), frozenset({(st.st_dev, st.st_ino)}))
    return out


def _decodable(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _stat_failure(exc: OSError, is_link: bool) -> str:
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    if is_link and exc.errno == errno.ENOENT:
        return "broken symbolic link: its target does not exist"
    return f"unreadable: {exc.strerror or exc}"
