"""A column read when indexed: item i made by a function, never a list of all items held.

Fetch works on ISIC 2024's 401,059 images as arrays; where a stage hands on a sequence of paths,
names or candidates, it hands on a `Mapped` of the arrays instead of a list per image.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = ["Mapped"]

T = TypeVar("T")


class Mapped(Sequence[T]):
    """`n` items, item i made by `item(i)` each time it is asked for (slices: a list)."""

    def __init__(self, n: int, item: Callable[[int], T]) -> None:
        self._n, self._item = n, item

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._item(j) for j in range(*i.indices(self._n))]
        i = operator.index(i)
        if not -self._n <= i < self._n:
            raise IndexError(i)
        return self._item(i % self._n)
