"""Helpers of the serve tests: optional imports that must not skip in CI, and upload bytes."""

from __future__ import annotations

import importlib
import io
import os

import numpy as np
import pytest
from PIL import Image

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def needs(module: str, why: str):
    """Import `module`; without it, skip locally but fail in CI (CI=true), which must run every test."""
    if IN_CI:
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=why)


def image_bytes(seed: int, size: tuple[int, int] = (48, 40), fmt: str = "PNG") -> bytes:
    """A random-noise image (different per seed, so every image gets its own probabilities)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()
