"""Ingest: unpack an archive or copy a folder safely into `images/`, then verify every image.

Both sources go through the same layout detection: the files of one dataset root in `split/class/file`
(or `class/file`) layout are taken; a second copy of the same tree (the Kaggle archive repeats everything
under `data/`) is ignored and reported, never counted twice.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import stat
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from .dedup import perceptual_hashes

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_ARCHIVE_BYTES",
    "Candidate",
    "Inspection",
    "Layout",
    "copy_source",
    "extract_archive",
    "inspect_image",
    "select_layout",
    "to_rgb",
]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
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


@dataclass
class Layout:
    """Which files of a source tree are the dataset.

    Attributes:
        prefix: Folder parts above `split/class/file` (or `class/file`) of the chosen copy.
        files: Paths of the chosen copy, relative to the prefix.
        ignored_copies: Other roots holding the same tree, with their file counts (`{"data": 2637}`).
        outside: Files in no recognised place (a README, a stray image), as source paths.
        damaged: Chosen files that could not be unpacked, with the reason.
    """

    prefix: tuple[str, ...]
    files: list[PurePosixPath]
    ignored_copies: dict[str, int] = field(default_factory=dict)
    outside: list[str] = field(default_factory=list)
    damaged: dict[str, str] = field(default_factory=dict)

    def candidates(self) -> list[Candidate]:
        """The chosen files as `Candidate`s (relative to the copy's root), in `files` order."""
        out = []
        for f in self.files:
            # `split/class/file` or `class/file`: select_layout keeps nothing else.
            split = SPLIT_NAMES[f.parts[0].lower()] if len(f.parts) == 3 else None
            out.append(Candidate(str(f), split, f.parts[-2]))
        return out


def _hidden(parts: Iterable[str]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


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
        DataError: no file in a recognised layout, or several roots that are not copies.
    """
    paths = [p for p in paths if not _hidden(p.parts)]
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
                "that are not copies of each other; point --source-dir at one of them"
            )
        ignored[name] = len(files)
    return Layout(chosen, sorted(mine), ignored, sorted(outside))


def _check_entry(info: zipfile.ZipInfo) -> PurePosixPath:
    name = info.filename.replace("\\", "/")
    path = PurePosixPath(name)
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"refusing archive entry {info.filename!r}: absolute path")
    if ".." in path.parts:
        raise DataError(f"refusing archive entry {info.filename!r}: '..' leads outside the target")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise DataError(f"refusing archive entry {info.filename!r}: symbolic link")
    return path


def extract_archive(
    archive: str | Path,
    dest: str | Path,
    *,
    max_bytes: int = MAX_ARCHIVE_BYTES,
    progress: Progress | None = None,
    select: Callable[..., Layout] | None = None,
) -> Layout:
    """Unpack the dataset part of a zip into `dest` (`dest/split/class/file`), safely.

    Every entry is checked before anything is written: absolute paths, `..` components and symbolic
    links are refused, and so is an archive whose files would expand past `max_bytes`.
    `select(paths, fingerprints, read)` picks the dataset's files (default: `select_layout`);
    `read` gives a member's bytes, for a metadata file.

    Raises:
        DataError: the archive is unreadable or unsafe (naming the entry).
    """
    archive, dest = Path(archive), Path(dest)
    try:
        zf = zipfile.ZipFile(archive)
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot open archive {archive}: {exc}") from exc
    with zf:
        entries = {}
        total = 0
        for info in zf.infolist():
            path = _check_entry(info)
            if info.is_dir():
                continue
            total += info.file_size
            if total > max_bytes:
                raise DataError(
                    f"refusing archive {archive}: it expands past {max_bytes / 2**30:.1f} GiB "
                    f"(at entry {info.filename!r}); raise the cap only for a trusted file"
                )
            entries[path] = info
        fingerprints = {p: i.CRC for p, i in entries.items()}
        if select is None:
            layout = select_layout(entries, fingerprints)
        else:
            layout = select(list(entries), fingerprints, lambda p: _read_small(zf, entries[p]))
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        for n, rel in enumerate(layout.files, 1):
            info = entries[PurePosixPath(*layout.prefix, *rel.parts)]
            target = (root / rel).resolve()
            if root not in target.parents:  # belt and braces after _check_entry
                raise DataError(f"refusing archive entry {info.filename!r}: outside the target")
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, target.open("wb") as out:
                    # ZipExtFile stops at the declared size, so the cap above holds.
                    shutil.copyfileobj(src, out, 1 << 20)
            except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
                # A damaged member (bad CRC, cut-off data) is skipped and reported, the run goes on.
                target.unlink(missing_ok=True)
                layout.damaged[str(rel)] = f"damaged in the archive: {exc}"
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


def copy_source(
    source: str | Path,
    dest: str | Path,
    *,
    progress: Progress | None = None,
    select: Callable[..., Layout] | None = None,
) -> Layout:
    """Copy the dataset part of a folder into `dest`, with the same layout rules as archives."""
    source, dest = Path(source), Path(dest)
    if not source.is_dir():
        raise DataError(f"source dir {source} does not exist")
    files = {}
    for p in source.rglob("*"):
        # Symlinks are not followed: they could point anywhere on the machine.
        if p.is_file() and not p.is_symlink():
            files[PurePosixPath(p.relative_to(source).as_posix())] = p
    sizes = {rel: p.stat().st_size for rel, p in files.items()}
    if select is None:
        layout = select_layout(files, sizes)
    else:
        layout = select(list(files), sizes, lambda p: _read_small_file(files[p]))
    for n, rel in enumerate(layout.files, 1):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(files[PurePosixPath(*layout.prefix, *rel.parts)], target)
        if progress:
            progress("copy", n, len(layout.files))
    return layout


@dataclass(frozen=True)
class Candidate:
    """A file found under `images/`: its path relative to it, source split (or None) and class."""

    rel: str
    split: str | None
    label: str


@dataclass
class Inspection:
    """Outcome of decoding one file: `reason` is None for a usable image."""

    reason: str | None
    sha256: str = ""
    hashes: np.ndarray | None = None


def to_rgb(im: Image.Image) -> Image.Image:
    """`im` as 8-bit RGB, the way the model sees it (grayscale, palette, CMYK, 16-bit, alpha).

    16-bit and 32-bit integer grayscale is scaled to 8 bits (a plain conversion clips it to white);
    transparent pixels are composited on white (a plain conversion turns them black).
    """
    if im.mode == "I" or im.mode.startswith("I;16"):
        im = im.point(lambda v: v / 256).convert("L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return im.convert("RGB")


def inspect_image(path: str | Path) -> Inspection:
    """Decode the whole file, hash its bytes (SHA-256) and its look (pHash); say why it is unusable.

    The look is hashed after `to_rgb`, as the model will see the image: hashing a 16-bit decode
    directly would clip every pixel to white and make all such images look alike.

    Pillow's decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`) applies; its warning counts as an
    error too, so an image of more than the limit's pixels is skipped rather than decoded.
    """
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return Inspection(f"not an image file (suffix {path.suffix or 'none'})")
    data = path.read_bytes()
    if not data:
        return Inspection("empty file (0 bytes)")
    digest = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                return Inspection(None, digest, perceptual_hashes(to_rgb(im)))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return Inspection(f"too large, possible decompression bomb: {exc}", digest)
    except UnidentifiedImageError:
        return Inspection("not an image (Pillow cannot identify it)", digest)
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError… for broken files
        return Inspection(f"corrupt or truncated: {type(exc).__name__}: {exc}", digest)
