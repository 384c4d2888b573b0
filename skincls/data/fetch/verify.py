"""Verify: decode every staged image, hash it and estimate its skin tone (ITA); what does not
decode is skipped with its reason.

What the layout left out (hidden files, files outside it, damaged archive members, metadata rows
without a class) is listed with the images that failed here, so nothing is dropped silently.
"""

from __future__ import annotations

from ...errors import DataError
from ..hashcache import HashCache
from ..layouts import layout_skipped
from ..parallel import FileReader, inspect_all
from ..sources import row_of
from .records import ProgressCallback, StagedFiles, VerifiedImage, VerifiedImages

__all__ = ["verify_images"]


def verify_images(
    staged: StagedFiles,
    on_progress: ProgressCallback | None = None,
    *,
    workers: int = 1,
    cache: HashCache | None = None,
) -> VerifiedImages:
    """Inspect each file the layout chose (damaged ones aside) and keep the images that decode.

    `workers` processes decode and hash (`parallel.inspect_all`: same results in the same order
    as one); images whose bytes `cache` knows are not decoded again, and the cache is saved.

    Raises:
        DataError: no image is usable, or only one class has usable images.
        OSError: a staged file cannot be read (fetch wrote it itself: that is fatal).
    """
    layout = staged.layout
    # Damaged archive members and unreadable files were never written: skipped with their reason.
    candidates = [c for c in layout.candidates() if c.rel not in layout.damaged]
    skipped = layout_skipped(layout)
    n_files = len(layout.files) + len(skipped)
    skipped += sorted(layout.damaged.items())
    kept = []
    results = inspect_all(
        FileReader(staged.images), [c.rel for c in candidates], workers=workers, cache=cache
    )
    for n, (c, result) in enumerate(zip(candidates, results), 1):
        if result.reason:
            skipped.append((c.rel, result.reason))
        else:
            row = row_of(layout, c.rel)
            kept.append(
                VerifiedImage(
                    c.rel, c.label, c.split, result.sha256, result.hashes, row, result.skin
                )
            )
        if on_progress:
            on_progress("verify", n, len(candidates))
    if cache is not None:
        cache.save()
    if not kept:
        raise DataError(
            f"no readable images found under {staged.images} (expected split/class/*.jpg)"
        )
    classes = sorted({im.label for im in kept})
    if len(classes) < 2:
        lost = sorted({c.label for c in layout.candidates()} - set(classes))
        raise DataError(
            f"only one class ({classes[0]}) has usable images"
            + (f"; every image of {', '.join(lost)} was skipped" if lost else "")
            + ": a classifier needs at least two classes, e.g. benign/ and malignant/"
        )
    return VerifiedImages(kept, classes, skipped, n_files, layout)
