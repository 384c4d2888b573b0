"""Fetch: bring a dataset into a data dir (synthetic, a local folder; Kaggle comes later) and index it."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .errors import DataError
from .splits import Manifest, Record, assign_splits, load_manifest, write_manifest
from .synthetic import generate_synthetic

__all__ = ["IMAGE_SUFFIXES", "FetchReport", "fetch"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
DEFAULT_DATASET = "fanconic/skin-cancer-malignant-vs-benign"


@dataclass
class FetchReport:
    """What fetch did: the resulting manifest plus files it skipped and why."""

    manifest: Manifest
    skipped: list[tuple[str, str]] = field(default_factory=list)
    changed: bool = True


def fetch(
    data_dir: str | Path,
    *,
    source_dir: str | Path | None = None,
    synthetic: int | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    dataset: str = DEFAULT_DATASET,
    on_progress: Callable[[int, int], None] | None = None,
) -> FetchReport:
    """Prepare `data_dir` with images under `images/` and a `manifest.csv`.

    Exactly one source: `source_dir` (a folder in `split/class/*.jpg` layout) or `synthetic` (that many
    generated images). Classes are the class folder names in sorted order (benign=0, malignant=1).
    """
    data_dir = Path(data_dir)
    if (source_dir is None) == (synthetic is None):
        if source_dir is None:
            raise DataError(
                f"downloading {dataset} from Kaggle is not available yet; "
                "use --synthetic N or --source-dir DIR"
            )
        raise DataError("give one source: --synthetic N or --source-dir DIR, not both")
    images = data_dir / "images"
    if synthetic is not None:
        if images.exists():
            shutil.rmtree(images)
        generate_synthetic(images, synthetic, seed=seed)
        source = {"kind": "synthetic", "n": synthetic, "seed": seed}
    else:
        src = Path(source_dir)
        if not src.is_dir():
            raise DataError(f"source dir {src} does not exist")
        if images.exists():
            shutil.rmtree(images)
        shutil.copytree(src, images, ignore=shutil.ignore_patterns(".*"))
        source = {"kind": "source_dir", "path": str(src.resolve())}

    files = sorted(
        p for p in images.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    kept: list[tuple[Path, str, str, str]] = []
    skipped: list[tuple[str, str]] = []
    for i, p in enumerate(files):
        rel = p.relative_to(images)
        if len(rel.parts) != 3:
            skipped.append((str(rel), "not in split/class/file layout"))
            continue
        reason = _verify(p)
        if reason:
            skipped.append((str(rel), reason))
        else:
            kept.append((p, rel.parts[0], rel.parts[1], hashlib.sha256(p.read_bytes()).hexdigest()))
        if on_progress:
            on_progress(i + 1, len(files))
    if not kept:
        raise DataError(f"no readable images found under {images} (expected split/class/*.jpg)")
    classes = sorted({label for _, _, label, _ in kept})
    splits = assign_splits(
        [k[2] for k in kept],
        [k[1] for k in kept],
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
    )
    records = [
        Record(str(p.relative_to(data_dir)), label, split, digest, i)
        for i, ((p, _, label, digest), split) in enumerate(zip(kept, splits))
    ]
    info = {"source": source, "seed": seed, "val_fraction": val_fraction, "skipped": skipped}
    write_manifest(data_dir, records, classes, info)
    return FetchReport(load_manifest(data_dir), skipped)


def _verify(path: Path) -> str | None:
    """Decode the whole image; return why it is unusable, or None."""
    if path.stat().st_size == 0:
        return "empty file"
    try:
        with Image.open(path) as im:
            im.load()
    except Exception as exc:  # Pillow raises many types for bad files
        return f"cannot decode: {type(exc).__name__}: {exc}"
    return None
