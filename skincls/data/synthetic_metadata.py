"""Synthetic HAM10000-like data: patients, lesions and several photos of each, with a metadata CSV.

What makes real dermoscopy data leak is here on purpose: a lesion is photographed several times
(another zoom, rotation and lighting, so no perceptual hash joins the photos), patients have several
lesions, and seven diagnoses come in HAM10000's proportions. Only the metadata CSV knows which
photos belong together, as in the real dataset. Every image is a pure function of the seed and its
lesion and view numbers.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from ..atomic import atomic_write
from .synthetic import make_lesion

__all__ = ["DX_MIX", "generate_from_rows", "generate_synthetic_metadata"]

# HAM10000's diagnosis mix (share of its 10,015 images).
DX_MIX = {
    "nv": 0.669,
    "mel": 0.111,
    "bkl": 0.110,
    "bcc": 0.051,
    "akiec": 0.033,
    "vasc": 0.014,
    "df": 0.011,
}
# Per diagnosis: the malignant-looking drawing (asymmetric, several colours) or not, and a palette.
_STYLE = {
    "nv": (False, [[150, 95, 60], [120, 75, 45], [100, 60, 35]]),
    "bkl": (False, [[175, 135, 90], [160, 125, 85], [190, 150, 105]]),
    "df": (False, [[170, 110, 100], [150, 95, 85], [185, 125, 110]]),
    "vasc": (False, [[160, 40, 60], [120, 30, 70], [140, 50, 90]]),
    "mel": (True, [[90, 50, 30], [35, 25, 25], [170, 70, 60], [95, 100, 125], [185, 140, 100]]),
    "bcc": (True, [[200, 150, 150], [95, 100, 125], [170, 110, 120], [210, 170, 165]]),
    "akiec": (True, [[190, 90, 80], [210, 150, 130], [170, 70, 60], [220, 190, 170]]),
}
_PHOTOS_PER_LESION = ([1, 2, 3, 4, 5], [0.5, 0.25, 0.13, 0.08, 0.04])
_LESIONS_PER_PATIENT = ([1, 2, 3, 4], [0.55, 0.25, 0.12, 0.08])
_SITES = ("back", "lower extremity", "trunk", "upper extremity", "abdomen", "face", "chest", "neck")
_FIRST_IMAGE = 24306  # HAM10000's image ids start at ISIC_0024306
COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "patient_id")


def generate_synthetic_metadata(
    root: str | Path,
    n: int,
    *,
    seed: int = 0,
    size: int = 224,
    mix: dict[str, float] | None = None,
) -> dict[str, int]:
    """Write `n` images in HAM10000's layout under `root`.

    `root/HAM10000_metadata.csv` (lesion_id, image_id, dx, dx_type, age, sex, localization, plus a
    patient_id the real file lacks) and the images, `root/HAM10000_images_part_1/ISIC_*.jpg` and
    `_part_2/`, half in each.

    Args:
        n: Total number of images (at least 4).
        seed: Same seed → the same patients, lesions and byte-identical images.
        size: Image side in pixels.
        mix: Share of lesions per diagnosis code (default `DX_MIX`, HAM10000's).

    Returns:
        Images per diagnosis code.
    """
    if n < 4:
        raise ValueError("a synthetic dataset needs at least 4 images")
    root = Path(root)
    mix = mix or DX_MIX
    codes = list(mix)
    p = np.array([mix[c] for c in codes], dtype=float)
    p /= p.sum()
    plan = np.random.default_rng([seed, 0])
    rows: list[dict] = []
    lesion = patient = 0
    while len(rows) < n:
        patient += 1
        age = int(plan.integers(3, 18)) * 5
        sex = str(plan.choice(["male", "female"]))
        for _ in range(int(plan.choice(_LESIONS_PER_PATIENT[0], p=_LESIONS_PER_PATIENT[1]))):
            lesion += 1
            dx = codes[int(plan.choice(len(codes), p=p))]
            site = str(plan.choice(_SITES))
            dx_type = (
                "histo"
                if _STYLE.get(dx, (True,))[0]
                else str(plan.choice(["follow_up", "consensus", "histo"]))
            )
            for view in range(int(plan.choice(_PHOTOS_PER_LESION[0], p=_PHOTOS_PER_LESION[1]))):
                if len(rows) == n:
                    break
                rows.append(
                    {
                        "lesion_id": f"HAM_{lesion:07d}",
                        "image_id": f"ISIC_{_FIRST_IMAGE + len(rows):07d}",
                        "dx": dx,
                        "dx_type": dx_type,
                        "age": f"{age:.1f}",
                        "sex": sex,
                        "localization": site,
                        "patient_id": f"PAT_{patient:05d}",
                        "_lesion": lesion,
                        "_view": view,
                    }
                )
    parts = [root / "HAM10000_images_part_1", root / "HAM10000_images_part_2"]
    for folder in parts:
        folder.mkdir(parents=True, exist_ok=True)
    base: tuple[int, Image.Image] | None = None
    for i, row in enumerate(rows):
        if base is None or base[0] != row["_lesion"]:
            base = (row["_lesion"], _draw(row["dx"], seed, row["_lesion"], size))
        view = _view(base[1], np.random.default_rng([seed, 2, row["_lesion"], row["_view"]]), size)
        view.save(parts[int(i >= n / 2)] / f"{row['image_id']}.jpg", quality=90)
    with atomic_write(root / "HAM10000_metadata.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["dx"]] = counts.get(row["dx"], 0) + 1
    return dict(sorted(counts.items()))


def generate_from_rows(
    root: str | Path,
    rows: list[dict[str, str]],
    *,
    signal: float = 1.0,
    seed: int = 0,
    size: int = 224,
) -> dict[str, int]:
    """Synthetic photos for real metadata rows, in HAM10000's layout under `root`.

    `rows` are HAM10000_metadata.csv rows (lesion_id, image_id, dx, dx_type, age, sex,
    localization, ...): the CSV is written back with them, so the real age/sex/site → diagnosis
    relations carry over, and each row gets a photo of its lesion (one drawing per lesion_id,
    several views). The image says the diagnosis only weakly: a lesion is drawn in its own
    diagnosis's style with probability `signal`, else in the style of a diagnosis drawn from
    `DX_MIX` (seeded, per lesion).

    Returns:
        Images per diagnosis code.
    """
    if not 0.0 <= signal <= 1.0:
        raise ValueError("signal is a probability in [0, 1]")
    root = Path(root)
    parts = [root / "HAM10000_images_part_1", root / "HAM10000_images_part_2"]
    for folder in parts:
        folder.mkdir(parents=True, exist_ok=True)
    codes = list(DX_MIX)
    p = np.array([DX_MIX[c] for c in codes]) / sum(DX_MIX.values())
    lesions: dict[str, int] = {}
    views: dict[str, int] = {}
    base: tuple[str, Image.Image] | None = None
    counts: dict[str, int] = {}
    for i, row in enumerate(rows):
        lesion = row["lesion_id"] or row["image_id"]
        number = lesions.setdefault(lesion, len(lesions) + 1)
        if base is None or base[0] != lesion:
            rng = np.random.default_rng([seed, 3, number])
            shown = row["dx"] if rng.random() < signal else codes[int(rng.choice(len(codes), p=p))]
            base = (lesion, _draw(shown, seed, number, size))
        view = views[lesion] = views.get(lesion, -1) + 1
        photo = _view(base[1], np.random.default_rng([seed, 2, number, view]), size)
        photo.save(parts[int(i >= len(rows) / 2)] / f"{row['image_id']}.jpg", quality=90)
        counts[row["dx"]] = counts.get(row["dx"], 0) + 1
    with atomic_write(root / "HAM10000_metadata.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return dict(sorted(counts.items()))


def _draw(dx: str, seed: int, lesion: int, size: int) -> Image.Image:
    """The lesion itself, drawn larger than a photo so that every view can crop and turn it."""
    malignant, palette = _STYLE.get(dx, (True, None))
    rng = np.random.default_rng([seed, 1, lesion])
    return make_lesion(
        malignant, rng, int(size * 1.5), None if palette is None else np.array(palette)
    )


def _view(base: Image.Image, rng: np.random.Generator, size: int) -> Image.Image:
    """Another photo of the lesion: turned by any angle, zoomed, shifted and lit differently."""
    big = base.width
    turned = base.rotate(float(rng.uniform(0, 360)), resample=Image.Resampling.BILINEAR)
    safe = big / np.sqrt(2)  # the square inside the turned image that has no empty corners
    side = safe * rng.uniform(0.65, 1.0)
    cx, cy = big / 2 + rng.uniform(-1, 1, 2) * (safe - side) / 2
    box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    photo = turned.resize((size, size), Image.Resampling.BILINEAR, box=tuple(map(float, box)))
    if rng.random() < 0.5:
        photo = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    photo = ImageEnhance.Brightness(photo).enhance(float(rng.uniform(0.8, 1.2)))
    photo = ImageEnhance.Contrast(photo).enhance(float(rng.uniform(0.85, 1.15)))
    tint = np.clip(1 + rng.normal(0, 0.05, 3), 0.85, 1.15)
    arr = np.asarray(photo, dtype=np.float32) * tint
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
