"""Image loading: every mode the verifier accepts arrives as 8-bit RGB."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from skincls.data.dataset import load_image
from skincls.data.fetch import fetch
from skincls.data.ingest import inspect_image
from skincls.data.synthetic import make_lesion


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


def _to_16bit(im: Image.Image) -> Image.Image:
    """The grayscale of `im` on the full 16-bit scale (mode I;16)."""
    return Image.fromarray(np.asarray(im.convert("L")).astype(np.uint16) * 257)


def test_16bit_images_are_hashed_as_the_model_sees_them(tmp_path):
    # Hashed from the raw decode, every 16-bit image clipped to white and all of them became one
    # duplicate cluster.
    src = tmp_path / "src"
    for i in range(6):
        label = "malignant" if i % 2 else "benign"
        (src / label).mkdir(parents=True, exist_ok=True)
        lesion = make_lesion(bool(i % 2), np.random.default_rng([7, i]), size=64)
        _to_16bit(lesion).save(src / label / f"{i}.png")
    original = make_lesion(False, np.random.default_rng([7, 99]), size=64)
    original.save(src / "benign" / "original.png")  # 8-bit RGB
    _to_16bit(original).save(src / "benign" / "copy16.png")
    assert Image.open(src / "benign" / "copy16.png").mode == "I;16"
    report = fetch(tmp_path / "d", source_dir=src)
    assert report.info.n_kept == 8
    clusters = report.info.duplicates.clusters
    assert [sorted(c.paths) for c in clusters] == [
        ["images/benign/copy16.png", "images/benign/original.png"]
    ]
