"""Ingest: unpack an archive or copy a folder safely into `images/`, then verify every image.

Both sources go through the same layout detection: the files of one dataset root in `split/class/file`
(or `class/file`) layout are taken; a second copy of the same tree (the Kaggle archive repeats everything
under `data/`) is ignored and reported, never counted twice. Nothing is left out silently: hidden files,
files outside the layout, broken or looping symbolic links, unreadable files and damaged archive members
are all listed with their reason. Source folders follow symbolic links (to files and folders); archive
entries that are symbolic links are refused.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import shutil
import stat
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np
from PIL import UnidentifiedImageError

from ..errors import DataError, opt
from .cells import formula_start
from .dedup import perceptual_hashes
from .guards import CountingReader, check_archive_members, os_error
from .images import IMAGE_SUFFIXES, UnusableImage, decode_image, to_rgb
from .listing import is_hidden, list_source
from .skintone import skin_tone_attributes

if TYPE_CHECKING:
    from .metadata import MetaRow

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_ARCHIVE_BYTES",
    "Candidate",
    "Inspection",
    "Layout",
    "copy_source",
    "extract_archive",
    "inspect_bytes",
    "inspect_image",
    "select_layout",
    "to_rgb",
]

MAX_ARCHIVE_BYTES = 8 * 2**30  # the Kaggle archive expands to ~0.3 GB; 8 GB leaves room, not a bomb
# Folder names accepted as a split, and the split they mean.
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
Progress = Callable[[str, int, "int | None"], None]
_CHUNK = 1 << 20  # bytes per read while streaming: memory stays bounded whatever a file claims


@dataclass
class Layout:
    """Which files of a source tree are the dataset.

    Attributes:
        prefix: Folder parts above `split/class/file` (or `class/file`) of the chosen copy.
        files: Paths of the chosen copy, relative to the prefix.
        ignored_copies: Other roots holding the same tree, with their file counts (`{"data": 2637}`).
        outside: Files in no recognised place (a README, a stray image), as source paths.
        damaged: Chosen files that could not be unpacked or read, with the reason.
        hidden: Hidden files and folders (a leading dot, `__MACOSX`), left out.
        unusable: Entries that are no file to take (broken or looping links, devices), with the reason.
    """

    prefix: tuple[str, ...]
    files: list[PurePosixPath]
    ignored_copies: dict[str, int] = field(default_factory=dict)
    outside: list[str] = field(default_factory=list)
    damaged: dict[str, str] = field(default_factory=dict)
    hidden: list[str] = field(default_factory=list)
    unusable: dict[str, str] = field(default_factory=dict)

    def candidates(self) -> list[Candidate]:
        """The chosen files as `Candidate`s (relative to the copy's root), in `files` order."""
        out = []
        for f in self.files:
            # `split/class/file` or `class/file`: select_layout keeps nothing else.
            split = SPLIT_NAMES[f.parts[0].lower()] if len(f.parts) == 3 else None
            out.append(Candidate(str(f), split, f.parts[-2]))
        return out


def _root_of(parts: tuple[str, ...], split_layout: bool) -> tuple[str, ...] | None:
    if split_layout:
        # The prefix ends where `split/class/file` begins.
        if len(parts) >= 3 and parts[-3].lower() in SPLIT_NAMES:
            return parts[:-3]
        return None
    return parts[:-2] if len(parts) >= 2 else None


def select_layout(paths: Iterable[PurePosixPath], fingerprints: dict | None = None) -> Layout:
    """Pick one dataset root among file paths (hidden files and `__MACOSX` are left out).

    The shortest root wins (the top-level copy). Any other root must be a copy of it: at least 90% of
    its files match a chosen file by relative path (and by `fingerprints`, e.g. CRC, when given).

    Raises:
        DataError: no file in a recognised layout, several roots that are not copies, fewer than
            two class folders, or class folders whose names differ only in case.
    """
    paths = [p for p in paths if not is_hidden(p.parts)]
    split_layout = any(_root_of(p.parts, True) is not None for p in paths)
    roots: dict[tuple[str, ...], list[PurePosixPath]] = {}
    outside = []
    for p in paths:
        r = _root_of(p.parts, split_layout)
        if r is None:
            outside.append(str(p))
        else:
            roots.setdefault(r, []).append(p)
    if not roots:
        raise DataError(
            "no images in split/class/file (e.g. train/benign/1.jpg) or class/file layout found"
        )
    chosen = min(roots, key=lambda r: (len(r), r))
    fp = fingerprints or {}
    rel = lambda p, r: PurePosixPath(*p.parts[len(r) :])  # noqa: E731
    mine = {rel(p, chosen): fp.get(p) for p in roots[chosen]}
    ignored = {}
    for r, files in sorted(roots.items()):
        if r == chosen:
            continue
        same = sum(1 for p in files if rel(p, r) in mine and mine[rel(p, r)] == fp.get(p))
        name = "/".join(r) or "."
        if same < 0.9 * len(files):
            raise DataError(
                f"the source holds several dataset roots ({'/'.join(chosen) or '.'} and {name}) "
                f"that are not copies of each other; point {opt('source_dir')} at one of them"
            )
        ignored[name] = len(files)
    layout = Layout(chosen, sorted(mine), ignored, sorted(outside))
    _check_classes(layout)
    return layout


def _check_classes(layout: Layout) -> None:
    """At least two class folders, and no two whose names differ only in case."""
    where = f"under {'/'.join(layout.prefix)}/" if layout.prefix else "at the source's top level"
    labels = sorted({f.parts[-2] for f in layout.files})
    folded: dict[str, list[str]] = {}
    for label in labels:
        folded.setdefault(label.casefold(), []).append(label)
    for label in labels:
        char = formula_start(label)
        if char:  # no diagnosis starts so; a spreadsheet opening the manifest would run it
            raise DataError(
                f"class folder {label}/ ({where}) starts with {char!r}: a spreadsheet opening "
                "skincls's CSVs would run it as a formula (CSV injection); rename the folder and "
                "run fetch again"
            )
    for names in folded.values():
        if len(names) > 1:
            # Two classes or one misspelt? Guessing either way trains on a wrong answer.
            shown = " and ".join(f"{n}/" for n in names)
            raise DataError(
                f"class folders {shown} ({where}) differ only in case: rename them to one "
                "spelling to merge them, or to clearly different names, and run fetch again"
            )
    if len(labels) < 2:
        raise DataError(
            f"only one class folder ({labels[0]}/, {where}) holds images: a classifier needs "
            "at least two, e.g. benign/ and malignant/"
        )


def _one_entry_per_name(
    archive: Path, checked: list[tuple[PurePosixPath, zipfile.ZipInfo]]
) -> dict[PurePosixPath, zipfile.ZipInfo]:
    """The file entries by path. A path held twice with the same bytes (CRC-32 and size) is taken
    once; with different bytes the archive is refused: which one is the file cannot be told, and
    tools that pick differently would see different datasets."""
    entries: dict[PurePosixPath, zipfile.ZipInfo] = {}
    clashes = set()
    for path, info in checked:
        if info.is_dir():
            continue
        first = entries.setdefault(path, info)
        if (first.CRC, first.file_size) != (info.CRC, info.file_size):
            clashes.add(str(path))
    if clashes:
        shown = ", ".join(repr(c) for c in sorted(clashes)[:5])
        more = f" and {len(clashes) - 5} more" if len(clashes) > 5 else ""
        raise DataError(
            f"refusing archive {archive}: it holds different entries under one name ({shown}{more}); "
            "which one is the file cannot be told: repack it with one entry per name"
        )
    return entries


def _check_entry(info: zipfile.ZipInfo) -> tuple[PurePosixPath, zipfile.ZipInfo]:
    name = info.filename.replace("\\", "/")
    path = PurePosixPath(name)
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"refusing archive entry {info.filename!r}: absolute path")
    if ".." in path.parts:
        raise DataError(f"refusing archive entry {info.filename!r}: '..' leads outside the target")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise DataError(f"refusing archive entry {info.filename!r}: symbolic link")
    return path, info


