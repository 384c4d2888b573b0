"""Verify: decode every staged image, hash it and estimate its skin tone (ITA); what does not
decode is skipped with its reason.

What the layout left out (hidden files, files outside it, damaged archive members, metadata rows
without a class) is listed with the images that failed here, so nothing is dropped silently.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ...errors import DataError
from ..hashcache import HashCache
from ..ingest import Layout
from ..layouts import MetadataLayout, layout_skipped
from ..lazy import Mapped
from ..parallel import FileReader, inspect_all
from .records import ProgressCallback, StagedFiles, VerifiedImages
from .table import ImageTable

__all__ = ["verify_images"]


def verify_images(
    staged: StagedFiles,
    on_progress: ProgressCallback | None = None,
    *,
    workers: int = 1,
    cache: HashCache | None = None,
    columns: Path | None = None,
) -> VerifiedImages:
    """Inspect each file the layout chose (damaged ones aside) and keep the images that decode.

    `workers` processes decode and hash (`parallel.inspect_all`: same results in the same order
    as one); images whose bytes `cache` knows are not decoded again, and the cache is saved with
    this fetch's images. Only columns are kept per image (`table.ImageTable`; with `columns`, a
    folder, as files there, read back memory-mapped), and the layout handed on has no per-file
    records left.

    Raises:
        DataError: no image is usable, or only one class has usable images.
        OSError: a staged file cannot be read (fetch wrote it itself: that is fatal).
    """
    layout = staged.layout
    candidates = layout.candidates()  # ISIC 2024's: made when indexed, never all held
    if layout.damaged:
        # Damaged archive members and unreadable files were never written: skipped with their reason.
        candidates = [c for c in candidates if c.rel not in layout.damaged]
    rels = Mapped(len(candidates), lambda i, held=candidates: held[i].rel)
    skipped = layout_skipped(layout)
    n_files = len(layout.files) + len(skipped)
    skipped += sorted(layout.damaged.items())
    table = ImageTable(len(rels), columns)
    results = inspect_all(FileReader(staged.images), rels, workers=workers, cache=cache)
    for n, (c, result) in enumerate(zip(candidates, results), 1):
        if result.reason:
            skipped.append((c.rel, result.reason))
        else:
            table.append(c.rel, c.label, c.split, result.sha256, result.hashes, c.row, result.skin)
        if on_progress:
            on_progress("verify", n, len(rels))
    del candidates, rels, results  # before the cache is saved: its arrays are made then
    if cache is not None:
        cache.save(table.sha256_raw, table.hashes, *table.skin_table())
    _check_classes(table, staged)
    classes = sorted(table.pools["label"].values)
    return VerifiedImages(table, classes, skipped, n_files, without_files(layout))


def _check_classes(table: ImageTable, staged: StagedFiles) -> None:
    if not len(table):
        raise DataError(
            f"no readable images found under {staged.images} (expected split/class/*.jpg)"
        )
    classes = sorted(table.pools["label"].values)
    if len(classes) < 2:
        lost = sorted({c.label for c in staged.layout.candidates()} - set(classes))
        raise DataError(
            f"only one class ({classes[0]}) has usable images"
            + (f"; every image of {', '.join(lost)} was skipped" if lost else "")
            + ": a classifier needs at least two classes, e.g. benign/ and malignant/"
        )


def without_files(layout: Layout) -> Layout:
    """`layout` less its per-file records (files, and a metadata layout's rows and labels): what
    `dataset.json` needs of it, a fixed size whatever the number of images."""
    if isinstance(layout, MetadataLayout):
        return replace(layout, files=[], rows={}, labels={})
    return replace(layout, files=[])
