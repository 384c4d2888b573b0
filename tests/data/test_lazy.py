"""`Mapped`: the one lazy column the fetch stages hand on instead of a list per image."""

import pytest

from skincls.data.lazy import Mapped


def test_mapped_makes_each_item_when_asked_and_indexes_as_a_list_does():
    made = []
    seq = Mapped(4, lambda i: made.append(i) or f"item{i}")
    assert made == []  # nothing made up front
    assert seq[-1] == "item3" and seq[1:3] == ["item1", "item2"] and seq[::-2] == ["item3", "item1"]
    assert list(seq) == ["item0", "item1", "item2", "item3"]  # iteration stops at the end
    with pytest.raises(IndexError):
        seq[4]
    with pytest.raises(IndexError):
        seq[-5]
