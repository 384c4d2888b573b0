"""Splits and the data dir's record: stratified, seeded, duplicate groups never straddle two splits;
`dataset.json` is a typed record."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from skincls.data.fetch import fetch
from skincls.data.info import (
    DATASET_JSON,
    DatasetInfo,
    DatasetSource,
    DuplicateSummary,
    MovedImage,
)
from skincls.data.splits import assign_splits, load_manifest, unify_groups
from skincls.errors import DataError


def test_unify_groups_pulls_training_copies_into_test():
    src = ["train", "test", "train", "train", "val", None]
    groups = [0, 0, 1, 2, 2, 1]
    assert unify_groups(src, groups) == ["test", "test", "train", "val", "val", "train"]


def test_groups_never_straddle_and_val_is_stratified():
    n = 400
    groups = [i // 2 for i in range(n)]  # pairs of copies of one lesion, sharing its label
    labels = ["malignant" if g % 4 == 0 else "benign" for g in groups]
    src = ["test" if g % 5 == 0 and i % 2 == 0 else "train" for i, g in enumerate(groups)]
    out = assign_splits(labels, src, val_fraction=0.2, seed=1, groups=groups)
    by_group: dict[int, set[str]] = {}
    for g, s in zip(groups, out):
        by_group.setdefault(g, set()).add(s)
    assert all(len(s) == 1 for s in by_group.values())
    # A test copy pulls its training twin into test; nothing else enters test.
    assert [i for i in range(n) if out[i] == "test"] == [i for i in range(n) if groups[i] % 5 == 0]
    # Val is 20% of each class's training pool (240 benign, 80 malignant images): stratified.
    c = Counter(zip(out, labels))
    assert (c[("val", "benign")], c[("val", "malignant")]) == (48, 16)
    assert (c[("train", "benign")], c[("train", "malignant")]) == (192, 64)
    assert out != assign_splits(labels, src, val_fraction=0.2, seed=2, groups=groups)


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


def test_dataset_json_is_a_typed_record(tmp_path):
    data = tmp_path / "d"
    report = fetch(data, synthetic=24, seed=2)
    info = DatasetInfo.load(data)
    assert info == report.info == load_manifest(data).info
    assert info.source == DatasetSource(kind="synthetic", n=24, layout_root=".")
    assert isinstance(info.duplicates, DuplicateSummary) and info.seed == 2
    assert info.counts == load_manifest(data).counts()  # filled in by write_manifest
    raw = json.loads((data / DATASET_JSON).read_text())
    assert list(raw)[:3] == ["classes", "counts", "format"] and raw["source"]["kind"] == "synthetic"

    # A record of the wrong shape is refused with the fix, not read key by key until one is missing.
    for bad in (
        {**raw, "seed": "two"},
        {**raw, "sed": 2},
        {k: v for k, v in raw.items() if k != "classes"},
    ):
        (data / DATASET_JSON).write_text(json.dumps(bad))
        with pytest.raises(
            DataError, match=r"dataset\.json is not a valid record; run `skincls fetch`"
        ):
            load_manifest(data)
    assert fetch(data, synthetic=24, seed=2).changed  # rebuilt, not trusted
    assert DatasetInfo.load(data) == info


def test_moved_images_keep_their_json_key(tmp_path):
    moved = MovedImage.model_validate(
        {"path": "a.jpg", "from": "train", "to": "test", "cluster": 3}
    )
    info = DatasetInfo(classes=["a"], moved=[moved])
    assert json.loads(info.to_json())["moved"] == [
        {"path": "a.jpg", "from": "train", "to": "test", "cluster": 3, "group": ""}
    ]
    info.save(tmp_path)
    assert DatasetInfo.load(tmp_path).moved[0].from_split == "train"
