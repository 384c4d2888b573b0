"""Images: the one way every stage decodes an image file (fetch, training, evaluation, predict, Grad-CAM).

One decoder means one answer: an image that fetch would refuse as a decompression bomb is refused by
`predict` too, and every stage sees the same pixels in the same orientation. EXIF orientation is
applied (`ImageOps.exif_transpose`), so the model, the duplicate hashes and the Grad-CAM overlays see
the image upright, as a photo viewer shows it.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageOps

from ..errors import DataError

__all__ = ["DECODER", "IMAGE_SUFFIXES", "ImageTooLarge", "decode_image", "load_image", "to_rgb"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
# Names what `decode_image` does; part of dataset fingerprints, so feature caches built with another
# decoder are not reused. Change it when the decoded pixels change.
DECODER = "rgb+exif-upright/1"


class ImageTooLarge(ValueError):
    """More pixels than Pillow's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`)."""


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


def decode_image(source: str | Path | bytes) -> Image.Image:
    """Decode a file (path or its bytes) completely into upright 8-bit RGB.

    Pillow refuses images past 2× `Image.MAX_IMAGE_PIXELS` but only warns between 1× and 2× and
    decodes anyway; here both are refused, by an explicit check of the size read from the header
    (not by turning the warning into an error: warning filters are process-wide and `predict` decodes
    in a worker thread).

    Raises:
        ImageTooLarge: more pixels than the decompression-bomb limit.
        Exception: whatever Pillow raises for a missing or broken file (`OSError`, `ValueError`,
            `SyntaxError`, …; `PIL.UnidentifiedImageError` when it is no image at all).
    """
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with Image.open(fp) as im:
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and im.width * im.height > limit:
                raise ImageTooLarge(
                    f"too large, possible decompression bomb: {im.width}×{im.height} = "
                    f"{im.width * im.height} pixels, over the limit of {limit} "
                    "(PIL.Image.MAX_IMAGE_PIXELS)"
                )
            im.load()
            return to_rgb(ImageOps.exif_transpose(im))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"too large, possible decompression bomb: {exc}") from None


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as upright RGB, as `decode_image` does, with one-line errors.

    Raises:
        DataError: the file is missing, unreadable, broken or a decompression bomb.
    """
    try:
        return decode_image(path)
    except ImageTooLarge as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError… for broken files
        raise DataError(f"cannot read image {path}: {exc}") from exc
