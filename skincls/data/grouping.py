"""Grouping: images that must stay in one split (same lesion, same patient, duplicates), joined.

A lesion photographed again (other zoom, angle, day) is no perceptual-hash duplicate, but the
datasets' metadata says so; a patient's lesions share skin, camera and day. Every image gets one
group: the connected component of the graph that links an image to its lesion id, its patient id
and its duplicate cluster (scipy's `connected_components`). Splits then move whole groups
(`group_folds`: scikit-learn's `StratifiedGroupKFold` counted per group; `GroupShuffleSplit`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import GroupShuffleSplit

from .lazy import Mapped

__all__ = [
    "Grouping",
    "build_grouping",
    "carve_groups",
    "group_folds",
    "group_images",
    "groups_across_splits",
]

# Which key names a group, when a group holds several: a patient before a lesion before others.
_KIND_ORDER = {"patient": 0, "lesion": 1}
_MAX_FOLDS = 10
_MAX_FINE_FOLDS = 100  # for fractions below 10 folds' reach
_LARGEST = 10
_CHUNK = 1 << 16  # items counted at a time (`group_folds`)
_SORTED_AT_ONCE = 1 << 14  # items sorted at a time (`_repeated`: ~40 bytes each meanwhile)


@dataclass
class Grouping:
    """One group per image, as arrays (no object per image).

    Attributes:
        ids: Group number per image (0..G-1, numbered by first image).
        key_sets: The distinct sets of grouping keys images brought (patient, lesion, other
            columns), each sorted.
        key_set: Per image, its position in `key_sets`.
        clusters: Per image, its duplicate cluster.
        best: Per group, the position in `ranked` of the key naming it, or -1 (none: its first
            image's duplicate cluster names it).
        ranked: The keys that name a group, best first (`_KIND_ORDER`, then by name).
        first: Per group, its first image.
    """

    ids: np.ndarray
    key_sets: list[list[str]]
    key_set: np.ndarray
    clusters: np.ndarray
    best: np.ndarray
    ranked: list[str]
    first: np.ndarray

    def __len__(self) -> int:
        return len(self.first)

    def group_name(self, g: int) -> str:
        """Group `g`'s name: its patient, else its lesion, else another key, else its cluster."""
        b = int(self.best[g])
        return self.ranked[b] if b >= 0 else f"cluster:{int(self.clusters[self.first[g]])}"

    @property
    def names(self) -> Sequence[str]:
        """Group name per image: its patient (`patient:IP_123`), else its lesion
        (`lesion:HAM_0000118`), else another key, else its duplicate cluster (`cluster:17`)."""
        ids = self.ids
        return Mapped(len(ids), lambda i: self.group_name(int(ids[i])))

    def summary(
        self, paths: Sequence[str], labels: Sequence[str], splits: Sequence[str] | None = None
    ) -> dict:
        """Groups, images per group, the largest groups and what joined them (for `dataset.json`)."""
        size = np.bincount(self.ids, minlength=len(self))
        sizes = Counter(size.tolist())
        kinds = Counter(self.group_name(g).split(":", 1)[0] for g in range(len(self)))
        largest = np.lexsort((self.first, -size))[:_LARGEST]
        out = {
            "n_groups": len(self),
            "n_images": len(self.ids),
            "groups_by_kind": dict(sorted(kinds.items())),
            "images_per_group": {str(k): sizes[k] for k in sorted(sizes)},
            "groups_with_several_images": int((size > 1).sum()),
            "groups_with_several_lesions": self._several_lesions(),
            # Copies of one image filed under different lesion/patient ids: the ids are joined.
            "duplicates_joining_ids": self._joining_ids(),
            "largest": [
                {
                    "group": self.group_name(g),
                    "images": int(size[g]),
                    "labels": dict(
                        sorted(Counter(labels[i] for i in self._members(g).tolist()).items())
                    ),
                    "example": paths[self.first[g]],
                    **({"split": splits[self.first[g]]} if splits is not None else {}),
                }
                for g in largest.tolist()
            ],
        }
        if splits is not None:
            out["groups_across_splits"] = groups_across_splits(self.ids, splits)
        return out

    def _members(self, g: int) -> np.ndarray:
        """Group `g`'s images, in image order."""
        return np.flatnonzero(self.ids == g)

    def _several_lesions(self) -> int:
        """Groups whose images bring two or more lesion ids."""
        lesions = [[x for x in ks if x.startswith("lesion:")] for ks in self.key_sets]
        some = np.flatnonzero(np.array([bool(x) for x in lesions], bool)[self.key_set])
        # Only the images that bring a lesion id: a (group, key set) pair each, once.
        pairs = np.unique(self.ids[some].astype(np.int64) * len(lesions) + self.key_set[some])
        g, k = np.divmod(pairs, len(lesions))
        seen = {(int(a), x) for a, b in zip(g.tolist(), k.tolist()) for x in lesions[b]}
        return sum(n > 1 for n in Counter(a for a, _ in seen).values())

    def _joining_ids(self) -> int:
        """Duplicate clusters whose images bring two or more different (non-empty) key sets."""
        by_cluster: dict[int, set] = {}  # clusters of several images (only they can join ids)
        for i in _in_several(self.clusters):
            by_cluster.setdefault(int(self.clusters[i]), set()).add(int(self.key_set[i]))
        empty = {k for k, ks in enumerate(self.key_sets) if not ks}
        return sum(1 for ks in by_cluster.values() if len(ks - empty) > 1)


def build_grouping(keys: Sequence[Iterable[str]], clusters: Sequence[int]) -> Grouping:
    """Join images that share a key (`patient:…`, `lesion:…`, …) or a duplicate cluster.

    Args:
        keys: Per image, its grouping keys (may be empty).
        clusters: Per image, its duplicate-cluster id (`Duplicates.cluster`).
    """
    shared: dict[tuple[str, ...], int] = {}
    codes = np.fromiter((shared.setdefault(tuple(k), len(shared)) for k in keys), np.int64)
    return group_images(list(shared), codes, clusters)


def group_images(
    key_sets: Sequence[Iterable[str]], key_set: np.ndarray, clusters: Sequence[int]
) -> Grouping:
    """`build_grouping` of images given as codes: image i brings the keys `key_sets[key_set[i]]`.

    Components of key sets, keys and duplicate clusters (`_components`): no Python object and no
    graph edge per image.
    """
    canon: dict[tuple[str, ...], int] = {}  # equal sets, however ordered, as one
    same = [canon.setdefault(tuple(sorted(set(k))), len(canon)) for k in key_sets]
    key_set = np.asarray(key_set).reshape(-1)
    if same != list(range(len(same))):  # else the codes as they are (a uint32 column: no copy)
        key_set = np.array(same, np.int32)[key_set] if len(key_set) else np.zeros(0, np.int32)
    sets = [list(k) for k in canon]
    clusters = np.asarray(clusters).reshape(-1)
    if clusters.dtype.kind not in "iu":
        clusters = clusters.astype(np.int64)
    ids, first = _components(sets, key_set, _compact(clusters)[0])
    # Each key set's best key, then each group's best over its images' key sets.
    ranked = sorted({min(ks, key=_key_rank) for ks in sets if ks}, key=_key_rank)
    place = {k: r for r, k in enumerate(ranked)}
    set_best = [place[min(ks, key=_key_rank)] if ks else len(ranked) for ks in sets]
    set_best = np.array(set_best, np.int32)
    best = np.full(len(first), len(ranked), np.int64)
    if len(ids):
        np.minimum.at(best, ids, set_best[key_set])
    best[best == len(ranked)] = -1
    return Grouping(ids, sets, key_set, clusters, best, ranked, first)


def _components(
    sets: list[list[str]], key_set: np.ndarray, clusters: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each image's group (0..G-1, numbered by first image, int32) and each group's first image.

    A group is a connected component of images joined by a shared key or duplicate cluster. The
    graph (scipy's `connected_components`) holds key sets, keys and the clusters of two or more
    images, not the images: an image joins its key set to its cluster. An image with no key in a
    cluster of its own is a group alone. Per image: a few int32 codes, never an edge."""
    n, s = len(key_set), len(sets)
    if not n:
        return np.zeros(0, np.int32), np.zeros(0, np.int64)
    node: dict[str, int] = {}  # keys, numbered after the key sets
    used = np.zeros(s, bool)
    used[key_set] = True  # a set no image brought joins nothing
    pairs = [(a, node.setdefault(k, len(node))) for a, ks in enumerate(sets) if used[a] for k in ks]
    set_of, key_of = np.array(pairs, dtype=np.int64).reshape(-1, 2).T
    several = _repeated(clusters)  # clusters of two or more images join
    shared = np.flatnonzero(several)  # their nodes, after the keys: by position here
    keyed = np.array([bool(k) for k in sets], bool)  # per key set: an empty one joins nothing
    joined = np.concatenate(  # the images that join a key set to a cluster
        [
            np.flatnonzero(
                several[clusters[start : start + _CHUNK]] & keyed[key_set[start : start + _CHUNK]]
            )
            + start
            for start in range(0, n, _CHUNK)
        ]
    )
    offset = s + len(node)
    a = np.concatenate([set_of, key_set[joined].astype(np.int64)])
    b = np.concatenate([s + key_of, offset + np.searchsorted(shared, clusters[joined])])
    size = offset + len(shared)
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(size, size))
    label = connected_components(graph, directed=False)[1].astype(np.int32)
    del a, b, graph, joined, set_of, key_of
    # Per image: its key set's component, else its cluster's, else -1 (a group alone).
    raw = np.full(n, -1, np.int32)
    _fill_components(raw, label, key_set, keyed, clusters, several, shared, offset)
    del shared
    # Number components by first image: each one's first image, then a running count of firsts.
    first_of = np.full(len(label), n, np.int64)
    for start in range(0, n, _CHUNK):
        part = raw[start : start + _CHUNK]
        on = part >= 0
        np.minimum.at(first_of, part[on], np.flatnonzero(on) + start)
    is_first = raw < 0
    is_first[first_of[first_of < n]] = True
    number = np.cumsum(is_first, dtype=np.int32)
    number -= 1  # in place: no second copy
    first = np.flatnonzero(is_first)
    del is_first
    for start in range(0, n, _CHUNK):
        part = raw[start : start + _CHUNK]
        on = part >= 0
        part[on] = number[first_of[part[on]]]
        part[~on] = number[start : start + _CHUNK][~on]
    return raw, first


def _fill_components(raw, label, key_set, keyed, clusters, several, shared, offset) -> None:
    """`raw[i]`: image i's key set's component where it has keys, else its cluster's where the
    cluster has two or more images (`shared`, sorted; else left -1); `_CHUNK` images at a time."""
    for start in range(0, len(raw), _CHUNK):
        part = slice(start, start + _CHUNK)
        ks, cl = key_set[part], clusters[part]
        has_key, in_shared = keyed[ks], several[cl]
        out = raw[part]
        out[has_key] = label[ks[has_key]]
        alone = ~has_key & in_shared
        out[alone] = label[offset + np.searchsorted(shared, cl[alone])]


def _repeated(codes: np.ndarray) -> np.ndarray:
    """Per code 0..K-1, whether two or more items have it: `_SORTED_AT_ONCE` items at a time,
    2 bytes a code (not `np.bincount`'s int64 count per code)."""
    k = int(codes.max()) + 1 if len(codes) else 0
    seen, several = np.zeros(k, bool), np.zeros(k, bool)
    for start in range(0, len(codes), _SORTED_AT_ONCE):
        values, counts = np.unique(codes[start : start + _SORTED_AT_ONCE], return_counts=True)
        several[values[(counts > 1) | seen[values]]] = True
        seen[values] = True
    return several


def _key_rank(key: str) -> tuple[int, str]:
    return _KIND_ORDER.get(key.split(":", 1)[0], 2), key


def _in_several(values: Sequence[int]) -> list[int]:
    """Indices of the items whose value another item also has."""
    if not len(values):
        return []
    codes = _compact(np.asarray(values).ravel())[0]
    return np.flatnonzero(_repeated(codes)[codes]).tolist()


def groups_across_splits(groups: Sequence, splits: Sequence[str]) -> int:
    """How many groups have images in more than one split (0 for a leak-free split).

    Group numbers 0..N (`Grouping.ids`) and split names as codes (`table.Coded`) are read as
    they are: a byte or two an item (per group its lowest and highest split), no sort."""
    if not len(groups):
        return 0
    g, k = _compact(np.asarray(groups).ravel())
    s = _codes(splits)
    low, high = np.full(k, s.max(), s.dtype), np.full(k, s.min(), s.dtype)
    np.minimum.at(low, g, s)
    np.maximum.at(high, g, s)
    return int((low < high).sum())


def _codes(values: Sequence) -> np.ndarray:
    """Items as codes that are equal where the items are: a `Coded`'s own codes (through the
    positions of its distinct values), else positions among the distinct items."""
    codes, distinct = getattr(values, "codes", None), getattr(values, "values", None)
    if isinstance(codes, np.ndarray) and isinstance(distinct, Sequence):
        same = np.unique(np.asarray(list(distinct)), return_inverse=True)[1].ravel()
        return same.astype(np.min_scalar_type(max(len(same), 1)))[codes]
    return np.unique(np.asarray(values), return_inverse=True)[1].ravel()


def _as_folds(fraction: float) -> tuple[int, int]:
    """`fraction` as m of k folds: the closest with k ≤ 10 (0.2 = 1 of 5), or, where that is more
    than a quarter off (below 0.05 it would be 0, and so 1 of 2), the closest with k ≤ 100
    (0.02 = 1 of 50)."""
    frac = Fraction(fraction).limit_denominator(_MAX_FOLDS)
    if frac.numerator == 0 or abs(frac - Fraction(fraction)) > Fraction(fraction) / 4:
        frac = Fraction(fraction).limit_denominator(_MAX_FINE_FOLDS)
    return max(frac.numerator, 1), max(frac.denominator, 2)


def carve_groups(
    labels: Sequence[str], groups: Sequence[int], fraction: float, seed: int
) -> np.ndarray:
    """Which items to hold out: about `fraction` of them, whole groups at a time, stratified by label.

    The fraction is taken as m of k folds of `group_folds` (k ≤ 10, e.g. 0.2 = 1 of 5,
    0.3 = 3 of 10; a fraction that ten folds cannot come near, up to 100: 0.02 = 1 of 50). With
    fewer groups (or items of the largest class) than folds, fewer folds are used, so the
    fraction is coarser; below two, `GroupShuffleSplit` draws the groups.

    Returns:
        A boolean mask over the items.
    """
    n = len(labels)
    g, n_groups = _compact(groups)
    if n == 0 or fraction <= 0 or n_groups < 2:
        return np.zeros(n, dtype=bool)
    m, k = _as_folds(fraction)
    y, per_class = _compact(labels)
    # Small data: fewer folds (a coarser fraction) rather than an unstratified draw.
    k_small = min(k, n_groups, int(np.bincount(y).max()))
    if k_small < k:
        m, k = min(max(1, round(fraction * k_small)), k_small - 1), k_small
    if k >= 2 and m >= 1:
        return _folds_of(y, per_class, g, n_groups, k, seed) < m
    out = np.zeros(n, dtype=bool)
    split = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    _, held = next(split.split(np.empty((n, 0)), y, g))  # scikit-learn reads only X's length
    out[held] = True
    return out


def group_folds(labels: Sequence, groups: Sequence, k: int, seed: int) -> np.ndarray:
    """Fold (0..k-1) per item: whole groups per fold, each fold's class mix as even as groups allow.

    scikit-learn's `StratifiedGroupKFold(k, shuffle=True, random_state=seed)` as of 1.8 (the same
    folds), computed from per-group class counts: a few bytes an item, where scikit-learn holds
    several int64 arrays and a Python list of indices per item. Before 1.8, scikit-learn's shuffle
    left the counts and their groups out of step (scikit-learn PR 32540), so its folds, for the
    same seed, depended on the installed version and were not stratified; these do not.

    Raises:
        ValueError: fewer groups than folds, or every class has fewer items than folds.
    """
    y, n_classes = _compact(labels)
    g, n_groups = _compact(groups)
    return _folds_of(y, n_classes, g, n_groups, k, seed)


def _compact(values: Sequence) -> tuple[np.ndarray, int]:
    """Items as codes 0..K-1 in their values' sorted order (`np.unique`'s inverse), with K.

    Integers 0..N (group and cluster numbers) are kept as they are where every one is present,
    else numbered through a table of those present (1 byte a value, int32 per item, no sort)."""
    v = np.asarray(values).ravel()
    if not len(v):
        return np.zeros(0, np.int32), 0
    if v.dtype.kind in "iu" and v.min() >= 0 and v.max() <= len(v):
        present = np.zeros(int(v.max()) + 1, bool)
        present[v] = True
        if present.all():  # already 0..K-1: as they are
            return v, len(present)
        return (np.cumsum(present, dtype=np.int32) - 1)[v], int(present.sum())
    codes = np.unique(v, return_inverse=True)[1].ravel()
    return codes, int(codes.max()) + 1


def _folds_of(
    y: np.ndarray, n_classes: int, g: np.ndarray, n_groups: int, k: int, seed: int
) -> np.ndarray:
    """`group_folds` of codes: `y` in 0..n_classes-1, `g` in 0..n_groups-1, each value present."""
    if k > n_groups:
        raise ValueError(f"{k} folds need at least as many groups, not {n_groups}")
    counts = np.zeros(n_groups * n_classes)  # per group and class, as scikit-learn: float64
    for start in range(0, len(y), _CHUNK):
        cell = g[start : start + _CHUNK].astype(np.int64) * n_classes + y[start : start + _CHUNK]
        counts += np.bincount(cell, minlength=len(counts))
    counts = counts.reshape(n_groups, n_classes)
    per_class = counts.sum(axis=0).astype(np.int64)
    if (per_class < k).all():
        raise ValueError(f"{k} folds need a class with at least as many items")
    # As scikit-learn: groups shuffled, then the most lopsided first (stable: shuffled order
    # among equals), each into the fold whose classes stay most even (then the smallest fold).
    perm = np.arange(n_groups)
    np.random.RandomState(seed).shuffle(perm)
    counts = counts[perm]
    per_fold = np.zeros((k, n_classes))
    fold_of_row = np.zeros(n_groups, np.min_scalar_type(k))
    trial = np.eye(k)[:, :, None]  # fold i's candidate: the group added to fold i only
    for row in np.argsort(-np.std(counts, axis=1), kind="stable").tolist():
        add = counts[row]
        spread = np.std((per_fold + trial * add) / per_class, axis=1).mean(axis=1)
        best = _best_fold(spread.tolist(), per_fold.sum(axis=1).tolist())
        per_fold[best] += add
        fold_of_row[row] = best
    fold = np.empty_like(fold_of_row)
    fold[perm] = fold_of_row
    return fold[g]


def _best_fold(spread: list[float], size: list[float]) -> int:
    """The fold with the least class spread; among close ones (`np.isclose`), the smallest;
    in scikit-learn's order of comparison."""
    best, low, low_size = 0, np.inf, np.inf
    for i, (s, n) in enumerate(zip(spread, size)):
        close = abs(s - low) <= 1e-8 + 1e-5 * abs(low) if low != np.inf else False
        if s < low or (close and n < low_size):
            best, low, low_size = i, s, n
    return best
