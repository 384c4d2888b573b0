"""Dedup: exact (SHA-256) and near (perceptual-hash) duplicate images, grouped into clusters.

A lesion photographed twice, or one file copied under two names, must never sit on both sides of a
train/test boundary. Exact copies share a content hash; near copies (re-encoded, resized, flipped or
turned by 90°) share a 64-bit pHash up to a few bits, confirmed by a dHash. A lesion has no canonical
orientation, so each image is hashed in all 8 orientations of the square (the dihedral group) and two
images are compared at their closest orientation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import imagehash
import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .info import DuplicateCluster, DuplicateSummary

__all__ = [
    "DEFAULT_CONFIRM_DISTANCE",
    "DEFAULT_NEAR_DUP_DISTANCE",
    "Duplicates",
    "find_duplicates",
    "match_hashes",
    "near_duplicate_pairs",
    "perceptual_hashes",
    "shared_indices",
    "summarize_duplicates",
]

# Measured on the 2,637-image dev archive: <= 2 bits joins re-encoded copies of one lesion; at 4 bits
# different lesions already collide.
DEFAULT_NEAR_DUP_DISTANCE = 2
# dHash bits that still confirm a pHash match. On the dev archive true pairs differ in <= 5 bits and
# the look-alike different lesions in >= 17.
DEFAULT_CONFIRM_DISTANCE = 10

_T = Image.Transpose
# Identity first: column 0 of `perceptual_hashes` is the image as stored.
_DIHEDRAL = (
    None,
    _T.FLIP_LEFT_RIGHT,
    _T.FLIP_TOP_BOTTOM,
    _T.ROTATE_90,
    _T.ROTATE_180,
    _T.ROTATE_270,
    _T.TRANSPOSE,
    _T.TRANSVERSE,
)
_HASH_SIZE = 8
_HIGHFREQ = 4  # imagehash's default: the DCT runs on a 32×32 thumbnail


def perceptual_hashes(image: Image.Image) -> np.ndarray:
    """64-bit pHash and dHash (imagehash) of `image` in its 8 flips/90° turns.

    Returns:
        uint64 array of shape (2, 8): row 0 pHashes, row 1 dHashes; column 0 is the image as stored.
    """
    side = _HASH_SIZE * _HIGHFREQ
    # Shrink once to a square, then turn the thumbnail: phash resizes to this very size, so each
    # variant hashes as the turned full image would, at 1/8 of the cost.
    thumb = image.convert("L").resize((side, side), Image.Resampling.LANCZOS)
    out = np.empty((2, len(_DIHEDRAL)), dtype=np.uint64)
    for k, op in enumerate(_DIHEDRAL):
        variant = thumb if op is None else thumb.transpose(op)
        p = imagehash.phash(variant, hash_size=_HASH_SIZE, highfreq_factor=_HIGHFREQ)
        d = imagehash.dhash(variant, hash_size=_HASH_SIZE)
        out[0, k] = np.packbits(p.hash.ravel()).view(">u8")[0]
        out[1, k] = np.packbits(d.hash.ravel()).view(">u8")[0]
    return out


# Set bits per byte value, for numpy < 2 (which lacks np.bitwise_count).
_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x)
    return _BYTE_POPCOUNT[x.view(np.uint8)].reshape(*x.shape, 8).sum(axis=-1, dtype=np.uint8)


# Below this many images the all-pairs comparison is as fast as building the index.
_BRUTE_FORCE_BELOW = 2000
# Candidates compared at once by the index (each costs ~80 bytes while it is checked: ~5 MB).
_CANDIDATES_AT_ONCE = 1 << 16
# Query hashes looked up at once by the index (~40 bytes each while they are: ~3 MB).
_QUERIES_AT_ONCE = 1 << 16


def near_duplicate_pairs(
    hashes: np.ndarray,
    max_distance: int = DEFAULT_NEAR_DUP_DISTANCE,
    confirm_distance: int | None = DEFAULT_CONFIRM_DISTANCE,
    *,
    chunk: int | None = None,
) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """Pairs whose pHashes differ in at most `max_distance` bits at their closest orientation.

    A pHash match alone is not enough: small dark lesions centred on plain skin all look alike to a
    64-bit DCT hash. A candidate is confirmed when, at an orientation where the pHashes match, the
    dHashes (gradients, a different view of the image) also differ in at most `confirm_distance`.

    Large sets are searched through a multi-index hash (`_close_hashes`), in time near linear in
    the number of images; small ones by comparing all pairs. Both give the same pairs.

    Args:
        hashes: (N, 2, 8) uint64 from `perceptual_hashes`, one entry per image.
        max_distance: pHash threshold in bits (< 0: no near duplicates at all).
        confirm_distance: dHash threshold in bits; None accepts every pHash candidate.
        chunk: Rows compared at once by the all-pairs search (memory ~ chunk × 8 × N × 9 bytes);
            default keeps it ~40 MB. Given, the all-pairs search is used whatever N.

    Returns:
        `(confirmed, rejected)`: lists of `(i, j, phash_distance)` with i < j, sorted.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = len(hashes)
    if n < 2 or max_distance < 0:
        return [], []
    if chunk is not None or n < _BRUTE_FORCE_BELOW:
        return _all_pairs(hashes, max_distance, confirm_distance, chunk)
    ph, dh = hashes[:, 0, :], hashes[:, 1, :]
    i, k, j, d = _close_hashes(ph, ph[:, 0], max_distance, skip_self=True)
    ok = _confirmed(dh[i, k], dh[j, 0], confirm_distance)
    # Turning i or turning j can differ by a bit: keep the closer, and any confirmation.
    lo, hi, d, ok = _per_pair(np.minimum(i, j), np.maximum(i, j), d, ok, n)
    confirmed = [(a, b, c) for a, b, c, y in zip(lo, hi, d, ok) if y]
    rejected = [(a, b, c) for a, b, c, y in zip(lo, hi, d, ok) if not y]
    return confirmed, rejected


