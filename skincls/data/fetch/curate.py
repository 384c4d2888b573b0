"""Curate: find duplicates, join lesion, patient and duplicate groups, and give every image a split.

A group (one lesion, one patient, one duplicate cluster, joined) never straddles two splits: a copy
of a test image in the source's train split moves to test, and the move is recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..dedup import find_duplicates, summarize_duplicates
from ..download import default_cache_dir
from ..grouping import Grouping, build_grouping
from ..info import MovedImage
from ..metadata import MetaRow
from ..references import Provenance, Reference, load_reference, match_references
from ..splits import assign_splits, unify_groups
from .records import Curated, FetchOptions
from .table import ImageTable

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
    near-duplicate distances), in table order, and what was found on the way."""
    hashes = table.hashes
    dups = find_duplicates(
        table.sha256, hashes, options.near_dup_distance, options.near_dup_confirm
    )
    prov = match_references(hashes, references) if references else None
    keys, lesion, patient = _identities(table, prov)
    # Lesion, patient and duplicate cluster, joined: one group never straddles two splits.
    grouping = build_grouping(keys, dups.cluster)
    del keys
    labels, sources = table.column("label"), table.column("split")
    splits = assign_splits(
        labels,
        sources,
        val_fraction=options.val_fraction,
        test_fraction=options.test_fraction,
        seed=options.seed,
        groups=grouping.ids,
    )
    rel = _Paths(table.rel)
    return Curated(
        table,
        splits,
        dups.cluster,
        grouping.names,
        lesion,
        patient,
        _moved(sources, rel, grouping, dups.cluster),
        duplicates=summarize_duplicates(dups, labels, sources, rel, splits),
        groups=grouping.summary(rel, labels, splits),
        provenance=prov.report(labels) if prov else None,
    )


class _Paths(Sequence[str]):
    """Paths in the data dir (`images/…`) of paths under `images/`, each made when asked for."""

    def __init__(self, rel: list[str]) -> None:
        self._rel = rel

    def __len__(self) -> int:
        return len(self._rel)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [f"images/{r}" for r in self._rel[i]]
        return f"images/{self._rel[i]}"


def _moved(
    source_splits: list[str | None], rel: Sequence[str], grouping: Grouping, cluster: list[int]
) -> list[MovedImage]:
    """Images out of their source split: their group is whole in another (`unify_groups`)."""
    unified = unify_groups(source_splits, grouping.ids)
    return [
        MovedImage(
            path=rel[i], from_split=s, to=unified[i], cluster=cluster[i], group=grouping.names[i]
        )
        for i, s in enumerate(source_splits)
        if s is not None and s != unified[i]
    ]


def _identities(
    table: ImageTable, prov: Provenance | None
) -> tuple[list[tuple[str, ...]], list[str], list[str]]:
    """Per image: its grouping keys, lesion id and patient id, from its metadata row first, then
    from the reference image it is a copy of. Images of one row share its keys' tuple."""
    keys, lesion, patient = [], [], []
    own: dict[MetaRow, tuple[str, ...]] = {}
    for i, r in enumerate(table.column("row")):
        k = own.get(r)
        if k is None:
            k = own[r] = tuple(r.keys())
        keys.append(k + tuple(prov.keys[i]) if prov else k)
        lesion.append(r.lesion_id or (prov.lesion_ids[i] if prov else ""))
        patient.append(r.patient_id or (prov.patient_ids[i] if prov else ""))
    return keys, lesion, patient
