"""Curate: find duplicates, join lesion, patient and duplicate groups, and give every image a split.

A group (one lesion, one patient, one duplicate cluster, joined) never straddles two splits: a copy
of a test image in the source's train split moves to test, and the move is recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..dedup import find_duplicates, summarize_duplicates
from ..download import default_cache_dir
from ..grouping import Grouping, group_images
from ..info import MovedImage
from ..lazy import Mapped
from ..references import Provenance, Reference, load_reference, match_references
from ..splits import SPLITS, split_codes, split_rank, unify_ranks
from .records import Curated, FetchOptions
from .table import Coded, ImageTable, Pool

__all__ = ["curate", "load_references"]


def load_references(options: FetchOptions) -> list[Reference]:
    """Read the reference datasets (`options.reference`); their hashes are cached under the
    cache dir's `references/`.

    Raises:
        DataError: a reference is missing, unreadable or has no lesion or patient ids.
    """
    cache = Path(options.cache_dir) if options.cache_dir else default_cache_dir().parent
    return [
        load_reference(r, cache_dir=cache / "references", on_progress=options.on_progress)
        for r in options.reference or []
    ]


def curate(table: ImageTable, references: Sequence[Reference], options: FetchOptions) -> Curated:
    """The images' duplicate clusters, groups and splits (`options`: fractions, seed,
    near-duplicate distances), in table order, and what was found on the way.

    Per image only arrays of codes are made (cluster, group, split); names and paths are looked
    up for the few images a summary lists."""
    hashes = table.hashes
    dups = find_duplicates(
        table.sha256_raw, hashes, options.near_dup_distance, options.near_dup_confirm
    )
    prov = match_references(hashes, references) if references else None
    key_sets, key_set, lesion, patient = _identities(table, prov)
    # Lesion, patient and duplicate cluster, joined: one group never straddles two splits.
    grouping = group_images(key_sets, key_set, dups.cluster)
    del key_set
    splits = split_codes(
        _label_ranks(table),
        _source_ranks(table),
        val_fraction=options.val_fraction,
        test_fraction=options.test_fraction,
        seed=options.seed,
        groups=grouping.ids,
    )
    labels, sources, names = table.values("label"), table.values("split"), Coded(splits, SPLITS)
    paths = table.rel
    rel = Mapped(len(paths), lambda i: f"images/{paths[i]}")  # as in the data dir
    return Curated(
        table,
        splits,
        dups.cluster,
        grouping.names,
        lesion,
        patient,
        _moved(table, rel, grouping, dups.cluster),
        duplicates=summarize_duplicates(dups, labels, sources, rel, names),
        groups=grouping.summary(rel, labels, names),
        provenance=prov.report(labels) if prov else None,
    )


def _label_ranks(table: ImageTable) -> np.ndarray:
    """Each image's class as its position among the classes sorted (the label id)."""
    values = table.pools["label"].values
    rank = {v: r for r, v in enumerate(sorted(values))}
    return np.array([rank[v] for v in values], np.int32)[table.codes("label")]


def _source_ranks(table: ImageTable) -> np.ndarray:
    """Each image's source split as `split_rank` (none: train)."""
    values = table.pools["split"].values
    return np.array([split_rank(v) for v in values], np.int8)[table.codes("split")]


def _moved(
    table: ImageTable, rel: Sequence[str], grouping: Grouping, cluster: np.ndarray
) -> list[MovedImage]:
    """Images out of their source split: their group is whole in another (`unify_groups`)."""
    unified = unify_ranks(_source_ranks(table), grouping.ids)
    values, code = table.pools["split"].values, table.codes("split")
    # Per source split and split it is unified into: whether the image moved.
    differs = np.array([[v is not None and v != s for s in SPLITS] for v in values], bool)
    return [
        MovedImage(
            path=rel[i],
            from_split=values[code[i]],
            to=SPLITS[unified[i]],
            cluster=int(cluster[i]),
            group=grouping.names[i],
        )
        for i in np.flatnonzero(differs[code, unified]).tolist()
    ]


def _identities(
    table: ImageTable, prov: Provenance | None
) -> tuple[list[tuple[str, ...]], np.ndarray, Coded, Coded]:
    """The images' distinct sets of grouping keys, each image's set (a code), lesion id and
    patient id: from its metadata row first, then from the reference image it is a copy of."""
    rows, row = table.pools["row"].values, table.codes("row")
    if prov is None:  # an image's row says it all: the rows are the codes
        lesion = Coded(row, [r.lesion_id for r in rows])
        return (
            [tuple(r.keys()) for r in rows],
            row,
            lesion,
            Coded(row, [r.patient_id for r in rows]),
        )
    pools, codes = (Pool(), Pool(), Pool()), np.empty((3, len(row)), np.int32)
    for i, c in enumerate(row.tolist()):
        r = rows[c]
        codes[:, i] = (
            pools[0].code(tuple(r.keys()) + tuple(prov.keys[i])),
            pools[1].code(r.lesion_id or prov.lesion_ids[i]),
            pools[2].code(r.patient_id or prov.patient_ids[i]),
        )
    keys, lesion, patient = (p.values for p in pools)
    return keys, codes[0], Coded(codes[1], lesion), Coded(codes[2], patient)
