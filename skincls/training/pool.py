"""Feature pool: a frozen backbone's features of a set of images, computed once for every subset of it.

Cross-validation trains K models on overlapping subsets of the same images. The feature cache keys an
entry by the dataset's records, so each fold's training set would miss it and run the backbone again.
A `FeaturePool` holds the whole set (all non-test images of a manifest): the first request extracts it
through the ordinary cache (`load_or_extract`, so a disk entry is reused across runs too), and every
dataset whose images are a subset of it, with the same transform, takes its rows from that one array.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from torch import nn
from torch.utils.data import Dataset

from ..data.dataset import ManifestDataset
from ..data.splits import Manifest, Record
from .contract import cache_split
from .features import FeatureSet, backbone_fingerprint, load_or_extract

__all__ = ["FeaturePool"]


class FeaturePool:
    """Serves features of any `ManifestDataset` whose images all belong to `records`.

    Args:
        root: The data dir the records' paths are relative to.
        classes: Class names, index = label id.
        records: The pooled images (e.g. every non-test record of a manifest).

    Call it like `load_or_extract(extractor, dataset, **options)` (the trainer's `feature_pool=`); a
    dataset that is not a subset, or has another transform, goes to `load_or_extract` unchanged.
    With `mode="auto"` and a cache folder, the pool's features are written to disk (not only kept in
    memory), so that a resumed cross-validation reads them back instead of running the backbone again.

    Attributes:
        extractions: How many times the pool's features were computed or read from disk (not served
            from memory): once per backbone and transform.
    """

    def __init__(self, root: str | Path, classes: Sequence[str], records: Sequence[Record]):
        # The pool is one "train" split of its own manifest, so its dataset is a plain ManifestDataset.
        self.manifest = Manifest(
            Path(root), list(classes), [replace(r, split="train") for r in records]
        )
        self._row = {r.path: i for i, r in enumerate(self.manifest.records)}
        self._memo: tuple[tuple[str, str], str, FeatureSet] | None = None  # the latest only
        self.extractions = 0

    def rows(self, dataset: Dataset) -> np.ndarray | None:
        """Pool row of each of `dataset`'s images, or None when it is not a subset of the pool."""
        if not isinstance(dataset, ManifestDataset):
            return None
        if dataset.manifest.root.resolve() != self.manifest.root.resolve():
            return None
        rows = [self._row.get(r.path) for r in dataset.records]
        if any(i is None for i in rows):
            return None
        pool = self.manifest.records
        if any(
            pool[i].sha256 != r.sha256 or pool[i].label != r.label
            for i, r in zip(rows, dataset.records)
        ):
            return None
        return np.asarray(rows, dtype=np.int64)

    def lookup(self, model: nn.Module, dataset: Dataset) -> FeatureSet | None:
        """`dataset`'s features if the pool holds them already for `model`'s feature extractor (its
        `split_for_cache()`: a frozen backbone), else None.

        Whatever precision they were extracted in (see the trainer's autocast).
        """
        rows = self.rows(dataset)
        split = cache_split(model)
        if rows is None or self._memo is None or split is None:
            return None
        key = (backbone_fingerprint(split[0]), repr(dataset.transform))
        if self._memo[0] != key:
            return None
        return _with_metadata(self._take(self._memo[2], rows), dataset)

    def __call__(self, extractor: nn.Module, dataset: Dataset, **options) -> FeatureSet:
        rows = self.rows(dataset)
        if rows is None:
            return load_or_extract(extractor, dataset, **options)
        backbone_fp = options.get("backbone_fp") or backbone_fingerprint(extractor)
        key = (backbone_fp, repr(dataset.transform))
        dtype = str(options.get("autocast_dtype"))
        if self._memo is not None and self._memo[:2] == (key, dtype):
            return _with_metadata(self._take(self._memo[2], rows), dataset)
        whole = ManifestDataset(self.manifest, "train", dataset.transform)
        options = {**options, "backbone_fp": backbone_fp}
        if options.get("mode") == "auto" and options.get("cache_dir") is not None:
            # A cross-validation runs long and resumes: keep the pool on disk for the next process.
            options["mode"] = "disk"
        full = load_or_extract(extractor, whole, **options)
        self.extractions += 1
        if full.seconds:
            options.get("log", lambda _: None)(
                f"feature pool: {len(whole)} images' features {full.source} once for every subset "
                f"in {full.seconds:.1f}s ({len(whole) / full.seconds:.1f} images/s)"
            )
        self._memo = (key, dtype, full)
        taken = replace(self._take(full, rows), source=full.source, seconds=full.seconds)
        return _with_metadata(taken, dataset)

    @staticmethod
    def _take(full: FeatureSet, rows: np.ndarray) -> FeatureSet:
        # The pool holds image features only (a fused extractor called on images alone gives
        # them); a dataset's own encoded metadata is appended per request (`_with_metadata`).
        return replace(
            full,
            features=full.features[rows],
            targets=full.targets[rows],
            source="pool",
            seconds=0.0,
        )


def _with_metadata(fs: FeatureSet, dataset: Dataset) -> FeatureSet:
    """`fs` with `dataset`'s encoded metadata appended to each row, as a fused model's feature
    extractor gives them (`[image features | metadata]`); unchanged for an images-only dataset."""
    meta = getattr(dataset, "metadata_matrix", None)
    if meta is None:
        return fs
    return replace(fs, features=np.concatenate([np.asarray(fs.features), meta], axis=1))
