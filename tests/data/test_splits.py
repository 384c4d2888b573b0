"""Splits: stratified, seeded, and duplicate groups never straddle two splits."""

from __future__ import annotations

from collections import Counter

import pytest

from skincls.data.splits import assign_splits, unify_groups
from skincls.errors import DataError


def test_unify_groups_pulls_training_copies_into_test():
    src = ["train", "test", "train", "train", "val", None]
    groups = [0, 0, 1, 2, 2, 1]
    assert unify_groups(src, groups) == ["test", "test", "train", "val", "val", "train"]


def test_groups_never_straddle_and_val_is_stratified():
    n = 200
    labels = ["benign" if i % 3 else "malignant" for i in range(n)]
    src = ["test" if i % 5 == 0 else "train" for i in range(n)]
    groups = [i // 4 for i in range(n)]  # groups of 4, most holding a test item
    groups[-10:] = range(1000, 1010)  # and some singletons
    out = assign_splits(labels, src, val_fraction=0.2, seed=1, groups=groups)
    by_group: dict[int, set[str]] = {}
    for g, s in zip(groups, out):
        by_group.setdefault(g, set()).add(s)
    assert all(len(s) == 1 for s in by_group.values())
    assert all(out[i] == "test" for i in range(n) if src[i] == "test")


def test_no_source_test_split_gets_stratified_train_val_test():
    labels = ["a"] * 100 + ["b"] * 50
    out = assign_splits(labels, [None] * 150, val_fraction=0.1, test_fraction=0.2, seed=0)
    c = Counter(zip(out, labels))
    assert (c[("test", "a")], c[("test", "b")]) == (20, 10)
    assert (c[("val", "a")], c[("val", "b")]) == (8, 4)  # 10% of what is left in train
    assert out == assign_splits(labels, [None] * 150, val_fraction=0.1, seed=0)
    assert out != assign_splits(labels, [None] * 150, val_fraction=0.1, seed=1)


def test_bad_fraction_is_a_data_error():
    with pytest.raises(DataError, match="fractions"):
        assign_splits(["a"], ["train"], val_fraction=1.0)