def extract_archive(
    archive: str | Path,
    dest: str | Path,
    *,
    max_bytes: int = MAX_ARCHIVE_BYTES,
    progress: Progress | None = None,
    select: Callable[..., Layout] | None = None,
) -> Layout:
    """Unpack the dataset part of a zip into `dest` (`dest/split/class/file`), safely.

    Every entry is checked before anything is written: absolute paths, `..` components, symbolic
    links and encrypted entries are refused, and so is a zip bomb (see `guards.check_archive_members`:
    total and per-entry size, compression ratio). Entries are streamed, never read whole, and an entry
    that yields more bytes than its header declares stops the extraction. A damaged entry (bad CRC,
    cut-off data) is skipped and listed; an operating-system error (disk full, permissions) is fatal.
    `select(paths, fingerprints, read)` picks the dataset's files (default: `select_layout`);
    `read` gives a member's bytes, for a metadata file.

    Raises:
        DataError: the archive is unreadable or unsafe (naming the entry), or an OS error.
    """
    archive, dest = Path(archive), Path(dest)
    try:
        zf = zipfile.ZipFile(archive)
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot open archive {archive}: {exc}") from exc
    except UnicodeDecodeError as exc:  # an entry flagged UTF-8 whose name is not
        raise DataError(
            f"cannot open archive {archive}: an entry's name is not the UTF-8 its header declares "
            f"({exc.reason} at byte {exc.start}); repack the archive"
        ) from None
    with zf:
        entries = _one_entry_per_name(archive, [_check_entry(i) for i in zf.infolist()])
        check_archive_members(archive, entries.values(), max_bytes)
        fingerprints = {p: i.CRC for p, i in entries.items()}
        if select is None:
            layout = select_layout(entries, fingerprints)
        else:
            layout = select(list(entries), fingerprints, lambda p: _read_small(zf, entries[p]))
        layout.hidden = sorted(str(p) for p in entries if is_hidden(p.parts))
        _mkdir(dest)
        root = dest.resolve()
        for n, rel in enumerate(layout.files, 1):
            info = entries[PurePosixPath(*layout.prefix, *rel.parts)]
            target = (root / rel).resolve()
            if root not in target.parents:  # belt and braces after _check_entry
                raise DataError(f"refusing archive entry {info.filename!r}: outside the target")
            reason = _extract_member(zf, info, target, archive)
            if reason:
                layout.damaged[str(rel)] = reason
            if progress:
                progress("extract", n, len(layout.files))
    return layout


