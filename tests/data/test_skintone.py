"""Skin tone: CIELAB from sRGB, ITA of synthetic skin of known L*a*b*, its categories, and the
manifest columns fetch writes."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from skincls.data.fetch import fetch
from skincls.data.skintone import image_ita, ita_category, rgb_to_lab, skin_ita

from .dermo import ham_archive, make_ham


def _lab_to_srgb(lab) -> np.ndarray:
    """The textbook inverse (CIE 1976, D65; IEC 61966-2-1), written out independently."""
    lightness, a, b = lab
    fy = (lightness + 16) / 116
    fx, fz = fy + a / 500, fy - b / 200

    def finv(t):
        return t**3 if t > 6 / 29 else 3 * (6 / 29) ** 2 * (t - 4 / 29)

    x, y, z = 0.95047 * finv(fx), finv(fy), 1.08883 * finv(fz)
    m = np.array([[3.2404542, -1.5371385, -0.4985314], [-0.9692660, 1.8760108, 0.0415560],
                  [0.0556434, -0.2040259, 1.0572252]])  # fmt: skip
    linear = m @ np.array([x, y, z])
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)


def test_lab_of_known_srgb_colours():
    assert rgb_to_lab([1.0, 1.0, 1.0]) == pytest.approx([100, 0, 0], abs=1e-3)
    assert rgb_to_lab([0.0, 0.0, 0.0]) == pytest.approx([0, 0, 0], abs=1e-9)
    # sRGB red, a published reference value.
    assert rgb_to_lab([1.0, 0.0, 0.0]) == pytest.approx([53.24, 80.09, 67.20], abs=0.01)


@pytest.mark.parametrize(
    "lab,category",
    [
        ((80.0, 8.0, 14.0), "very_light"),  # ITA 65.0
        ((65.0, 10.0, 16.0), "light"),  # 43.2
        ((58.0, 12.0, 12.0), "intermediate"),  # 33.7
        ((55.0, 12.0, 18.0), "tan"),  # 15.5
        ((42.0, 14.0, 22.0), "brown"),  # -20.0
        ((28.0, 12.0, 18.0), "dark"),  # -50.7
    ],
)
def test_ita_of_synthetic_skin_with_a_dark_lesion_in_the_middle(lab, category):
    expected = math.degrees(math.atan((lab[0] - 50) / lab[2]))
    skin = np.clip(_lab_to_srgb(lab), 0, 1)
    assert rgb_to_lab(skin) == pytest.approx(lab, abs=0.05)  # the inverse really gives that skin
    img = np.tile((skin * 255).round().astype(np.uint8), (100, 100, 1))
    img[30:70, 30:70] = (40, 25, 20)  # the lesion: dark brown, inside the ring
    img[:3, :3] = 0  # a dark corner of the dermatoscope's field: in the darkest quarter, left out
    got = image_ita(Image.fromarray(img))
    assert got == pytest.approx(expected, abs=0.6)  # 8-bit rounding of the skin colour
    assert ita_category(got) == category


@pytest.mark.parametrize("cast", [(200, 205, 230), (215, 200, 222), (190, 190, 190)])
def test_a_blue_grey_or_pink_cast_is_unknown_not_dark(cast):
    """Light skin under a blue, lilac or grey cast (b* <= 0) once came out as ITA -90, "dark"."""
    img = np.full((100, 100, 3), cast, dtype=np.uint8)
    img[30:70, 30:70] = (90, 50, 40)  # the lesion
    ita = image_ita(Image.fromarray(img))
    assert math.isnan(ita) and ita_category(ita) == "unknown"


def test_black_bars_are_left_out_and_a_ring_of_black_is_unknown():
    """Black bars at the sides (a letterboxed photo) once made light skin "dark"."""
    lab = (70.0, 10.0, 20.0)  # light skin: ITA 45 (light)
    rgb = np.clip(_lab_to_srgb(np.array(lab)) * 255 + 0.5, 0, 255).astype(np.uint8)
    img = np.zeros((100, 100, 3), dtype=np.uint8)
    img[:, 20:80] = rgb  # black bars: 40% of the image, over half of its border ring
    ita = image_ita(Image.fromarray(img))
    assert ita_category(ita) == "light", ita
    img[:, 5:95] = 0  # almost all black: too little skin to say
    img[40:60, 40:60] = rgb
    assert math.isnan(image_ita(Image.fromarray(img)))


def test_ita_formula_and_category_bounds():
    assert skin_ita(60.0, 10.0) == pytest.approx(45.0)
    assert skin_ita(40.0, 10.0) == pytest.approx(-45.0)
    assert skin_ita(70.0, 0.0) == 90.0 and skin_ita(30.0, 0.0) == -90.0
    assert [ita_category(v) for v in (55.1, 55.0, 41.0, 28.0, 10.0, -30.0, -30.1)] == [
        "very_light", "light", "intermediate", "tan", "brown", "dark", "dark",
    ]  # fmt: skip


def test_fetch_writes_ita_skin_tone_and_metadata_columns(tmp_path):
    ham = make_ham(tmp_path / "ham", n=24)
    report = fetch(tmp_path / "d", archive=ham_archive(ham, tmp_path / "ham.zip"))
    with (tmp_path / "d" / "manifest.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {"sex", "age", "site", "dx_type", "ita", "skin_tone"} <= set(rows[0])
    for r in rows:
        assert ita_category(float(r["ita"])) == r["skin_tone"]
        assert r["sex"] in ("male", "female")
    summary = json.loads((tmp_path / "d" / "dataset.json").read_text())["skin_tone"]
    assert sum(summary["counts"].values()) == len(rows) == 24
    assert sum(sum(s.values()) for s in summary["by_split"].values()) == 24
    # The manifest reads back with the same columns.
    first = report.manifest.records[0]
    assert first.column("skin_tone") == rows[0]["skin_tone"] and first.column("sex")


def test_median_of_counted_values_equals_the_median_of_them_repeated():
    from skincls.data.skintone import _median

    rng = np.random.default_rng(0)
    for size in (1, 2, 3, 10, 50):
        x = np.round(rng.normal(20, 30, size), 1).tolist()
        n = rng.integers(1, 5, size).tolist()
        assert _median(list(zip(x, n))) == round(float(np.median(np.repeat(x, n))), 1)
    assert _median([(1.0, 1), (2.0, 1)]) == 1.5 and _median([]) is None