def _all_pairs(hashes, max_distance, confirm_distance, chunk):
    """`near_duplicate_pairs` by comparing every image with every other (quadratic)."""
    n = len(hashes)
    ph, dh = hashes[:, 0, :], hashes[:, 1, :]  # (N, 8) each
    chunk = chunk or max(1, 2**19 // n)
    found: dict[tuple[int, int], tuple[int, bool]] = {}
    for start in range(0, n, chunk):
        # Every orientation of row i against row j as stored: (c, 8, N).
        dist = _popcount(ph[start : start + chunk, :, None] ^ ph[None, :, 0])
        rows, cols = np.nonzero(dist.min(axis=1) <= max_distance)
        for r, j in zip(rows.tolist(), cols.tolist()):
            i = start + r
            if i == j:
                continue
            ks = np.flatnonzero(dist[r, :, j] <= max_distance)
            ok = confirm_distance is None or bool(
                (_popcount(dh[i, ks] ^ dh[j, 0]) <= confirm_distance).any()
            )
            key = (min(i, j), max(i, j))
            d = int(dist[r, :, j].min())
            old_d, old_ok = found.get(key, (d, ok))
            found[key] = (min(d, old_d), ok or old_ok)
    confirmed = sorted((i, j, d) for (i, j), (d, ok) in found.items() if ok)
    rejected = sorted((i, j, d) for (i, j), (d, ok) in found.items() if not ok)
    return confirmed, rejected


def _blocks(max_distance: int) -> list[tuple[int, int]]:
    """`(shift, width)` of `max_distance + 1` disjoint bit blocks covering the 64 bits.

    Two hashes within `max_distance` bits differ in at most that many blocks, so at least one of
    the `max_distance + 1` blocks is equal in both (pigeonhole): candidates share a block exactly.
    """
    m = min(max_distance + 1, 64)
    widths = [64 // m + (b < 64 % m) for b in range(m)]
    shifts = np.cumsum([0, *widths[:-1]]).tolist()
    return list(zip(shifts, widths))


def _block(h: np.ndarray, shift: int, width: int) -> np.ndarray:
    mask = np.uint64((1 << width) - 1)
    return (h >> np.uint64(shift)) & mask


def _close_hashes(
    query: np.ndarray, reference: np.ndarray, max_distance: int, *, skip_self: bool = False
):
    """Every `(i, k, j, distance)` with `query[i, k]` within `max_distance` bits of `reference[j]`
    (`skip_self`: but `i == j`, dropped as found: a set searched against itself finds each image
    in each block, and those N entries per block would be held until the end).

    Multi-index hashing: the reference is sorted by each bit block, every query looks up the
    references sharing that block exactly, and only those candidates are compared bit by bit.

    Args:
        query: (N, K) uint64 hashes (K orientations of each image).
        reference: (M,) uint64 hashes.

    Returns:
        Four int64 arrays (i, k, j, distance), each triple once, in no particular order.
    """
    found = []
    rows = max(1, _QUERIES_AT_ONCE // query.shape[1])  # a fixed amount of memory, whatever N
    for shift, width in _blocks(max_distance):
        sorted_keys, order = _sorted_block(reference, shift, width)
        for start in range(0, len(query), rows):
            flat = query[start : start + rows].ravel()
            # As the sorted keys' type: numpy would otherwise copy them all to compare.
            q_keys = _block(flat, shift, width).astype(sorted_keys.dtype, copy=False)
            lo = np.searchsorted(sorted_keys, q_keys, "left")
            counts = np.searchsorted(sorted_keys, q_keys, "right") - lo
            for q, pos in _expand(lo, counts):
                j = order[pos]
                d = _popcount(flat[q] ^ reference[j]).astype(np.int64)
                keep = d <= max_distance
                q = q + start * query.shape[1]  # its place in query.ravel()
                if skip_self:
                    keep &= q // query.shape[1] != j
                found.append((q[keep] * len(reference) + j[keep], d[keep]))
        del sorted_keys, order  # before the next block's are made
    if not found:
        return (np.empty(0, np.int64),) * 4
    key = np.concatenate([f[0] for f in found])
    dist = np.concatenate([f[1] for f in found])
    key, first = np.unique(key, return_index=True)  # a triple found by several blocks, once
    q, j = np.divmod(key, len(reference))
    i, k = np.divmod(q, query.shape[1])
    return i, k, j, dist[first]


def _sorted_block(reference: np.ndarray, shift: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The references' block values sorted, and each one's reference index: (M,) each.

    A block of up to 32 bits and its index share one uint64 (block above, index below), sorted in
    place and split into two uint32 arrays, `_QUERIES_AT_ONCE` at a time: 8 bytes a reference
    held, 16 at the peak, where a block array, `argsort`'s int64 order and the sorted copy held
    ~32. Wider blocks (a 0-bit search: the whole hash) are sorted by `argsort`. Equal blocks come
    out in index order either way."""
    m = len(reference)
    if width > 32 or m >= 1 << 32:
        ref_keys = _block(reference, shift, width)
        order = np.argsort(ref_keys, kind="stable")
        return ref_keys[order], order
    both = np.empty(m, np.uint64)
    for start in range(0, m, _QUERIES_AT_ONCE):
        part = slice(start, start + _QUERIES_AT_ONCE)
        both[part] = _block(reference[part], shift, width) << np.uint64(32)
        both[part] |= np.arange(start, min(start + _QUERIES_AT_ONCE, m), dtype=np.uint64)
    both.sort()  # unique values (the index): any sort keeps index order among equal blocks
    keys, order = np.empty(m, np.uint32), np.empty(m, np.uint32)
    for start in range(0, m, _QUERIES_AT_ONCE):
        part = slice(start, start + _QUERIES_AT_ONCE)
        keys[part] = both[part] >> np.uint64(32)
        order[part] = both[part] & np.uint64(0xFFFFFFFF)
    return keys, order


def _expand(lo: np.ndarray, counts: np.ndarray):
    """Yield `(query index, reference position)` arrays for the ranges `lo[q] : lo[q] + counts[q]`,
    a bounded number of candidates at a time."""
    ends = np.cumsum(counts)
    start = 0
    while start < len(counts):
        base = ends[start - 1] if start else 0
        stop = max(int(np.searchsorted(ends, base + _CANDIDATES_AT_ONCE, "right")), start + 1)
        c = counts[start:stop]
        q = np.repeat(np.arange(start, stop), c)
        offset = np.arange(len(q)) - np.repeat(np.cumsum(c) - c, c)
        yield q, np.repeat(lo[start:stop], c) + offset
        start = stop


def _confirmed(dh_a: np.ndarray, dh_b: np.ndarray, confirm_distance: int | None) -> np.ndarray:
    """Whether each pair of dHashes is within `confirm_distance` bits (all True for None)."""
    if confirm_distance is None:
        return np.ones(len(dh_a), dtype=bool)
    return _popcount(dh_a ^ dh_b) <= confirm_distance


def _per_pair(a, b, d, ok, n):
    """One entry per `(a, b)`: the smallest distance and whether any match confirmed it, sorted."""
    if not len(a):
        return [], [], [], []
    key = a.astype(np.int64) * n + b
    order = np.lexsort((key,))
    key, d, ok = key[order], d[order], ok[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    d = np.minimum.reduceat(d, starts)
    ok = np.logical_or.reduceat(ok, starts)
    a, b = np.divmod(key[starts], n)
    return a.tolist(), b.tolist(), d.tolist(), ok.tolist()


def match_hashes(
    query: np.ndarray,
    reference: np.ndarray,
    max_distance: int = DEFAULT_NEAR_DUP_DISTANCE,
    confirm_distance: int | None = DEFAULT_CONFIRM_DISTANCE,
) -> list[tuple[int, int, int]]:
    """Pairs `(query i, reference j, phash_distance)` of images that are copies of one another.

    The same test as `near_duplicate_pairs` (closest of 8 orientations, pHash within
    `max_distance` bits, confirmed by a dHash within `confirm_distance`), between two sets.

    Args:
        query: (N, 2, 8) uint64 from `perceptual_hashes`.
        reference: (M, 2, 8) uint64.
    """
    query = np.asarray(query, dtype=np.uint64).reshape(-1, 2, len(_DIHEDRAL))
    reference = np.asarray(reference, dtype=np.uint64).reshape(-1, 2, len(_DIHEDRAL))
    if not len(query) or not len(reference) or max_distance < 0:
        return []
    ph_q, dh_q = query[:, 0, :], query[:, 1, :]
    ph_r, dh_r = reference[:, 0, 0], reference[:, 1, 0]  # as stored
    if len(query) * len(reference) < _BRUTE_FORCE_BELOW**2:
        return _match_all_pairs(ph_q, dh_q, ph_r, dh_r, max_distance, confirm_distance)
    i, k, j, d = _close_hashes(ph_q, ph_r, max_distance)
    ok = _confirmed(dh_q[i, k], dh_r[j], confirm_distance)
    i, j, d, ok = _per_pair(i, j, d, ok, len(reference))
    return [(a, b, c) for a, b, c, y in zip(i, j, d, ok) if y]


def _match_all_pairs(ph_q, dh_q, ph_r, dh_r, max_distance, confirm_distance):
    """`match_hashes` by comparing every query with every reference (quadratic)."""
    chunk = max(1, 2**19 // len(ph_r))
    out = []
    for start in range(0, len(ph_q), chunk):
        dist = _popcount(ph_q[start : start + chunk, :, None] ^ ph_r[None, None, :])  # (c, 8, M)
        rows, cols = np.nonzero(dist.min(axis=1) <= max_distance)
        for r, j in zip(rows.tolist(), cols.tolist()):
            i = start + r
            ks = np.flatnonzero(dist[r, :, j] <= max_distance)
            if (
                confirm_distance is None
                or (_popcount(dh_q[i, ks] ^ dh_r[j]) <= confirm_distance).any()
            ):
                out.append((i, j, int(dist[r, :, j].min())))
    return sorted(out)


@dataclass
class Duplicates:
    """Duplicate structure of a list of images.

    Attributes:
        cluster: Cluster id per image (0..K-1, numbered by first member; int32 array): duplicates
            share one.
        exact_groups: Index lists of images with identical bytes (groups of 2 or more).
        near_pairs: Confirmed `(i, j, phash_distance)` pairs (exact copies included, at 0).
        rejected_pairs: pHash matches the dHash check turned down (look-alikes, not copies).
    """

    cluster: np.ndarray
    exact_groups: list[list[int]]
    near_pairs: list[tuple[int, int, int]]
    rejected_pairs: list[tuple[int, int, int]] = field(default_factory=list)

    def groups(self) -> list[list[int]]:
        """Clusters of 2 or more images, as index lists in image order (ordered by first image).

        Cluster numbers 0..N are counted as they are (`np.bincount`): no sort of every image."""
        c = np.asarray(self.cluster).ravel()
        if not (c.dtype.kind in "iu" and len(c) and c.min() >= 0 and c.max() <= len(c)):
            return shared_indices(c)
        several = np.flatnonzero(np.bincount(c)[c] > 1)
        several = several[np.argsort(c[several], kind="stable")]
        groups = np.split(several, np.flatnonzero(np.diff(c[several])) + 1) if len(several) else []
        return sorted((g.tolist() for g in groups), key=lambda g: g[0])


def find_duplicates(
    sha256: Sequence[str],
    hashes: np.ndarray,
    max_distance: int = DEFAULT_NEAR_DUP_DISTANCE,
    confirm_distance: int | None = DEFAULT_CONFIRM_DISTANCE,
) -> Duplicates:
    """Cluster images that are exact or near copies of one another (transitively: connected
    components).

    Args:
        sha256: Content hash per image.
        hashes: (N, 2, 8) perceptual hashes per image, from `perceptual_hashes`.
        max_distance: pHash threshold in bits; negative turns near duplicates off.
        confirm_distance: dHash threshold confirming a pHash match (see `near_duplicate_pairs`).
    """
    exact = shared_indices(sha256)
    pairs, rejected = near_duplicate_pairs(hashes, max_distance, confirm_distance)
    edges = [(g[0], j) for g in exact for j in g[1:]] + [(i, j) for i, j, _ in pairs]
    cluster = _components(len(sha256), edges)
    return Duplicates(cluster, sorted(exact), pairs, rejected)


def _components(n: int, edges: list[tuple[int, int]]) -> np.ndarray:
    """Connected component of each of `n` items joined by `edges`, numbered by first item (scipy's
    `connected_components`: no Python object per item)."""
    if not n:
        return np.zeros(0, np.int32)
    a, b = np.array(edges, dtype=np.int64).reshape(-1, 2).T
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    labels = connected_components(graph, directed=False)[1]
    return _by_first(labels)[0]


def _by_first(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`labels` renumbered 0..G-1 in the order each first appears (int32), and each one's first
    item. scipy's `connected_components` numbers components so already (nodes in order): that is
    checked (~5 bytes an item, no sort), not assumed; other labels are sorted."""
    labels = np.asarray(labels).ravel()
    if not len(labels):
        return np.zeros(0, np.int32), np.zeros(0, np.int64)
    top = np.maximum.accumulate(labels)
    if labels[0] == 0 and (np.diff(top) <= 1).all() and (labels <= top).all():
        first = np.flatnonzero(np.diff(top, prepend=-1) > 0)  # where each new one appears
        return labels.astype(np.int32, copy=False), first
    del top
    values, first = np.unique(labels, return_index=True)
    rank = np.empty(len(first), np.int32)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[np.searchsorted(values, labels)], np.sort(first)


def shared_indices(values: Sequence) -> list[list[int]]:
    """The indices of each value held by two or more items, in index order, values in the order
    of their first item (no list per item: numpy over the whole column).

    Fixed-width bytes (raw or hex SHA-256) are first narrowed to the items whose first 8 bytes
    another item shares (`_same_prefix`): ~24 transient bytes an item, not a sort of the whole
    values with its inverse and counts."""
    values = np.asarray(values)
    if not len(values):
        return []
    if values.dtype.kind in "SV" and values.dtype.itemsize >= 8:
        some = _same_prefix(values)
        return [some[g].tolist() for g in _groups(values[some])] if len(some) else []
    return [g.tolist() for g in _groups(values)]


def _groups(values: np.ndarray) -> list[np.ndarray]:
    """`shared_indices`'s groups over all of `values` (not empty), as arrays of indices."""
    _, first, inverse, counts = np.unique(
        values, return_index=True, return_inverse=True, return_counts=True
    )
    inverse = inverse.ravel()
    several = np.flatnonzero(counts[inverse] > 1)
    several = several[np.lexsort((several, first[inverse[several]]))]
    cuts = np.flatnonzero(np.diff(inverse[several])) + 1
    return np.split(several, cuts) if len(several) else []


def _same_prefix(values: np.ndarray) -> np.ndarray:
    """Indices (ascending) of the items whose first 8 bytes another item's first 8 bytes equal:
    every item whose whole value another holds, and the few whose prefix alone collides. ~9
    transient bytes an item: the prefixes, sorted in place, then looked up `_AT_ONCE` items at a
    time (`values` may be a memory map: it is read a chunk at a time, never copied whole)."""
    starts = range(0, len(values), _AT_ONCE)
    prefix = np.empty(len(values), np.uint64)
    for start in starts:
        prefix[start : start + _AT_ONCE] = _prefix(values[start : start + _AT_ONCE])
    prefix.sort()
    shared = prefix[1:][prefix[1:] == prefix[:-1]]
    del prefix
    some = [
        start + np.flatnonzero(np.isin(_prefix(values[start : start + _AT_ONCE]), shared))
        for start in starts
    ]
    return np.concatenate(some) if some else np.empty(0, np.int64)


_AT_ONCE = 1 << 12  # items whose prefixes `_same_prefix` makes at once


def _prefix(values: np.ndarray) -> np.ndarray:
    """(n,) uint64: each fixed-width value's first 8 bytes."""
    raw = np.ascontiguousarray(values).view(np.uint8).reshape(len(values), -1)
    return np.ascontiguousarray(raw[:, :8]).view(np.uint64).ravel()


def summarize_duplicates(
    dups: Duplicates,
    labels: Sequence[str],
    source_splits: Sequence[str | None],
    rel: Sequence[str],
    splits: Sequence[str],
) -> DuplicateSummary:
    """`dataset.json`'s duplicate record: exact groups, near pairs, clusters and label conflicts.

    Per image (indices are those of `dups`): its class, the split its source put it in (or None),
    its path in the data dir and the split it was assigned.
    """
    clusters = [
        DuplicateCluster(
            id=int(dups.cluster[members[0]]),
            paths=[rel[i] for i in members],
            labels=sorted({labels[i] for i in members}),
            source_splits=sorted({source_splits[i] or "-" for i in members}),
            split=splits[members[0]],
        )
        for members in dups.groups()
    ]

    def across(pairs) -> int:
        return sum(1 for i, j, _ in pairs if (source_splits[i] or "-") != (source_splits[j] or "-"))

    return DuplicateSummary(
        exact_groups=[[rel[i] for i in g] for g in dups.exact_groups],
        exact_images=sum(len(g) for g in dups.exact_groups),
        near_pairs=len(dups.near_pairs),
        near_pairs_exact=sum(1 for *_, d in dups.near_pairs if d == 0),
        near_pairs_across_source_splits=across(dups.near_pairs),
        rejected_pairs=[(rel[i], rel[j], d) for i, j, d in dups.rejected_pairs],
        rejected_pairs_across_source_splits=across(dups.rejected_pairs),
        clusters=clusters,
        images_in_clusters=sum(len(c.paths) for c in clusters),
        label_conflicts=[c for c in clusters if len(c.labels) > 1],
    )