def _read_small(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int = 256 * 2**20) -> bytes:
    """A metadata member's bytes; a member declaring more than `limit` is no metadata file."""
    if info.file_size > limit:
        raise DataError(f"refusing archive entry {info.filename!r}: over {limit >> 20} MiB")
    try:
        return zf.read(info)
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise DataError(f"archive entry {info.filename!r} is damaged: {exc}") from None


def _read_small_file(path: Path, limit: int = 256 * 2**20) -> bytes:
    """A metadata file's bytes; a file of more than `limit` bytes is no metadata file."""
    if path.stat().st_size > limit:
        raise DataError(f"refusing {path}: over {limit >> 20} MiB, not a metadata file")
    return path.read_bytes()


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, archive: Path):
    """Stream one entry to `target`; return why it is damaged, or None when it is whole."""
    # Read up to one byte past the declared size (zipfile stops at the size it is given), so an entry
    # holding more than its header says is caught; the CRC is checked on the bytes written instead.
    probe = copy.copy(info)
    probe.file_size = info.file_size + 1
    probe.CRC = None
    name = f"archive {archive}, entry {info.filename!r}"
    try:
        with zf.open(probe) as src:
            reader = CountingReader(src, info.file_size, name)
            _write_stream(reader, target, f"cannot write {target} (extracting {info.filename!r})")
    except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError) as exc:
        target.unlink(missing_ok=True)
        return f"damaged in the archive: {exc}"
    except OSError as exc:  # reading the archive itself (the writing side raises DataError)
        raise os_error(exc, f"cannot read {archive}") from exc
    if reader.count != info.file_size or reader.crc != info.CRC:
        target.unlink(missing_ok=True)
        got = (
            f"{reader.count} of {info.file_size} bytes"
            if reader.count != info.file_size
            else "bad CRC-32"
        )
        return f"damaged in the archive: {got}"
    return None


