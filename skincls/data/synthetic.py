"""Synthetic dermoscopy-like images: the embedded, offline default dataset for the demo and tests.

The two classes differ the way the ABCD rule describes lesions: benign ones are round, symmetric, with a
smooth border and one even brown; malignant ones are asymmetric, with an irregular border and several
colours. Skin tone, size, position, hair and noise vary at random, and the classes overlap a little, so a
model has to learn shape and colour rather than one shortcut. Every image is a pure function of
`(seed, index)`, so a dataset is reproducible image by image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["CLASSES", "generate_synthetic", "make_lesion"]

CLASSES = ("benign", "malignant")

_SKIN = np.array([[233, 196, 170], [214, 170, 140], [190, 140, 105], [160, 110, 80], [120, 80, 55]])
_BROWN = np.array([[150, 95, 60], [120, 75, 45], [100, 60, 35]])
# Dark brown, black, red, blue-grey, light tan: the "several colours" of a suspicious lesion.
_MALIGNANT_COLOURS = np.array(
    [[90, 50, 30], [35, 25, 25], [170, 70, 60], [95, 100, 125], [185, 140, 100]]
)


def make_lesion(
    malignant: bool, rng: np.random.Generator, size: int = 224, colours: np.ndarray | None = None
) -> Image.Image:
    """Draw one RGB lesion image of `size`×`size` pixels.

    `colours` (RGB rows) replaces the palette: the benign drawing takes one of them, the malignant
    one several; None keeps the default browns (benign) and mixed colours (malignant).
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size

    skin = _SKIN[rng.integers(len(_SKIN))] + rng.normal(0, 8, 3)
    # Uneven lighting as in a dermoscope's field of view (vignette, a gradient) and mottled skin. Each
    # image gets its own low-frequency pattern, so perceptual hashes don't see distinct synthetic
    # lesions as near-duplicates of one another.
    vx, vy = rng.uniform(0.3, 0.7, 2)
    angle = rng.uniform(0, 2 * np.pi)
    light = (
        1.0
        - rng.uniform(0.1, 0.5) * ((xx - vx) ** 2 + (yy - vy) ** 2)
        + rng.uniform(0.05, 0.25) * ((xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle))
        + rng.uniform(0.08, 0.16) * (_smooth_noise(rng, size, cells=int(rng.integers(3, 7))) - 0.5)
    )
    img = skin[None, None, :] * light[..., None]

    cx, cy = rng.uniform(0.35, 0.65, 2)
    radius = rng.uniform(0.12, 0.3)
    theta = np.arctan2(yy - cy, xx - cx)
    dist = np.hypot(xx - cx, yy - cy)
    # Border: a radius modulated by harmonics; low amplitude = round, high = irregular and asymmetric.
    amp_scale = rng.uniform(0.06, 0.16) if malignant else rng.uniform(0.0, 0.05)
    r_theta = np.ones_like(theta)
    for k in range(2, 9):
        r_theta += (
            amp_scale
            * rng.uniform(0.3, 1.0)
            / (k**0.5)
            * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        )
    if not malignant:
        stretch = rng.uniform(0.8, 1.0)  # slightly oval but symmetric
        r_theta *= 1.0 / np.sqrt(np.cos(theta) ** 2 + (np.sin(theta) / stretch) ** 2) * stretch
    edge = 0.012 if malignant else 0.025
    mask = np.clip((radius * r_theta - dist) / edge + 0.5, 0.0, 1.0)

    if malignant:
        palette = _MALIGNANT_COLOURS if colours is None else np.asarray(colours)
        colours = palette[
            rng.choice(len(palette), rng.integers(2, min(5, len(palette) + 1)), replace=False)
        ]
        field = _smooth_noise(rng, size, cells=rng.integers(3, 6))
        bins = np.quantile(field, np.linspace(0, 1, len(colours) + 1)[1:-1])
        lesion = colours[np.digitize(field, bins)].astype(np.float32)
    else:
        browns = _BROWN if colours is None else np.asarray(colours)
        base = browns[rng.integers(len(browns))] + rng.normal(0, 6, 3)
        shade = 1.0 + 0.08 * (dist / max(radius, 1e-3))  # gently lighter towards the rim
        lesion = base[None, None, :] * np.clip(shade, 1.0, 1.1)[..., None]
    img = img * (1 - mask[..., None]) + lesion * mask[..., None]

    img += rng.normal(0, rng.uniform(2, 7), img.shape)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    _draw_hair(out, rng, count=int(rng.integers(0, 6)))
    return out.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.0))))


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A smooth random field: coarse noise upsampled bicubically."""
    coarse = rng.random((int(cells), int(cells))).astype(np.float32)
    img = Image.fromarray(coarse, mode="F").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img)


def _draw_hair(img: Image.Image, rng: np.random.Generator, count: int) -> None:
    draw = ImageDraw.Draw(img)
    size = img.width
    for _ in range(count):
        x, y = rng.uniform(0, size, 2)
        angle = rng.uniform(0, 2 * np.pi)
        points = []
        for _ in range(12):
            points.append((float(x), float(y)))
            angle += rng.normal(0, 0.15)
            x += np.cos(angle) * size / 14
            y += np.sin(angle) * size / 14
        shade = int(rng.integers(20, 70))
        draw.line(
            points, fill=(shade, int(shade * 0.8), int(shade * 0.6)), width=int(rng.integers(1, 3))
        )


def generate_synthetic(
    root: str | Path,
    n: int,
    *,
    seed: int = 0,
    size: int = 224,
    test_fraction: float = 0.2,
    malignant_fraction: float = 0.45,
) -> dict[str, int]:
    """Write `n` images in the Kaggle layout: `root/{train,test}/{benign,malignant}/<i>.jpg`.

    Args:
        root: Output folder (created).
        n: Total number of images.
        seed: Same seed → byte-identical images.
        size: Image side in pixels.
        test_fraction: Share of images under `test/`.
        malignant_fraction: Share of malignant images (the real data has ~45%).

    Returns:
        Counts per `split/class`.
    """
    if n < 4:
        raise ValueError("a synthetic dataset needs at least 4 images (2 per class)")
    root = Path(root)
    layout = np.random.default_rng(seed)
    labels = np.zeros(n, dtype=bool)
    labels[: max(2, round(n * malignant_fraction))] = True
    layout.shuffle(labels)
    is_test = np.zeros(n, dtype=bool)
    for value in (False, True):  # stratified: each class split by the same fraction
        idx = np.flatnonzero(labels == value)
        is_test[idx[: max(1, round(len(idx) * test_fraction))]] = True
    counts: dict[str, int] = {}
    for i in range(n):
        split = "test" if is_test[i] else "train"
        label = CLASSES[int(labels[i])]
        folder = root / split / label
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, i])
        make_lesion(bool(labels[i]), rng, size).save(folder / f"{i}.jpg", quality=92)
        key = f"{split}/{label}"
        counts[key] = counts.get(key, 0) + 1
    return counts
