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
from ..grouping import Grouping, build_grouping
from ..info import MovedImage
from ..references import Provenance, Reference, load_reference, match_references
from ..splits import Record, assign_splits, unify_groups
from .records import Curated, FetchOptions, VerifiedImage

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


def curate(
    images: Sequence[VerifiedImage],
    references: Sequence[Reference],
    options: FetchOptions,
) -> Curated:
    """The manifest rows of `images` (in their order), with duplicate clusters, groups and splits
    (`options`: fractions, seed, near-duplicate distances), and what was found on the way."""
    hashes = np.stack([im.hashes for im in images])
    dups = find_duplicates(
        [im.sha256 for im in images], hashes, options.near_dup_distance, options.near_dup_confirm
    )
    prov = match_references(hashes, references) if references else None
    keys, lesion, patient = _identities(images, prov)
    # Lesion, patient and duplicate cluster, joined: one group never straddles two splits.
    grouping = build_grouping(keys, dups.cluster)
    labels = [im.label for im in images]
    splits = assign_splits(
        labels,
        [im.split for im in images],
        val_fraction=options.val_fraction,
        test_fraction=options.test_fraction,
        seed=options.seed,
        groups=grouping.ids,
    )
    rel = [f"images/{im.rel}" for im in images]
    records = [
        Record(
            rel[i],
            im.label,
            splits[i],
            im.sha256,
            dups.cluster[i],
            grouping.names[i],
            lesion[i],
            patient[i],
            (im.row.attributes if im.row else ()) + im.skin,
        )
        for i, im in enumerate(images)
    ]
    return Curated(
        records,
        _moved(images, rel, grouping, dups.cluster),
        duplicates=summarize_duplicates(dups, images, rel, splits),
        groups=grouping.summary(rel, labels, splits),
        provenance=prov.report(labels) if prov else None,
    )


def _moved(
    images: Sequence[VerifiedImage], rel: list[str], grouping: Grouping, cluster: list[int]
) -> list[MovedImage]:
    """Images out of their source split: their group is whole in another (`unify_groups`)."""
    source_splits = [im.split for im in images]
    unified = unify_groups(source_splits, grouping.ids)
    return [
        MovedImage(
            path=rel[i], from_split=s, to=unified[i], cluster=cluster[i], group=grouping.names[i]
        )
        for i, s in enumerate(source_splits)
        if s is not None and s != unified[i]
    ]


def _identities(
    images: Sequence[VerifiedImage], prov: Provenance | None
) -> tuple[list[list[str]], list[str], list[str]]:
    """Per image: its grouping keys, lesion id and patient id, from its metadata row first, then
    from the reference image it is a copy of."""
    keys, lesion, patient = [], [], []
    for i, im in enumerate(images):
        r = im.row
        keys.append((r.keys() if r else []) + (prov.keys[i] if prov else []))
        lesion.append((r.lesion_id if r else "") or (prov.lesion_ids[i] if prov else ""))
        patient.append((r.patient_id if r else "") or (prov.patient_ids[i] if prov else ""))
    return keys, lesion, patient
