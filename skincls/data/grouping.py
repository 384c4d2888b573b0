"""Grouping: images that must stay in one split (same lesion, same patient, duplicates), joined.

A lesion photographed again (other zoom, angle, day) is no perceptual-hash duplicate, but the
datasets' metadata says so; a patient's lesions share skin, camera and day. Every image gets one
group: the connected component of the graph that links an image to its lesion id, its patient id
and its duplicate cluster (scipy's `connected_components`). Splits then move whole groups
(scikit-learn's `StratifiedGroupKFold`, `GroupShuffleSplit`).
"""

from __future__ import annotations

import warnings
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

__all__ = ["Grouping", "build_grouping", "carve_groups", "groups_across_splits"]

# Which key names a group, when a group holds several: a patient before a lesion before others.
_KIND_ORDER = {"patient": 0, "lesion": 1}
_MAX_FOLDS = 10
_MAX_FINE_FOLDS = 100  # for fractions below 10 folds' reach
_LARGEST = 10


@dataclass
class Grouping:
    """One group per image.

    Attributes:
        ids: Group number per image (0..G-1, numbered by first image).
        names: Group name per image: its patient (`patient:IP_123`), else its lesion
            (`lesion:HAM_0000118`), else another key, else its duplicate cluster (`cluster:17`).
        keys: The grouping keys each image brought (patient, lesion, other columns).
    """

    ids: list[int]
    names: list[str]
    keys: list[list[str]]
    clusters: list[int]

    def __len__(self) -> int:
        return len(set(self.ids))

    def summary(
        self, paths: Sequence[str], labels: Sequence[str], splits: Sequence[str] | None = None
    ) -> dict:
        """Groups, images per group, the largest groups and what joined them (for `dataset.json`)."""
        members: dict[int, list[int]] = {}
        for i, g in enumerate(self.ids):
            members.setdefault(g, []).append(i)
        sizes = Counter(len(m) for m in members.values())
        kinds = Counter(self.names[m[0]].split(":", 1)[0] for m in members.values())
        lesions = [
            {k for i in m for k in self.keys[i] if k.startswith("lesion:")}
            for m in members.values()
        ]
        by_cluster: dict[int, set] = {}  # clusters of several images (only they can join ids)
        for i in _in_several(self.clusters):
            by_cluster.setdefault(self.clusters[i], set()).add(tuple(self.keys[i]))
        largest = sorted(members.values(), key=lambda m: (-len(m), m[0]))[:_LARGEST]
        out = {
            "n_groups": len(members),
            "n_images": len(self.ids),
            "groups_by_kind": dict(sorted(kinds.items())),
            "images_per_group": {str(k): sizes[k] for k in sorted(sizes)},
            "groups_with_several_images": sum(1 for m in members.values() if len(m) > 1),
            "groups_with_several_lesions": sum(1 for ls in lesions if len(ls) > 1),
            # Copies of one image filed under different lesion/patient ids: the ids are joined.
            "duplicates_joining_ids": sum(1 for ks in by_cluster.values() if len(ks - {()}) > 1),
            "largest": [
                {
                    "group": self.names[m[0]],
                    "images": len(m),
                    "labels": dict(sorted(Counter(labels[i] for i in m).items())),
                    "example": paths[m[0]],
                    **({"split": splits[m[0]]} if splits is not None else {}),
                }
                for m in largest
            ],
        }
        if splits is not None:
            out["groups_across_splits"] = groups_across_splits(self.ids, splits)
        return out


