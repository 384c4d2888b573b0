"""The memory a call allocates at its peak (`tracemalloc`): for tests that bound bytes an image."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def traced_peak(f: Callable[[], T]) -> tuple[T, int]:
    """`f()`'s result, and the most bytes Python and numpy held while it ran over those held
    when it started."""
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        out = f()
        return out, tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
