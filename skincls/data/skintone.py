"""Skin tone: the individual typology angle (ITA) of the skin around a lesion, and its category.

ITA = arctan((L* − 50) / b*) · 180/π, from the CIELAB lightness L* and yellow–blue b* of the skin
(Chardon et al., 1991). The skin is taken from the image's border ring (the outer 15% on each side),
where dermoscopy and close-up photos show skin rather than lesion, leaving out its darkest quarter
(lesion edges, hair, the dark corners of a dermatoscope's round field of view); the ITA of the median
L* and b* of what is left is the image's.

Limits: ITA tracks the Fitzpatrick skin type only imperfectly (it measures colour, Fitzpatrick asks
how skin reacts to sun); the light, white balance and polarisation of a dermatoscope shift L* and
b*, so one device's ITA is not another's; and the border ring of a tightly cropped image is partly
lesion. It is an estimate for auditing a dataset's spread of skin tones, never a label of a patient.

Black (L* < 15: the bars of a letterboxed photo, the outside of a round field of view) is never skin
and is left out first. Skin always has some yellow (b* > 0). Where the ring's median b* is not above `MIN_B` (a blue, grey or
pink cast of the device's light: common in dermoscopy), the formula's angle says nothing about the
skin (a light, blue-cast field came out as ITA -90, "dark"): such an image's ITA is NaN and its
category `unknown`, counted as such, never guessed.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping

import numpy as np
from PIL import Image

__all__ = [
    "ITA_CATEGORIES",
    "describe_skin_tones",
    "image_ita",
    "ita_category",
    "rgb_to_lab",
    "skin_ita",
    "skin_tone_attributes",
    "skin_tone_counts",
    "skin_tone_summary",
]

# Lower ITA bound (degrees) → category, lightest first (Del Bino and Bernerd, 2013).
ITA_CATEGORIES = (
    (55.0, "very_light"),
    (41.0, "light"),
    (28.0, "intermediate"),
    (10.0, "tan"),
    (-30.0, "brown"),
    (-math.inf, "dark"),
)
MIN_B = 2.0  # b* at or below this: a colour cast, not skin (ITA unknown)
_BLACK = 15.0  # L* below this: a black bar or the dark outside of a round field, never skin
_MIN_SKIN = 0.25  # ITA unknown when less than this share of the ring is left as skin
UNKNOWN = "unknown"
_BORDER = 0.15  # share of each side that forms the ring
_DARKEST = 0.25  # share of the ring's pixels (by L*) left out
_SIDE = 128  # the image is reduced to this size first: ITA needs colour, not detail
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])
_RGB_TO_XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65 white) of sRGB values in [0, 1], shape (..., 3) → (..., 3): L*, a*, b*."""
    rgb = np.asarray(rgb, dtype=np.float64)
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _RGB_TO_XYZ.T / _WHITE_D65
    eps = (6 / 29) ** 3
    f = np.where(xyz > eps, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])],
        axis=-1,
    )


def skin_ita(lightness: float, b: float) -> float:
    """ITA in degrees of a colour's L* and b* (in (−90, 90]; 90 where b* is 0 and L* > 50)."""
    return math.degrees(math.atan2(lightness - 50.0, b)) if b > 0 else _ita_edge(lightness, b)


def _ita_edge(lightness: float, b: float) -> float:
    # arctan of x / b* for b* <= 0, taken as the formula's limit: skin has b* > 0, but a grey or blue
    # cast must still give a number in range, not a jump through ±180°.
    if b == 0:
        return 90.0 if lightness >= 50 else -90.0
    return math.degrees(math.atan((lightness - 50.0) / b))


def ita_category(ita: float) -> str:
    """The ITA category (`ITA_CATEGORIES`) of an angle in degrees; `unknown` for NaN."""
    if math.isnan(ita):
        return UNKNOWN
    return next(name for lo, name in ITA_CATEGORIES if ita > lo)


