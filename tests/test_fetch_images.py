"""Image loading: every mode the verifier accepts arrives as 8-bit RGB."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from skincls.data import load_image
from skincls.ingest import inspect_image


def _images(tmp_path):
    rgb = Image.new("RGB", (24, 16), (200, 100, 50))
    gray16 = Image.fromarray(np.full((16, 24), 32768, dtype=np.uint16))  # mode I;16, half scale
    rgba = Image.new("RGBA", (24, 16), (10, 20, 30, 0))  # fully transparent → white
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    cases = {
        "gray.png": rgb.convert("L"),
        "bw.png": rgb.convert("1"),
        "palette.png": palette,
        "rgba.png": rgba,
        "la.png": rgb.convert("LA"),
        "cmyk.jpg": rgb.convert("CMYK"),
        "gray16.png": gray16,
        "int32.tif": gray16.convert("I"),
    }
    paths = {}
    for name, im in cases.items():
        im.save(tmp_path / name)
        paths[name] = tmp_path / name
    return paths


@pytest.mark.parametrize(
    "name",
    [
        "gray.png",
        "bw.png",
        "palette.png",
        "rgba.png",
        "la.png",
        "cmyk.jpg",
        "gray16.png",
        "int32.tif",
    ],
)
def test_modes_load_as_rgb_and_pass_verification(tmp_path, name):
    path = _images(tmp_path)[name]
    im = load_image(path)
    assert im.mode == "RGB" and im.size == (24, 16)
    assert inspect_image(path).reason is None
    px = np.asarray(im)[0, 0]
    if name == "rgba.png":
        assert tuple(px) == (255, 255, 255)
    if name in ("gray16.png", "int32.tif"):
        assert tuple(px) == (128, 128, 128)  # scaled, not clipped to white
    if name == "cmyk.jpg":
        assert abs(int(px[0]) - 200) < 20 and abs(int(px[2]) - 50) < 20
