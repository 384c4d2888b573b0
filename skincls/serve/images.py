"""Uploaded bytes → checked PIL images, in memory; and images → data URLs for the page.

Every refusal is an `UploadError` with an HTTP status, a short machine code and a one-line message
that says what to do. Sizes and shapes are checked from the image headers, before any pixel is
decoded, so a decompression bomb (a small file that expands to gigapixels) is refused without being
expanded. The pixels are decoded by `data.images.decode_image`, the reader of every other stage
(`skincls predict` included), so a file gets the same answer here as there.
"""

from __future__ import annotations

import base64
import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from ..data.images import ImageTooLarge, UnusableImage, check_shape, decode_image
from ..errors import SkinclsError

__all__ = ["FORMATS", "Upload", "UploadError", "decode_images", "to_data_url"]

# The raster formats skincls reads from disk (IMAGE_SUFFIXES) and GIF; no format whose plugin runs an
# external program (EPS runs Ghostscript) or parses documents (PDF). (JPEG covers MPO.)
FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF")


class UploadError(SkinclsError):
    """An upload the server refuses; `status` is the HTTP status, `code` a stable short name."""

    def __init__(self, message: str, *, status: int, code: str, file: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.file = file


@dataclass
class Upload:
    """One uploaded file: the name the client gave and its bytes."""

    name: str
    data: bytes


def decode_images(uploads: list[Upload], *, max_pixels: int) -> list[Image.Image]:
    """Decode every upload as `skincls predict` does (upright 8-bit RGB); refuse the request if any
    of them is not a usable image.

    Args:
        uploads: The request's files.
        max_pixels: Most pixels all images of one request may hold together (width × height summed).

    Raises:
        UploadError: empty file (422), not an image (415), corrupt or truncated (422), too
            elongated or with unusable pixels (422), or too many pixels (413) — for the first upload
            that fails.
    """
    sizes = [_size(u) for u in uploads]
    total = 0
    for u, (w, h) in zip(uploads, sizes):
        total += w * h
        if w * h > max_pixels:
            raise UploadError(
                f"{u.name} is {w}×{h} = {w * h / 1e6:.1f} megapixels; the limit is "
                f"{max_pixels / 1e6:g} (a decompression bomb?); send a smaller image",
                status=413,
                code="too_many_pixels",
                file=u.name,
            )
    if total > max_pixels:
        raise UploadError(
            f"the {len(uploads)} images hold {total / 1e6:.1f} megapixels together; the limit per "
            f"request is {max_pixels / 1e6:g}; send fewer or smaller images per request",
            status=413,
            code="too_many_pixels",
        )
    return [_load(u) for u in uploads]


def _size(upload: Upload) -> tuple[int, int]:
    """Read the header only: format, size and shape, no pixels yet."""
    if not upload.data:
        raise UploadError(
            f"{upload.name} is empty (0 bytes)", status=422, code="empty_file", file=upload.name
        )
    try:
        with warnings.catch_warnings():
            # Our own pixel limit is the check; PIL's warning would only be noise here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(upload.data), formats=FORMATS) as im:
                size = im.size
    except Image.DecompressionBombError as exc:
        raise UploadError(
            f"{upload.name} is refused as a decompression bomb: {exc}",
            status=413,
            code="too_many_pixels",
            file=upload.name,
        ) from exc
    except UnidentifiedImageError as exc:
        raise UploadError(
            f"{upload.name} is not an image skincls reads; upload a JPEG, PNG, BMP, TIFF, WebP "
            "or GIF file",
            status=415,
            code="not_an_image",
            file=upload.name,
        ) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise _corrupt(upload, exc) from exc
    try:
        check_shape(*size)
    except UnusableImage as exc:
        raise _unusable(upload, exc) from None
    return size


def _load(upload: Upload) -> Image.Image:
    """Decode the pixels (the header was checked) with the reader of every stage."""
    try:
        return decode_image(upload.data, formats=FORMATS)
    except ImageTooLarge as exc:  # over PIL's own limit (`Limits.max_pixels` may be higher)
        raise UploadError(
            f"{upload.name} is refused: {exc}", status=413, code="too_many_pixels", file=upload.name
        ) from None
    except UnusableImage as exc:
        raise _unusable(upload, exc) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise _corrupt(upload, exc) from exc


def _unusable(upload: Upload, exc: UnusableImage) -> UploadError:
    return UploadError(
        f"{upload.name} is refused: {exc}", status=422, code="unusable_image", file=upload.name
    )


def _corrupt(upload: Upload, exc: Exception) -> UploadError:
    return UploadError(
        f"{upload.name} is a damaged or truncated image ({exc}); upload the original file",
        status=422,
        code="corrupt_image",
        file=upload.name,
    )


def to_data_url(image: Image.Image, fmt: str = "JPEG", quality: int = 88) -> str:
    """`data:` URL of `image`, for a JSON response the page can show without another request."""
    buf = io.BytesIO()
    kwargs = {"quality": quality} if fmt == "JPEG" else {"optimize": True}
    image.save(buf, fmt, **kwargs)
    mime = {"JPEG": "image/jpeg", "PNG": "image/png"}[fmt]
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"