def image_ita(image: Image.Image) -> float:
    """ITA of the skin in the image's border ring, its darkest quarter left out (module docstring);
    NaN where the ring's median b* is at most `MIN_B` (a colour cast, not skin), or where black
    bars or a round field's dark outside (L* < 15) leave less than a quarter of the ring."""
    small = image.convert("RGB")
    small.thumbnail((_SIDE, _SIDE))
    lab = rgb_to_lab(np.asarray(small, dtype=np.float64) / 255.0)
    h, w = lab.shape[:2]
    bh, bw = max(1, round(h * _BORDER)), max(1, round(w * _BORDER))
    ring = np.ones((h, w), dtype=bool)
    ring[bh : h - bh, bw : w - bw] = False
    skin = lab[ring]
    skin = skin[skin[:, 0] >= _BLACK]  # even the darkest skin has L* of 25 or more
    if len(skin) < _MIN_SKIN * ring.sum():
        return math.nan
    skin = skin[skin[:, 0] >= np.quantile(skin[:, 0], _DARKEST)]
    lightness, b = np.median(skin[:, 0]), np.median(skin[:, 2])
    if b <= MIN_B:
        return math.nan
    return skin_ita(float(lightness), float(b))


def skin_tone_attributes(image: Image.Image) -> tuple[tuple[str, str], ...]:
    """The manifest's `ita` (degrees, one decimal) and `skin_tone` of an image, as decoded for every
    stage (`images.decode_image`: upright, RGB)."""
    ita = image_ita(image)
    return (("ita", "" if math.isnan(ita) else f"{ita:.1f}"), ("skin_tone", ita_category(ita)))


def skin_tone_summary(records) -> dict | None:
    """`dataset.json`'s `skin_tone`: images per ITA category in each split and in all, the median
    ITA, and the recorded Fitzpatrick types where the metadata has them; None without any ITA."""
    return skin_tone_counts(
        Counter(
            (r.split, r.column("skin_tone"), r.column("ita"), r.column("fitzpatrick"))
            for r in records
        )
    )


def skin_tone_counts(counts: Mapping[tuple[str, str, str, str], int]) -> dict | None:
    """`skin_tone_summary` of images counted by `(split, skin_tone, ita, fitzpatrick)` (each
    "" where unknown): no object per image."""
    tones = {k: n for k, n in counts.items() if k[1]}
    if not tones:
        return None
    order = [*(name for _, name in ITA_CATEGORIES), UNKNOWN]
    known = [(float(k[2]), n) for k, n in tones.items() if k[2]]
    total, by = Counter(), Counter()
    for (split, tone, _, _), n in tones.items():
        total[tone] += n
        by[split, tone] += n
    out: dict = {
        "method": "ITA of the image's border ring, darkest quarter left out, unknown where its "
        f"median b* <= {MIN_B:g} (a colour cast) (skincls.data.skintone)",
        "median_ita": _median(known),
        "counts": {c: total[c] for c in order},
        "by_split": {s: {c: by[s, c] for c in order} for s in ("train", "val", "test")},
    }
    fitz = Counter()
    for k, n in counts.items():
        if k[3]:
            fitz[k[3]] += n
    if fitz:
        out["fitzpatrick"] = {v: fitz[v] for v in sorted(fitz)}
    return out


def _median(values: list[tuple[float, int]]) -> float | None:
    """The median (one decimal) of values given with their counts; None without any."""
    if not values:
        return None
    x, n = np.array([v for v, _ in values]), np.array([n for _, n in values], np.int64)
    order = np.argsort(x, kind="stable")
    x, ends = x[order], np.cumsum(n[order])
    # The middle one or two of the values repeated by their counts, not a value per image.
    lo, hi = x[np.searchsorted(ends, [(ends[-1] - 1) // 2, ends[-1] // 2], "right")]
    return round(float(np.mean([lo, hi]) if lo != hi else lo), 1)


def describe_skin_tones(summary: dict | None) -> str | None:
    """One line for fetch's output: images per ITA category, and the median ITA."""
    if not summary:
        return None
    counts = ", ".join(f"{c} {n}" for c, n in summary["counts"].items() if n)
    return f"skin tone (ITA estimate, median {summary['median_ita']}°): {counts}"
