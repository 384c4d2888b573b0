"""Grouping: lesion, patient and duplicate groups joined; grouped, stratified splits."""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest

from skincls.data import grouping
from skincls.data.grouping import (
    build_grouping,
    carve_groups,
    group_folds,
    group_images,
    groups_across_splits,
)
from skincls.data.splits import assign_splits
from tests.data.traced import traced_peak


def test_lesion_patient_and_duplicates_join_transitively():
    keys = [
        ["lesion:L1"],
        ["lesion:L1", "patient:P"],
        ["lesion:L2", "patient:P"],
        [],  # a copy of image 2 with no metadata (duplicate cluster 2)
        ["lesion:L3"],
        [],
    ]
    clusters = [0, 1, 2, 2, 3, 4]
    g = build_grouping(keys, clusters)
    assert g.ids.tolist() == [0, 0, 0, 0, 1, 2]
    assert g.names[:4] == ["patient:P"] * 4  # a patient names the group before a lesion
    assert g.names[4:] == ["lesion:L3", "cluster:4"]
    summary = g.summary([f"i{k}" for k in range(6)], ["a"] * 6, ["train"] * 4 + ["test"] * 2)
    assert summary["n_groups"] == 3 and summary["images_per_group"] == {"1": 2, "4": 1}
    assert summary["groups_with_several_lesions"] == 1
    assert summary["largest"][0] == {
        "group": "patient:P",
        "images": 4,
        "labels": {"a": 4},
        "example": "i0",
        "split": "train",
    }
    assert summary["groups_across_splits"] == 0


