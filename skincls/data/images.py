"""Images: the one way every stage decodes an image file (fetch, training, evaluation, predict, Grad-CAM).

One decoder means one answer: an image that fetch would refuse as a decompression bomb is refused by
`predict` too, and every stage sees the same pixels in the same orientation. EXIF orientation is
applied (`ImageOps.exif_transpose`), so the model, the duplicate hashes and the Grad-CAM overlays see
the image upright, as a photo viewer shows it. Images that would give a silent wrong answer are
refused with the reason (`UnusableImage`): NaN or infinite pixels, float pixels off the 0–1 scale,
and shapes too elongated to resize (a 100000×1 PNG would become 25.6 million × 256 pixels).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import DataError
from .hdf5 import hdf5_member, read_member

__all__ = [
    "DECODER",
    "IMAGE_SUFFIXES",
    "MAX_ASPECT",
    "ImageTooLarge",
    "UnusableImage",
    "check_shape",
    "decode_image",
    "load_image",
    "prepare_image",
    "to_rgb",
]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
# Names what `decode_image` does; part of dataset fingerprints, so feature caches built with another
# decoder are not reused. Change it when the decoded pixels change.
DECODER = "rgb+exif-upright+float01/2"
# Longest side / shortest side. Dermoscopic and clinical photos are at most about 2:1; the model
# resizes the short side, so the long side (and the memory) grows with the ratio.
MAX_ASPECT = 10


class UnusableImage(ValueError):
    """An image skincls refuses to read, because any answer from it could be silently wrong."""


class ImageTooLarge(UnusableImage):
    """More pixels than Pillow's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`)."""


def check_shape(width: int, height: int) -> None:
    """Refuse an image whose long side is more than `MAX_ASPECT` times its short side.

    Resizing the short side to the model's size multiplies the long one: a 375-byte 100000×1 PNG
    would become a 25.6 million × 256 tensor (gigabytes), so it is refused from its header.

    Raises:
        UnusableImage: too elongated.
    """
    short, long = sorted((width, height))
    if long > MAX_ASPECT * short:
        ratio = f"{long / max(short, 1):.1f}".removesuffix(".0")
        raise UnusableImage(
            f"too elongated: {width}×{height} pixels is {ratio}:1, over the limit of "
            f"{MAX_ASPECT}:1 (resizing its short side to the model's input would blow up the long "
            "one); crop it to the lesion"
        )


def to_rgb(im: Image.Image) -> Image.Image:
    """`im` as 8-bit RGB, the way the model sees it (grayscale, palette, CMYK, 16-bit, alpha).

    16-bit and 32-bit integer grayscale is scaled to 8 bits (a plain conversion clips it to white);
    32-bit float grayscale on the scale 0 to 1 likewise (a plain conversion turns it black);
    transparent pixels are composited on white (a plain conversion turns them black).

    Raises:
        UnusableImage: a float image with NaN or infinite pixels, or values outside [0, 1].
    """
    if im.mode == "I" or im.mode.startswith("I;16"):
        im = im.point(lambda v: v / 256).convert("L")
    if im.mode == "F":
        im = _float_to_8bit(im)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return im.convert("RGB")


def _float_to_8bit(im: Image.Image) -> Image.Image:
    """Mode F (32-bit float grayscale, e.g. a TIFF) in [0, 1] → mode L, rounded (k/255 → k).

    Other ranges are refused, not stretched: the scale of a float image is not in the file (0–1,
    0–255, 0–65535, …), and a guess (or a per-image min–max stretch) would silently change what the
    model sees. NaN becomes 0 and inf 255 in a plain conversion, which gave confident predictions.
    """
    a = np.asarray(im)
    bad = int(a.size - np.count_nonzero(np.isfinite(a)))
    if bad:
        raise UnusableImage(
            f"{bad} of its {a.size} pixels are NaN or infinite (a 32-bit float image); "
            "export it again with finite values"
        )
    lo, hi = float(a.min()), float(a.max())
    if lo < 0 or hi > 1:
        raise UnusableImage(
            f"a 32-bit float image with values from {lo:g} to {hi:g}; skincls reads float images "
            "on the scale 0 to 1 only: rescale it to [0, 1] or save it as 8 or 16 bits"
        )
    return im.point(lambda v: v * 255 + 0.5).convert("L")


def prepare_image(im: Image.Image) -> Image.Image:
    """An image already in memory as the model reads it: `check_shape`, then `to_rgb`.

    EXIF orientation is not applied here: an image in memory is taken as it is (upright).

    Raises:
        UnusableImage: see `check_shape` and `to_rgb`.
    """
    check_shape(im.width, im.height)
    return to_rgb(im)


def decode_image(
    source: str | Path | bytes, *, formats: tuple[str, ...] | None = None
) -> Image.Image:
    """Decode a file (path or its bytes) completely into upright 8-bit RGB: every stage's reader.

    The size and shape are checked from the header, before any pixel is decoded; then the image is
    decoded, turned upright (EXIF orientation) and converted by `prepare_image`.

    Pillow refuses images past 2× `Image.MAX_IMAGE_PIXELS` but only warns between 1× and 2× and
    decodes anyway; here both are refused, by an explicit check of the size read from the header
    (not by turning the warning into an error: warning filters are process-wide and `predict` decodes
    in a worker thread).

    Args:
        source: A path, or the file's bytes.
        formats: Pillow format names to try (e.g. `serve`'s list); None: every format Pillow reads.

    Raises:
        ImageTooLarge: more pixels than the decompression-bomb limit.
        UnusableImage: too elongated, or float pixels that are not finite or not in [0, 1].
        Exception: whatever Pillow raises for a missing or broken file (`OSError`, `ValueError`,
            `SyntaxError`, …; `PIL.UnidentifiedImageError` when it is no image at all).
    """
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with Image.open(fp, formats=formats) as im:
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and im.width * im.height > limit:
                raise ImageTooLarge(
                    f"too large, possible decompression bomb: {im.width}×{im.height} = "
                    f"{im.width * im.height} pixels, over the limit of {limit} "
                    "(PIL.Image.MAX_IMAGE_PIXELS)"
                )
            check_shape(im.width, im.height)
            im.load()
            return prepare_image(ImageOps.exif_transpose(im))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"too large, possible decompression bomb: {exc}") from None


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as upright RGB, as `decode_image` does, with one-line errors.

    A path inside an HDF5 file (`train-image.hdf5/ISIC_0015670.jpg`, see `skincls.data.hdf5`)
    reads the image stored there.

    Raises:
        DataError: the file is missing, unreadable, broken, a decompression bomb or refused
            (`UnusableImage`).
    """
    member = hdf5_member(path)
    try:
        return decode_image(path if member is None else read_member(*member))
    except UnusableImage as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError… for broken files
        raise DataError(f"cannot read image {path}: {exc}") from exc
