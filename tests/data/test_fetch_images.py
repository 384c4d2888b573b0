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
        "float.tif": Image.fromarray(np.full((16, 24), 0.5, dtype=np.float32)),  # mode F, [0, 1]
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
        "float.tif",
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
    if name in ("gray16.png", "int32.tif", "float.tif"):
        assert tuple(px) == (
            128,
            128,
            128,
        )  # scaled, not clipped to white (16-bit) or black (float)
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


def test_float_images_on_the_0_to_1_scale_round_trip_8_bits(tmp_path):
    levels = np.arange(256, dtype=np.float32).reshape(16, 16)
    Image.fromarray(levels / np.float32(255)).save(tmp_path / "float.tif")
    assert Image.open(tmp_path / "float.tif").mode == "F"
    im = load_image(tmp_path / "float.tif")
    assert np.array_equal(np.asarray(im)[..., 0], levels.astype(np.uint8))  # k/255 → k


def _float_tif(path, values) -> None:
    Image.fromarray(np.asarray(values, dtype=np.float32).reshape(8, 6)).save(path)


def test_images_no_stage_can_use_are_skipped_by_fetch_with_the_reason(tmp_path):
    src = tmp_path / "src"
    for label in ("benign", "malignant"):
        (src / label).mkdir(parents=True)
        for i in range(3):
            make_lesion(label == "malignant", np.random.default_rng([11, i, len(label)]), 32).save(
                src / label / f"{i}.png"
            )
    bad = src / "benign"
    _float_tif(bad / "nan.tif", [np.nan] * 48)
    _float_tif(bad / "inf.tif", [0.5] * 46 + [np.inf, -np.inf])
    _float_tif(bad / "float255.tif", np.linspace(0, 255, 48))  # scale unknown: refused, not guessed
    Image.new("RGB", (100_000, 1), (120, 80, 60)).save(bad / "wide.png")  # a few hundred bytes
    Image.new("RGB", (30, 3), (120, 80, 60)).save(bad / "ten_to_one.png")  # at the limit: kept
    report = fetch(tmp_path / "d", source_dir=src, near_dup_distance=-1)
    assert dict(report.skipped) == {
        "benign/nan.tif": "48 of its 48 pixels are NaN or infinite (a 32-bit float image); "
        "export it again with finite values",
        "benign/inf.tif": "2 of its 48 pixels are NaN or infinite (a 32-bit float image); "
        "export it again with finite values",
        "benign/float255.tif": "a 32-bit float image with values from 0 to 255; skincls reads "
        "float images on the scale 0 to 1 only: rescale it to [0, 1] or save it as 8 or 16 bits",
        "benign/wide.png": "too elongated: 100000×1 pixels is 100000:1, over the limit of 10:1 "
        "(resizing its short side to the model's input would blow up the long one); crop it to "
        "the lesion",
    }
    assert report.info.n_kept == 7
