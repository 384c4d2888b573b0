"""Fetch's stages one at a time: plan, stage, verify, curate and write, each on a hand-made record."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

from skincls.data.dedup import perceptual_hashes
from skincls.data.fetch import fetch
from skincls.data.fetch.curate import curate
from skincls.data.fetch.plan import plan_fetch
from skincls.data.fetch.records import (
    FetchOptions,
    FetchPlan,
    StagedFiles,
    VerifiedImage,
    VerifiedImages,
)
from skincls.data.fetch.stage import PARTIAL, stage_files
from skincls.data.fetch.table import Column, ImageTable
from skincls.data.fetch.verify import verify_images
from skincls.data.fetch.write import write_dataset
from skincls.data.freshness import FORMAT_VERSION
from skincls.data.ingest import Layout
from skincls.data.metadata import MetaRow
from skincls.data.sources import plan_source
from skincls.data.splits import load_manifest
from skincls.errors import DataError
from tests.data.test_fetch import FakeKaggle, _lesion, _tree, _zip_tree
from tests.data.traced import traced_peak


def _flat(root: Path, per_class: int = 3) -> Path:
    """`root/benign|malignant/i.jpg`, distinct lesions."""
    for n in range(2 * per_class):
        label = ("benign", "malignant")[n % 2]
        (root / label).mkdir(parents=True, exist_ok=True)
        _lesion(n, label == "malignant").save(root / label / f"{n}.jpg")
    return root


def _image(rel: str, label: str, split: str | None = None, seed: int = 0, row=None):
    """A verified image as the verify stage hands it on (hashes of a real synthetic lesion)."""
    look = perceptual_hashes(_lesion(seed, label == "malignant"))
    return VerifiedImage(rel, label, split, f"{seed:064x}", look, row)  # SHA-256: 64 hex digits


def test_image_table_in_files_buffers_a_fixed_share_of_each_column(tmp_path):
    # ISIC 2024 has 401,059 images: appended to files, the columns buffer a small fixed share
    # (64 KiB each), not ~1 MiB each (up to ~30,000 images, ~70 bytes an image held).
    n, hashes = 20_000, np.zeros((2, 8), np.uint64)
    table = ImageTable(n, tmp_path / "columns")

    def append() -> None:
        for i in range(n):
            table.append(f"train-image.hdf5/ISIC_{i:07d}.jpg", "benign", None, f"{i:064x}", hashes)

    _, peak = traced_peak(append)
    assert table.sha_hex(n - 1) == f"{n - 1:064x}" and table.rel[n - 1].endswith("9999.jpg")
    assert peak / n < 24, f"{peak / n:.0f} bytes an image"  # 14; 99 before


def test_image_table_in_files_reads_back_as_the_one_in_memory(tmp_path, monkeypatch):
    # With a folder, the SHA-256, codes and paths are appended to files a chunk at a time (here
    # 40 bytes, so values straddle chunks) and read back memory-mapped: the same table.
    monkeypatch.setattr(Column, "_CHUNK", 40)
    row = MetaRow("x", "mel", lesion_id="L1", patient_id="P1")
    names = ["benign/a.jpg", "malignant/é\udcff.jpg", "benign/" + "b" * 70 + ".jpg"]
    images = [
        replace(
            _image(names[i % 3], names[i % 3].split("/")[0], "train", i, row),
            rel=f"{i}{names[i % 3]}",
        )
        for i in range(9)
    ]
    in_memory = ImageTable.of(images)
    in_files = ImageTable(len(images), tmp_path / "columns")
    for im in images:
        in_files.append(im.rel, im.label, im.split, im.sha256, im.hashes, im.row, im.skin)
    assert list(in_files.rel) == list(in_memory.rel) == [im.rel for im in images]
    assert (in_files.sha256 == in_memory.sha256).all()
    assert in_files.sha256_raw.tobytes() == in_memory.sha256_raw.tobytes()
    assert [in_files.sha_hex(i) for i in range(9)] == [im.sha256 for im in images]
    for name in ("label", "split", "skin", "row"):
        assert in_files.column(name) == in_memory.column(name)
    assert isinstance(in_files.skin_table()[0], np.memmap)
    assert [(v.rel, v.label, v.row, v.sha256) for v in in_files] == [
        (v.rel, v.label, v.row, v.sha256) for v in in_memory
    ]
    # (what the buffer held is written out when read)
    sizes = {p.name: p.stat().st_size for p in (tmp_path / "columns").iterdir()}
    assert sizes == {
        "hashes.npy": sizes["hashes.npy"],
        "sha256.bin": 32 * 9,
        "codes.bin": 16 * 9,
        "path_ends.bin": 8 * 9,
        "paths.bin": sum(len(im.rel.encode("utf-8", "surrogatepass")) for im in images),
    }


# --- plan ------------------------------------------------------------------------------------


def test_plan_names_each_source_kind_and_writes_nothing(tmp_path):
    src = _flat(tmp_path / "src")
    zipped = _zip_tree(src, tmp_path / "src.zip")
    data = tmp_path / "d"
    folder = plan_fetch(data, FetchOptions(source_dir=src))
    assert (folder.kind, folder.source_dir, folder.archive) == ("source_dir", src, None)
    assert folder.source == {"kind": "source_dir", "path": str(src.resolve())}
    archive = plan_fetch(data, FetchOptions(archive=zipped))
    assert archive.kind == "archive" and archive.source["path"] == str(zipped.resolve())
    synthetic = plan_fetch(data, FetchOptions(synthetic=12, seed=4))
    assert synthetic.source == {"kind": "synthetic", "n": 12} and synthetic.settings["seed"] == 4
    prints = {folder.fingerprint, archive.fingerprint, synthetic.fingerprint}
    assert len(prints) == 3 and all(len(p) == 64 for p in prints)
    assert all(p.current is None and not p.downloaded for p in (folder, archive, synthetic))
    assert not data.exists()


def test_plan_finds_a_data_dir_up_to_date_only_for_the_same_inputs_and_options(tmp_path):
    data = tmp_path / "d"
    fetch(data, synthetic=12, seed=1, val_fraction=0.2)
    same = plan_fetch(data, FetchOptions(synthetic=12, seed=1, val_fraction=0.2))
    assert same.current is not None and len(same.current.records) == 12
    assert plan_fetch(data, FetchOptions(synthetic=12, seed=1, val_fraction=0.3)).current is None
    forced = FetchOptions(synthetic=12, seed=1, val_fraction=0.2, force=True)
    assert plan_fetch(data, forced).current is None


def test_plan_downloads_a_kaggle_source_into_the_cache(tmp_path):
    client = FakeKaggle(_zip_tree(_flat(tmp_path / "src"), tmp_path / "src.zip"))
    seen = []
    options = FetchOptions(
        client=client, cache_dir=tmp_path / "cache", on_progress=lambda *a: seen.append(a[0])
    )
    plan = plan_fetch(tmp_path / "d", options)
    assert plan.kind == "kaggle" and plan.downloaded and client.calls == 1
    assert Path(plan.archive).is_file() and plan.source["archive"] == str(plan.archive)
    assert seen == ["download"] and plan.settings["layout"] == "folders"
    assert not plan_fetch(tmp_path / "d", options).downloaded  # the cached archive is reused


def test_plan_refuses_two_sources(tmp_path):
    with pytest.raises(DataError, match="give one source, not source_dir and synthetic"):
        plan_fetch(tmp_path / "d", FetchOptions(source_dir=_flat(tmp_path / "s"), synthetic=8))


# --- stage -----------------------------------------------------------------------------------


def test_stage_replaces_images_and_removes_the_old_record(tmp_path):
    data = tmp_path / "d"
    (data / "images" / "old").mkdir(parents=True)
    (data / "dataset.json").write_text("{}")
    src = _tree(tmp_path / "src", per_folder=2)
    options = FetchOptions(source_dir=src)
    staged = stage_files(data, plan_fetch(data, options), options)
    assert staged.images == data / "images" and not (data / PARTIAL).exists()
    assert not (data / "images" / "old").exists() and not (data / "dataset.json").exists()
    assert sorted(map(str, staged.layout.files)) == sorted(
        p.relative_to(src).as_posix() for p in src.rglob("*.jpg")
    )
    assert all((staged.images / f).is_file() for f in staged.layout.files)


def test_stage_that_fails_leaves_the_previous_data_dir_as_it_was(tmp_path):
    data = tmp_path / "d"
    (data / "images").mkdir(parents=True)
    (data / "images" / "mine.jpg").write_bytes(b"old")
    (data / "dataset.json").write_text("{}")
    zipped = _zip_tree(_tree(tmp_path / "src", per_folder=2), tmp_path / "a.zip")
    options = FetchOptions(archive=zipped, max_archive_bytes=10)
    with pytest.raises(DataError, match="expands past"):
        stage_files(data, plan_fetch(data, options), options)
    assert (data / "images" / "mine.jpg").read_bytes() == b"old"
    assert (data / "dataset.json").is_file() and not (data / PARTIAL).exists()


def test_stage_of_a_synthetic_metadata_dataset_keeps_images_only(tmp_path):
    options = FetchOptions(synthetic=10, dataset="ham10000", seed=2)
    staged = stage_files(tmp_path / "d", plan_fetch(tmp_path / "d", options), options)
    on_disk = [p for p in staged.images.rglob("*") if p.is_file()]
    assert len(on_disk) == len(staged.layout.files) == 10
    assert {p.suffix for p in on_disk} == {".jpg"}  # HAM10000_metadata.csv is not an image


# --- verify ----------------------------------------------------------------------------------


def test_verify_keeps_what_decodes_and_lists_every_entry_left_out(tmp_path):
    images = _flat(tmp_path / "images", per_class=2)
    (images / "benign" / "broken.jpg").write_bytes(b"not a jpeg")
    files = sorted(PurePosixPath(p.relative_to(images).as_posix()) for p in images.rglob("*.jpg"))
    layout = Layout((), files, outside=["README.md"], damaged={"malignant/gone.jpg": "crc"})
    seen = []
    verified = verify_images(StagedFiles(images, layout), lambda *a: seen.append(a))
    assert [im.rel for im in verified.table] == [str(f) for f in files if f.name != "broken.jpg"]
    assert verified.classes == ["benign", "malignant"]
    assert all(im.split is None and im.hashes.shape == (2, 8) for im in verified.table)
    reasons = dict(verified.skipped)
    assert reasons["README.md"] == "outside the split/class/file layout"
    assert reasons["malignant/gone.jpg"] == "crc"
    assert reasons["benign/broken.jpg"].startswith("not an image")
    assert verified.n_files == len(files) + 1  # the layout's files and the file outside it
    assert seen[-1] == ("verify", len(files), len(files))


def test_verify_refuses_a_single_class_naming_the_class_it_lost(tmp_path):
    images = _flat(tmp_path / "images", per_class=2)
    for p in (images / "malignant").iterdir():
        p.write_bytes(b"")
    files = sorted(PurePosixPath(p.relative_to(images).as_posix()) for p in images.rglob("*.jpg"))
    with pytest.raises(DataError, match=r"only one class \(benign\).*every image of malignant"):
        verify_images(StagedFiles(images, Layout((), files)))


# --- curate ----------------------------------------------------------------------------------


def test_curate_keeps_copies_and_patients_together_and_records_moves():
    images = [
        _image("train/benign/a.jpg", "benign", "train", seed=1),
        _image("test/benign/a.jpg", "benign", "test", seed=1),  # the same bytes, in test
        _image("train/malignant/b.jpg", "malignant", "train", seed=2),
        _image("train/benign/c.jpg", "benign", "train", seed=3),
    ]
    curated = curate(ImageTable.of(images), [], FetchOptions(val_fraction=0.0, seed=0))
    records = list(curated.records())
    assert [r.path for r in records] == [f"images/{im.rel}" for im in images]
    first, copy = records[:2]
    assert first.cluster == copy.cluster and first.group == copy.group
    assert first.split == copy.split == "test"
    [moved] = curated.moved
    assert (moved.path, moved.from_split, moved.to) == (
        "images/train/benign/a.jpg",
        "train",
        "test",
    )
    assert curated.duplicates.exact_groups == [[first.path, copy.path]]
    assert curated.groups["n_groups"] == 3 and curated.provenance is None


def test_curate_gives_one_patient_one_split_and_carves_the_fractions():
    rows = [MetaRow(f"i{n}", "nv", lesion_id=f"L{n}", patient_id=f"P{n // 4}") for n in range(40)]
    images = [
        _image(f"x/i{n}.jpg", ("benign", "malignant")[n % 2], seed=n, row=rows[n])
        for n in range(40)
    ]
    options = FetchOptions(val_fraction=0.2, test_fraction=0.2, seed=3)
    curated = curate(ImageTable.of(images), [], options)
    records = list(curated.records())
    assert [r.lesion_id for r in records] == [f"L{n}" for n in range(40)]
    assert [r.group for r in records] == [f"patient:P{n // 4}" for n in range(40)]
    split_of: dict[str, set[str]] = {}
    for r in records:
        split_of.setdefault(r.patient_id, set()).add(r.split)
    assert all(len(s) == 1 for s in split_of.values())
    counts = {s: sum(r.split == s for r in records) for s in ("train", "val", "test")}
    assert counts["val"] > 0 and counts["test"] > 0 and counts["train"] > counts["test"]
    assert curated.moved == []  # no source splits: nothing was moved


# --- write -----------------------------------------------------------------------------------


def test_write_puts_manifest_skipped_and_dataset_json_in_the_data_dir(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    plan = FetchPlan(
        "synthetic",
        plan_source("fanconic/skin-cancer-malignant-vs-benign"),
        {"kind": "synthetic", "n": 3},
        synthetic=3,
        settings={"seed": 7, "labels": {"task": "binary"}},
        fingerprint="f" * 64,
    )
    layout = Layout(("root",), [PurePosixPath("benign/a.jpg"), PurePosixPath("malignant/b.jpg")])
    rows = [None, MetaRow("b", "mel", lesion_id="L1", patient_id="P1")]
    kept = [
        _image("benign/a.jpg", "benign"),
        _image("malignant/b.jpg", "malignant", seed=1, row=rows[1]),
    ]
    table = ImageTable.of(kept)
    verified = VerifiedImages(table, ["benign", "malignant"], [("=bad.jpg", "empty")], 3, layout)
    curated = curate(table, [], FetchOptions(val_fraction=0.0, test_fraction=0.5, seed=0))
    written = write_dataset(data, plan, verified, curated)
    assert sorted(p.name for p in data.iterdir()) == ["dataset.json", "manifest.csv", "skipped.csv"]
    info = json.loads((data / "dataset.json").read_text())
    assert info["fingerprint"] == "f" * 64 and info["format"] == FORMAT_VERSION
    assert info["source"]["n"] == 3 and info["source"]["layout_root"] == "root"
    assert info["seed"] == 7 and info["n_files"] == 3 and info["n_kept"] == 2
    assert info["labels"]["task"] == "folders"  # what the classes are, not the policy asked for
    with (data / "skipped.csv").open(newline="") as fh:
        assert list(csv.reader(fh)) == [["path", "reason"], ["./=bad.jpg", "empty"]]
    again = load_manifest(data)
    records = list(curated.records())  # made row by row, as write_dataset streamed them
    assert [(r.path, r.lesion_id, r.patient_id) for r in records] == [
        ("images/benign/a.jpg", "", ""),
        ("images/malignant/b.jpg", "L1", "P1"),
    ]
    assert again.records == records and again.info == written
    assert info["counts"] == again.counts() and sum(info["counts"]["test"].values()) == 1


def test_skin_tones_counted_a_fixed_share_of_images_at_a_time(monkeypatch):
    # ISIC 2024: a metadata row per image or nearly. The (split, skin tone, row) combinations
    # are counted a share of images at a time, rows alike in the counted columns as one: ~45
    # bytes an image before (an int64 key per image, its copies and sort).
    from collections import Counter

    from skincls.data.fetch import write
    from skincls.data.fetch.records import Curated
    from skincls.data.skintone import skin_tone_counts

    monkeypatch.setattr(write, "_IMAGES_AT_ONCE", 1 << 10, raising=False)
    n, tones = 30_000, [(("ita", f"{v:.1f}"), ("skin_tone", t)) for v, t in ((41.2, "light"),
                        (12.5, "tan"), (-40.0, "dark"), (33.3, "intermediate"))] + [()]  # fmt: skip
    table, hashes = ImageTable(n), np.zeros((2, 8), np.uint64)
    for i in range(n):
        row = MetaRow(
            f"i{i}",
            "nv",
            patient_id=f"p{i}",
            attributes=(("fitzpatrick", ["I", "II", "III"][i % 3]),),
        )
        table.append(f"{i}.jpg", "nv", None, f"{i:064x}", hashes, row, tones[i % 7 % 5])
    split = (np.arange(n) % 3).astype(np.int8)
    curated = Curated(table, split, np.arange(n), [""] * n, [""] * n, [""] * n)
    counts: Counter = Counter()
    for s, im in zip(split.tolist(), table):
        a = dict(im.row.attributes + im.skin)
        counts[
            ["train", "val", "test"][s],
            a.get("skin_tone", ""),
            a.get("ita", ""),
            a.get("fitzpatrick", ""),
        ] += 1
    summary, peak = traced_peak(lambda: write._skin_tones(curated))
    assert summary == skin_tone_counts(counts) and summary["median_ita"] == 22.9
    assert peak / n < 15, f"{peak / n:.0f} bytes an image"