def _mkdir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise os_error(exc, f"cannot create {folder}") from exc


def _write_stream(reader, target: Path, doing: str) -> None:
    """Copy `reader` into `target` in bounded chunks; any OS error here is the disk's, and fatal."""
    _mkdir(target.parent)
    try:
        with open(target, "wb") as out:
            shutil.copyfileobj(reader, out, _CHUNK)
    except OSError as exc:
        with contextlib.suppress(OSError):
            target.unlink(missing_ok=True)
        raise os_error(exc, doing) from exc


def copy_source(
    source: str | Path,
    dest: str | Path,
    *,
    progress: Progress | None = None,
    select: Callable[..., Layout] | None = None,
) -> Layout:
    """Copy the dataset part of a folder into `dest`, with the same layout rules as archives.

    Symbolic links are followed (see `list_source`); a file that cannot be opened is skipped and
    listed as unreadable; an error writing `dest` is fatal.
    """
    source, dest = Path(source), Path(dest)
    if not source.is_dir():
        raise DataError(f"source dir {source} does not exist")
    found = list_source(source)
    sizes = {r: st.st_size for r, st in found.stats.items()}
    if select is None:
        layout = select_layout(found.files, sizes)
    else:
        layout = select(list(found.files), sizes, lambda p: _read_small_file(found.files[p]))
    layout.hidden = sorted(found.hidden)
    layout.unusable.update(found.unusable)
    for n, rel in enumerate(layout.files, 1):
        src = found.files[PurePosixPath(*layout.prefix, *rel.parts)]
        try:
            fh = open(src, "rb")  # noqa: SIM115 (closed below; a failure here only skips the file)
        except OSError as exc:
            layout.damaged[str(rel)] = f"unreadable: {exc.strerror or exc}"
        else:
            with fh:
                reader = CountingReader(fh, 1 << 62, f"source file {src}")
                _write_stream(reader, dest / rel, f"cannot write {dest / rel} (copying {src})")
        if progress:
            progress("copy", n, len(layout.files))
    return layout


@dataclass(frozen=True, slots=True)
class Candidate:
    """A file found under `images/`: its path relative to it, source split (or None), class and
    metadata row (`metadata.MetaRow`: lesion, patient, attributes; None in a class-folder layout)."""

    rel: str
    split: str | None
    label: str
    row: MetaRow | None = None


@dataclass
class Inspection:
    """Outcome of decoding one file: `reason` is None for a usable image."""

    reason: str | None
    sha256: str = ""
    hashes: np.ndarray | None = None
    skin: tuple[tuple[str, str], ...] = ()  # the manifest's `ita` and `skin_tone` columns


def inspect_image(path: str | Path) -> Inspection:
    """Decode the whole file, hash its bytes (SHA-256) and its look (pHash); say why it is unusable.

    The look is hashed from `images.decode_image`, as every later stage will see the image (upright,
    8-bit RGB): hashing a 16-bit decode directly would clip every pixel to white and make all such
    images look alike. An image past Pillow's decompression-bomb limit is skipped, not decoded; so
    is any other image every later stage refuses (`images.UnusableImage`: too elongated, NaN pixels…).

    Raises:
        OSError: the file cannot be read (fetch treats this as fatal: it wrote the file itself).
    """
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return Inspection(f"not an image file: suffix {path.suffix or 'none'}")
    return inspect_bytes(path.read_bytes())


def inspect_bytes(data: bytes) -> Inspection:
    """`inspect_image` of a file's bytes (an image file read, or an image stored in an HDF5 file)."""
    if not data:
        return Inspection("empty file (0 bytes)")
    digest = hashlib.sha256(data).hexdigest()
    try:
        image = decode_image(data)
    except UnusableImage as exc:
        return Inspection(str(exc), digest)
    except UnidentifiedImageError:
        return Inspection("not an image: Pillow cannot identify it", digest)
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError… for broken files
        return Inspection(f"corrupt or truncated: {type(exc).__name__}: {exc}", digest)
    # One decode serves the hashes and the skin tone (no second read of the file).
    return Inspection(None, digest, perceptual_hashes(image), skin_tone_attributes(image))