def _union_find_groups(keys, clusters):
    """Reference: images joined by a shared key or cluster, numbered by first image."""
    parent = list(range(len(keys)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    seen: dict = {}
    for i, (ks, c) in enumerate(zip(keys, clusters)):
        for item in [*ks, ("cluster", c)]:
            parent[root(i)] = root(seen.setdefault(item, i))
    number: dict = {}
    return [number.setdefault(root(i), len(number)) for i in range(len(keys))]


@pytest.mark.parametrize("seed", range(6))
def test_groups_equal_a_union_find_over_images(seed):
    # Components of key sets, keys and shared clusters, not of images: the same groups. Key sets
    # repeated in other orders, empty ones, sets no image brings, copies with and without keys.
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 600))
    sets = [
        tuple(
            rng.permutation(
                [f"patient:p{rng.integers(20)}"] * (rng.random() < 0.6)
                + [f"lesion:l{rng.integers(60)}"] * (rng.random() < 0.5)
            ).tolist()
        )
        for _ in range(int(rng.integers(5, 60)))
    ] + [()]
    key_set = rng.integers(0, len(sets) - 3, n).astype(np.uint32)  # the last sets: unused
    clusters = np.arange(n)
    for _ in range(n // 4):
        i, j = sorted(rng.integers(0, n, 2).tolist())
        clusters[j] = clusters[i]
    clusters = np.unique(clusters, return_inverse=True)[1]
    found = group_images(sets, key_set, clusters)
    expected = _union_find_groups([sets[k] for k in key_set], clusters.tolist())
    assert found.ids.tolist() == expected
    assert found.first.tolist() == [expected.index(g) for g in range(max(expected) + 1)]


def test_groups_hold_no_graph_edge_per_image(monkeypatch):
    # A graph of images, key sets, keys and clusters held 107 bytes an image here at its peak
    # (scipy's CSR of it, float64, and its transpose; ~145 in a fetch, ~58 MB at ISIC 2024's
    # size). Now the graph is of key sets, keys and shared clusters; per image a few codes.
    monkeypatch.setattr(grouping, "_CHUNK", 1 << 12)  # a small fixed share at a time
    n, rng = 200_000, np.random.default_rng(0)
    key_sets = [(f"patient:p{p}", f"lesion:l{p}_{k}") for p in range(1000) for k in range(5)]
    clusters = np.arange(n)
    clusters[1::500] = clusters[0:-1:500]  # some duplicate pairs
    clusters = np.unique(clusters, return_inverse=True)[1]
    key_set = rng.integers(0, len(key_sets), n).astype(np.uint32)
    key_set[1::500] = key_set[0:-1:500]  # a copy is of the same lesion
    found, peak = traced_peak(lambda: group_images(key_sets, key_set, clusters))
    assert len(found) == 1000  # one group per patient
    assert peak / n < 32, f"{peak / n:.1f} bytes an image"  # 107 before; ~10 the key sets


def _lesion_data(n_groups=900, seed=0):
    """Imbalanced labels (a lesion has one diagnosis) in groups of 1-6 photos."""
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for g in range(n_groups):
        label = rng.choice(["nv", "mel", "bkl", "df"], p=[0.7, 0.15, 0.12, 0.03])
        for _ in range(int(rng.integers(1, 7))):
            labels.append(str(label))
            groups.append(g)
    return labels, groups


@pytest.mark.parametrize("fraction", [0.2, 0.3, 0.1])
def test_carve_groups_keeps_groups_whole_and_classes_balanced(fraction):
    labels, groups = _lesion_data()
    held = carve_groups(labels, groups, fraction, seed=3)
    assert groups_across_splits(groups, np.where(held, "test", "train")) == 0
    assert abs(held.mean() - fraction) < 0.02
    total, taken = Counter(labels), Counter(np.asarray(labels)[held].tolist())
    for label, n in total.items():
        assert abs(taken[label] / n - fraction) < 0.05, (label, taken[label], n)
    assert (held == carve_groups(labels, groups, fraction, seed=3)).all()
    assert (held != carve_groups(labels, groups, fraction, seed=4)).any()


def test_carve_groups_on_little_data_still_takes_each_class():
    labels = ["a"] * 6 + ["b"] * 6
    held = carve_groups(labels, list(range(12)), 0.1, seed=0)
    assert Counter(np.asarray(labels)[held].tolist()) == {"a": 1, "b": 1}
    assert not carve_groups(["a", "b"], [0, 0], 0.5, seed=0).any()  # one group: nothing to carve


def test_grouped_split_shares_no_lesion_where_an_image_split_shares_many():
    labels, groups = _lesion_data(300)
    plain = assign_splits(labels, [None] * len(labels), seed=0)
    grouped = assign_splits(labels, [None] * len(labels), seed=0, groups=groups)
    assert groups_across_splits(groups, plain) > 50
    assert groups_across_splits(groups, grouped) == 0
    counts = Counter(grouped)
    assert abs(counts["test"] / len(labels) - 0.2) < 0.02
    assert abs(counts["val"] / (len(labels) - counts["test"]) - 0.1) < 0.02


@pytest.mark.parametrize(("fraction", "held"), [(0.02, 20), (0.04, 40), (0.06, 60), (0.2, 200)])
def test_carve_groups_holds_out_small_fractions_not_half(fraction, held):
    # 0.02 was 0 of 10 folds, taken as 1 of 2: half the images held out, silently.
    labels = ["a", "b"] * 500
    got = carve_groups(labels, list(range(1000)), fraction, seed=0)
    assert got.sum() == pytest.approx(held, abs=2)


def _sklearn_folds(labels, groups, k, seed):
    from sklearn.model_selection import StratifiedGroupKFold

    fold = np.full(len(labels), -1)
    splitter = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a class with fewer items than folds
        for f, (_, held) in enumerate(splitter.split(np.empty((len(labels), 0)), labels, groups)):
            fold[held] = f
    return fold


@pytest.mark.parametrize("seed", range(12))
def test_group_folds_are_scikit_learns_stratified_group_folds(seed):
    # Counted per group, not per item; scikit-learn 1.8's folds (its shuffle fixed in PR 32540),
    # whatever scikit-learn is installed. Groups as strings or as numbers with gaps, rare classes,
    # one label per group or mixed, 2 to 50 folds.
    import sklearn

    if tuple(int(x) for x in sklearn.__version__.split(".")[:2]) < (1, 8):
        pytest.skip("scikit-learn before 1.8 shuffles counts and groups out of step")
    rng = np.random.default_rng(seed)
    n, n_classes = int(rng.integers(50, 2000)), int(rng.integers(2, 8))
    groups = rng.integers(0, int(rng.integers(60, n)), n) * 3
    p = rng.dirichlet(np.full(n_classes, 0.5))
    by_group = rng.choice(n_classes, groups.max() + 1, p=p)
    labels = rng.choice(n_classes, n, p=p) if seed % 2 else by_group[groups]
    if seed % 3 == 0:
        groups = np.array([f"site{g}" for g in groups])
    k = [2, 3, 5, 10, 50][seed % 5]
    got = group_folds(labels, groups, k, seed)
    assert got.tolist() == _sklearn_folds(labels, groups, k, seed).tolist()


def test_group_folds_refuse_more_folds_than_groups():
    with pytest.raises(ValueError, match="3 folds need at least as many groups, not 2"):
        group_folds([0, 1, 0, 1], [7, 7, 9, 9], 3, seed=0)


def test_carve_groups_counts_groups_not_items():
    # scikit-learn's StratifiedGroupKFold holds ~50 bytes an item (int64 inverses, a Python
    # list of each fold's indices): ~20 MB at ISIC 2024's size, at curation's peak. Per group:
    # a few bytes an item (the item's group and class as codes, its fold).
    n, rng = 200_000, np.random.default_rng(0)
    groups = rng.integers(0, 1_000, n).astype(np.int32)
    labels = (rng.random(n) < 0.02).astype(np.int32)
    held, peak = traced_peak(lambda: carve_groups(labels, groups, 0.2, seed=0))
    assert peak / n < 20, peak / n
    assert abs(held.mean() - 0.2) < 0.02


def test_summary_and_splits_read_group_numbers_and_split_codes_as_they_are():
    # Group numbers 0..G-1 and split names as codes (`Coded`) need no sort, no int64 inverse
    # (~100 bytes an image before, at ISIC 2024's size at curation's peak), and the same counts.
    from skincls.data.fetch.table import Coded
    from skincls.data.splits import split_codes

    n, rng = 50_000, np.random.default_rng(0)
    key_sets = [(f"patient:p{p}", f"lesion:l{p % 7}") for p in range(500)] + [()]
    clusters = np.arange(n)
    clusters[1] = 0  # one duplicate pair
    grouping = group_images(key_sets, rng.integers(0, 501, n).astype(np.uint32), clusters)
    codes = rng.integers(0, 3, n).astype(np.int8)
    splits, names = (
        Coded(codes, ("train", "val", "test")),
        [("train", "val", "test")[c] for c in codes],
    )
    labels = [f"c{i % 3}" for i in range(n)]
    summary, peak = traced_peak(lambda: grouping.summary(labels, labels, splits))
    assert summary == grouping.summary(labels, labels, names)
    assert summary["groups_across_splits"] == groups_across_splits(grouping.ids.tolist(), names)
    assert peak / n < 40, f"{peak / n:.0f} bytes an image"  # 102 before
    y = rng.integers(0, 3, n).astype(np.int32)
    out, peak = traced_peak(lambda: split_codes(y, np.zeros(n, np.int8), groups=grouping.ids))
    far = grouping.ids.astype(np.int64) + 10**9  # not 0..N: read through a sort, as before
    assert (out == split_codes(y, np.zeros(n, np.int8), groups=far)).all()
    assert peak / n < 85, f"{peak / n:.0f} bytes an image"  # 97 before