def build_grouping(keys: Sequence[Iterable[str]], clusters: Sequence[int]) -> Grouping:
    """Join images that share a key (`patient:…`, `lesion:…`, …) or a duplicate cluster.

    Args:
        keys: Per image, its grouping keys (may be empty).
        clusters: Per image, its duplicate-cluster id (`Duplicates.cluster`).
    """
    keys = _sorted_keys(keys)
    n = len(keys)
    node: dict[str, int] = {}
    rows, cols = array("q"), array("q")
    for i, ks in enumerate(keys):
        for k in ks:
            rows.append(i)
            cols.append(node.setdefault(k, n + len(node)))
    # Each cluster is a node too, after the keys' (no string or dict entry per cluster).
    cluster_node = np.unique(np.asarray(clusters), return_inverse=True)[1].ravel()
    size = n + len(node) + (int(cluster_node.max()) + 1 if n else 0)
    edges = (
        np.concatenate([np.frombuffer(rows, np.int64), np.arange(n)]),
        np.concatenate([np.frombuffer(cols, np.int64), n + len(node) + cluster_node]),
    )
    graph = coo_matrix((np.ones(len(edges[0]), dtype=np.int8), edges), shape=(size, size))
    _, component = connected_components(graph, directed=False)
    ids: dict[int, int] = {}
    group = [ids.setdefault(int(component[i]), len(ids)) for i in range(n)]
    best: dict[int, tuple] = {}
    for i, ks in enumerate(keys):
        for k in ks:
            kind = k.split(":", 1)[0]
            rank = (_KIND_ORDER.get(kind, 2), k)
            if group[i] not in best or rank < best[group[i]]:
                best[group[i]] = rank
    first_cluster: dict[int, int] = {}
    for i, c in enumerate(clusters):
        first_cluster.setdefault(group[i], int(c))
    names = [best[g][1] if g in best else f"cluster:{first_cluster[g]}" for g in group]
    return Grouping(group, names, keys, [int(c) for c in clusters])


def _in_several(values: Sequence[int]) -> list[int]:
    """Indices of the items whose value another item also has."""
    if not len(values):
        return []
    inverse, counts = np.unique(np.asarray(values), return_inverse=True, return_counts=True)[1:]
    return np.flatnonzero(counts[inverse.ravel()] > 1).tolist()


def _sorted_keys(keys: Sequence[Iterable[str]]) -> list[list[str]]:
    """Each image's keys, sorted and without repeats; images with equal keys share one list."""
    shared: dict[tuple[str, ...], list[str]] = {}
    out = []
    for k in keys:
        k = tuple(k)
        found = shared.get(k)
        if found is None:
            found = shared[k] = sorted(set(k))
        out.append(found)
    return out


def groups_across_splits(groups: Sequence, splits: Sequence[str]) -> int:
    """How many groups have images in more than one split (0 for a leak-free split)."""
    seen: dict = {}
    for g, s in zip(groups, splits):
        seen.setdefault(g, set()).add(s)
    return sum(1 for s in seen.values() if len(s) > 1)


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

    The fraction is taken as m of k folds of `StratifiedGroupKFold` (k ≤ 10, e.g. 0.2 = 1 of 5,
    0.3 = 3 of 10; a fraction that ten folds cannot come near, up to 100: 0.02 = 1 of 50). With fewer groups (or items of the largest class) than folds, fewer folds
    are used, so the fraction is coarser; below two, `GroupShuffleSplit` draws the groups.

    Returns:
        A boolean mask over the items.
    """
    n = len(labels)
    out = np.zeros(n, dtype=bool)
    g = np.asarray(groups)
    n_groups = len(np.unique(g))
    if n == 0 or fraction <= 0 or n_groups < 2:
        return out
    m, k = _as_folds(fraction)
    y = np.unique(np.asarray(labels), return_inverse=True)[1]
    # Small data: fewer folds (a coarser fraction) rather than an unstratified draw.
    k_small = min(k, n_groups, int(np.bincount(y).max()))
    if k_small < k:
        m, k = min(max(1, round(fraction * k_small)), k_small - 1), k_small
    x = np.zeros((n, 1))
    if k >= 2 and m >= 1:
        folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            # "The least populated class has only N members": expected for rare diagnoses.
            warnings.simplefilter("ignore", UserWarning)
            for f, (_, held) in enumerate(folds.split(x, y, g)):
                if f < m:
                    out[held] = True
        return out
    split = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    _, held = next(split.split(x, y, g))
    out[held] = True
    return out
