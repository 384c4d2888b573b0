"""ISIC 2024 (SLICE-3D): read from its HDF5 file in place, classes from `target`, patients grouped."""

from __future__ import annotations

import csv
import gc
import io
import json
import sys
import zipfile
from collections import Counter
from dataclasses import replace
from pathlib import Path, PosixPath, PurePosixPath

import numpy as np
import pytest

from skincls.data import hdf5 as hdf5_module
from skincls.data import parallel
from skincls.data.fetch import fetch
from skincls.data.fetch.records import Curated, VerifiedImage
from skincls.data.images import load_image
from skincls.data.ingest import Candidate, Inspection
from skincls.data.isic2024 import LABEL_RULE, _match_keys
from skincls.data.layouts import _match
from skincls.data.metadata import LabelPolicy, MetaRow
from skincls.data.splits import Record
from skincls.errors import DataError
from tests.data.test_fetch import _lesion
from tests.data.traced import traced_peak

h5py = pytest.importorskip("h5py")

# train-metadata.csv's header as the competition ships it (isic-2024-challenge).
HEADER = [
    "isic_id",
    "target",
    "patient_id",
    "age_approx",
    "sex",
    "anatom_site_general",
    "clin_size_long_diam_mm",
    "image_type",
    "tbp_tile_type",
    "tbp_lv_A",
    "tbp_lv_Aext",
    "tbp_lv_B",
    "tbp_lv_Bext",
    "tbp_lv_C",
    "tbp_lv_Cext",
    "tbp_lv_H",
    "tbp_lv_Hext",
    "tbp_lv_L",
    "tbp_lv_Lext",
    "tbp_lv_areaMM2",
    "tbp_lv_area_perim_ratio",
    "tbp_lv_color_std_mean",
    "tbp_lv_deltaA",
    "tbp_lv_deltaB",
    "tbp_lv_deltaL",
    "tbp_lv_deltaLB",
    "tbp_lv_deltaLBnorm",
    "tbp_lv_eccentricity",
    "tbp_lv_location",
    "tbp_lv_location_simple",
    "tbp_lv_minorAxisMM",
    "tbp_lv_nevi_confidence",
    "tbp_lv_norm_border",
    "tbp_lv_norm_color",
    "tbp_lv_perimeterMM",
    "tbp_lv_radial_color_std_max",
    "tbp_lv_stdL",
    "tbp_lv_stdLExt",
    "tbp_lv_symm_2axis",
    "tbp_lv_symm_2axis_angle",
    "tbp_lv_x",
    "tbp_lv_y",
    "tbp_lv_z",
    "attribution",
    "copyright_license",
    "lesion_id",
    "iddx_full",
    "iddx_1",
    "iddx_2",
    "iddx_3",
    "iddx_4",
    "iddx_5",
    "mel_mitotic_index",
    "mel_thick_mm",
    "tbp_lv_dnn_lesion_confidence",
]
HOSPITALS = ["Memorial Sloan Kettering Cancer Center", "ViDIR Group, Medical University of Vienna",
             "Department of Dermatology, Hospital Clínic de Barcelona"]  # fmt: skip


def _jpeg(seed: int, malignant: bool) -> bytes:
    buf = io.BytesIO()
    _lesion(seed, malignant, size=48).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def isic2024_source(root, n: int = 24, patients: int = 6, jpeg_copy: bool = False):
    """The competition's layout: train-image.hdf5 (JPEG bytes by isic_id) + train-metadata.csv."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    with h5py.File(root / "train-image.hdf5", "w") as f:
        for i in range(n):
            isic_id, target = f"ISIC_{15670 + i * 7:07d}", int(i % 4 == 0)
            data = _jpeg(i, bool(target))
            # Two ways to store bytes: a fixed-length string (the real file's |S) and an opaque blob.
            f.create_dataset(isic_id, data=np.void(data) if i % 2 else np.bytes_(data))
            if jpeg_copy:
                (root / "train-image" / "image").mkdir(parents=True, exist_ok=True)
                (root / "train-image" / "image" / f"{isic_id}.jpg").write_bytes(data)
            row = dict.fromkeys(HEADER, "")
            row.update(isic_id=isic_id, target=str(target), patient_id=f"IP_{i % patients:07d}",
                       age_approx=str(40 + 5 * (i % 7)), sex=("male", "female")[i % 2],
                       anatom_site_general="posterior torso", image_type="TBP tile: close-up",
                       tbp_lv_A="20.5", attribution=HOSPITALS[i % 3],
                       copyright_license="CC-BY-NC", iddx_full="Benign",
                       iddx_1=("Benign", "Malignant")[target])  # fmt: skip
            rows.append(row)
    with open(root / "train-metadata.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, HEADER)
        w.writeheader()
        w.writerows(rows)
    return root


def test_isic2024_is_read_from_its_hdf5_file_in_place(tmp_path):
    src = isic2024_source(tmp_path / "src")
    report = fetch(tmp_path / "d", source_dir=src, dataset="isic2024", workers=1)
    records = report.manifest.records
    assert len(records) == 24
    assert all(r.path.startswith("images/train-image.hdf5/ISIC_") for r in records)
    # One file in images/: the HDF5 as shipped; the CSV was read, not kept; no image unpacked.
    assert [p.name for p in (tmp_path / "d" / "images").iterdir()] == ["train-image.hdf5"]
    labels = {r.path.split("/")[-1][:-4]: r.label for r in records}
    assert sum(v == "malignant" for v in labels.values()) == 6
    assert labels["ISIC_0015670"] == "malignant" and labels["ISIC_0015677"] == "benign"
    splits_per_patient: dict[str, set] = {}
    for r in records:
        splits_per_patient.setdefault(r.patient_id, set()).add(r.split)
        assert r.column("source") in HOSPITALS and r.column("site") == "posterior torso"
    assert all(len(s) == 1 for s in splits_per_patient.values())  # patients within one split
    info = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert info["labels"]["map"] == LABEL_RULE == {"target 1": "malignant", "target 0": "benign"}
    assert info["dataset"]["layout"] == info["metadata"]["layout"] == "isic2024"
    assert info["groups"]["groups_by_kind"]["patient"] >= 1
    # Every later stage reads the image from the HDF5 file.
    assert load_image(tmp_path / "d" / records[0].path).size == (48, 48)
    again = fetch(tmp_path / "d", source_dir=src, dataset="isic2024", workers=1)
    assert not again.changed


def test_isic2024_archive_is_detected_and_its_jpeg_copy_ignored(tmp_path, monkeypatch):
    src = isic2024_source(tmp_path / "src", n=12, jpeg_copy=True)
    (src / "sample_submission.csv").write_text("isic_id,target\n")
    archive = tmp_path / "isic-2024-challenge.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(src.rglob("*")):
            zf.write(p, p.relative_to(src).as_posix())
    serial = fetch(tmp_path / "one", archive=archive, workers=1)  # layout detected
    assert serial.info.metadata.layout == "isic2024" and len(serial.manifest.records) == 12
    assert serial.info.source.ignored_copies == {"train-image": 12}
    assert ("sample_submission.csv", "outside the split/class/file layout") in serial.skipped
    monkeypatch.setattr(parallel, "_POOL_FROM", 0)  # workers open the HDF5 file themselves
    fetch(tmp_path / "two", archive=archive, workers=2)
    one, two = ((tmp_path / d / "manifest.csv").read_text() for d in ("one", "two"))
    assert one == two


def test_isic2024_without_h5py_names_the_extra(tmp_path, monkeypatch):
    src = isic2024_source(tmp_path / "src", n=4)
    monkeypatch.setitem(sys.modules, "h5py", None)  # as if not installed
    monkeypatch.setattr(hdf5_module, "_OPEN", {})
    with pytest.raises(
        DataError, match=r"needs h5py, the hdf5 extra: pip install 'skincls\[hdf5\]'"
    ):
        fetch(tmp_path / "d", source_dir=src, dataset="isic2024", workers=1)


def test_isic2024_refuses_other_tasks_and_reports_bad_targets(tmp_path):
    src = isic2024_source(tmp_path / "src", n=8)
    with pytest.raises(
        DataError, match=r"labels are its target column .* leave out task='multiclass'"
    ):
        fetch(tmp_path / "d", source_dir=src, dataset="isic2024", task="multiclass", workers=1)
    with pytest.raises(DataError, match=r"malignant"):
        fetch(tmp_path / "d", source_dir=src, dataset="isic2024", malignant=["mel"], workers=1)
    text = (src / "train-metadata.csv").read_text().splitlines()
    text[1] = text[1].replace(",1,IP_", ",maybe,IP_", 1)
    (src / "train-metadata.csv").write_text("\n".join(text) + "\n")
    report = fetch(tmp_path / "d", source_dir=src, dataset="isic2024", workers=1)
    assert len(report.manifest.records) == 7
    bad = report.info.metadata.rows_unreadable
    assert [b[0] for b in bad] == ["ISIC_0015670"] and "neither 0 nor 1" in bad[0][1]


def test_isic2024_source_without_the_hdf5_file(tmp_path):
    src = isic2024_source(tmp_path / "src", n=4)
    (src / "train-image.hdf5").unlink()
    with pytest.raises(DataError, match=r"no train-metadata.csv with train-image.hdf5 beside it"):
        fetch(tmp_path / "d", source_dir=src, dataset="isic2024", workers=1)


def test_an_hdf5_file_replaced_at_the_same_path_is_read_anew(tmp_path):
    # The process caches open HDF5 files; one replaced at the same path (fetch run again in a
    # notebook) must be read as it is now, not through the old handle to the deleted file.
    path = tmp_path / "images.hdf5"
    for value in (b"first", b"second, longer"):
        tmp = tmp_path / "new.hdf5"
        with h5py.File(tmp, "w") as f:
            f.create_dataset("ISIC_1", data=np.bytes_(value))
        tmp.replace(path)
        assert hdf5_module.read_member(path, "ISIC_1") == value


def test_hdf5_key_array_holds_the_keys_h5py_lists(tmp_path):
    # One array of bytes (no object per key), sorted as the text sorts; non-ASCII names as their
    # UTF-8 bytes.
    path = tmp_path / "images.hdf5"
    with h5py.File(path, "w") as f:
        for key in ("b", "ISIC_10", "a-b", "é", "a", "ISIC_9"):
            f.create_dataset(key, data=np.bytes_(key.encode()))
    keys = hdf5_module.hdf5_key_array(path)
    with h5py.File(path, "r") as f:
        listed = sorted(f.keys())
    assert keys.dtype == "S7" and [hdf5_module.key_text(k) for k in keys] == listed == [
        "ISIC_10",
        "ISIC_9",
        "a",
        "a-b",
        "b",
        "é",
    ]


def test_hdf5_key_array_lists_with_a_small_metadata_cache(tmp_path, monkeypatch):
    # HDF5's metadata cache grows to 32 MiB with the group (10 MiB more at 160,000 keys): the
    # listing reads each part once, so its file holds the cache at 1 MiB.
    path = tmp_path / "images.hdf5"
    with h5py.File(path, "w") as f:
        for key in ("ISIC_1", "ISIC_2"):
            f.create_dataset(key, data=np.bytes_(key.encode()))
    opened, real_open, real_keys, seen = [], hdf5_module._open, hdf5_module._key_array, []
    monkeypatch.setattr(hdf5_module, "_open", lambda p: opened.append(real_open(p)) or opened[-1])

    def key_array(links):
        seen.append(opened[-1].id.get_mdc_config().max_size)
        return real_keys(links)

    monkeypatch.setattr(hdf5_module, "_key_array", key_array)
    assert hdf5_module.hdf5_key_array(path).tolist() == [b"ISIC_1", b"ISIC_2"]
    assert seen == [1 << 20]


def _per_image_objects(n: int) -> Counter:
    """Live objects of the kinds fetch once kept one of (or more) per image, by type; and lists
    and dicts of `n` items: an entry per image (`list of n`, `dict of n`)."""
    kinds = {MetaRow, Record, VerifiedImage, Candidate, Inspection, PurePosixPath, PosixPath}
    gc.collect()
    objects = gc.get_objects()
    found = Counter(type(o).__name__ for o in objects if type(o) in kinds)
    found["list of n"] = sum(1 for o in objects if type(o) is list and len(o) == n)
    found["dict of n"] = sum(1 for o in objects if type(o) is dict and len(o) == n)
    return found


def test_fetch_holds_no_object_per_image_past_verification(tmp_path, monkeypatch):
    # ISIC 2024 has 401,059 images: matching its rows to the HDF5 keys and verifying keep arrays
    # (keys' bytes, row codes), past verification fetch keeps columns (hashes, SHA-256, pooled
    # rows) and curation arrays of codes, never an object or a list or dict entry per image;
    # the manifest is written row by row, and no row is made before it is written.
    n = 400  # 84 distinct (patient, age, sex, hospital) rows
    src = isic2024_source(tmp_path / "src", n=n, patients=4)
    stages = sys.modules["skincls.data.fetch"]
    write = sys.modules["skincls.data.fetch.write"]
    seen, made = {}, Counter()

    def spy(module, name, count=True, returned=True):
        real = getattr(module, name)

        def counted(*args, **kwargs):
            seen[f"{name} called"] = _per_image_objects(n) if count else None
            made[f"before {name}"] = made["records"]
            out = real(*args, **kwargs)
            if returned:  # (verify's argument still holds the staged layout's rows: 84)
                seen[f"{name} returned"] = _per_image_objects(n) if count else None
            return out

        monkeypatch.setattr(module, name, counted)

    real_records = Curated.records

    def records(self):
        for r in real_records(self):
            made["records"] += 1
            yield r

    monkeypatch.setattr(Curated, "records", records)
    spy(sys.modules["skincls.data.isic2024"], "_check_labels")  # rows all matched
    spy(stages, "verify_images", returned=False)  # the matched images, as verification starts
    spy(stages, "curate")
    spy(stages, "write_dataset")
    spy(write, "stream_manifest", count=False)
    before = _per_image_objects(n)
    report = fetch(tmp_path / "d", source_dir=src, dataset="isic2024", workers=1)
    assert report.info.n_kept == n and len(seen) == 9
    for point, counts in seen.items():
        if counts is not None:
            more = counts - before
            assert more.pop("list of n", 0) == 0, (point, "a list with an entry per image")
            assert more.pop("dict of n", 0) == 0, (point, "a dict with an entry per image")
            assert more.total() < n // 4, (point, more)
    assert made["before stream_manifest"] == 0 and made["records"] == 2 * n  # two passes
    assert len(report.manifest.records) == n  # read from the data dir when asked for


def test_fetch_keeps_the_hashes_in_a_file_it_removes_after(tmp_path, monkeypatch):
    # The perceptual hashes (128 bytes an image) are a memory-mapped file in the data dir's
    # .columns.partial while fetch runs, not the process's own memory; the folder goes after,
    # and one a killed fetch left is removed first.
    src = isic2024_source(tmp_path / "src", n=40, patients=2)
    data = tmp_path / "d"
    (data / ".columns.partial").mkdir(parents=True)
    (data / ".columns.partial" / "hashes.npy").write_bytes(b"left by a killed fetch")
    stages = sys.modules["skincls.data.fetch"]
    real, seen = stages.curate, {}

    def curate(table, *args, **kwargs):
        seen["file"] = getattr(table.hashes, "filename", None)
        seen["hashes"] = np.array(table.hashes)
        return real(table, *args, **kwargs)

    monkeypatch.setattr(stages, "curate", curate)
    report = fetch(data, source_dir=src, dataset="isic2024", workers=1)
    assert Path(seen["file"]) == (data / ".columns.partial" / "hashes.npy").resolve()
    assert seen["hashes"].shape == (40, 2, 8) and seen["hashes"].any()
    assert report.info.n_kept == 40 and not (data / ".columns.partial").exists()


def test_fetch_keeps_every_column_of_the_table_in_files(tmp_path, monkeypatch):
    # Past the hashes, the table's SHA-256 (32 bytes an image), codes (16) and paths are files in
    # .columns.partial too, read back memory-mapped: the process keeps the pools alone.
    src = isic2024_source(tmp_path / "src", n=40, patients=2)
    data = tmp_path / "d"
    stages = sys.modules["skincls.data.fetch"]
    real, seen = stages.curate, {}

    def curate(table, *args, **kwargs):
        seen["rel"] = list(table.rel)  # (read: what was buffered is written out)
        folder = data / ".columns.partial"
        seen["files"] = {p.name: p.stat().st_size for p in folder.iterdir()}
        seen["mapped"] = isinstance(table.skin_table()[0], np.memmap)
        return real(table, *args, **kwargs)

    monkeypatch.setattr(stages, "curate", curate)
    report = fetch(data, source_dir=src, dataset="isic2024", workers=1)
    paths = sum(len(rel.encode()) for rel in seen["rel"])
    assert seen["files"] == {
        "hashes.npy": seen["files"]["hashes.npy"],
        "sha256.bin": 32 * 40,
        "codes.bin": 16 * 40,
        "path_ends.bin": 8 * 40,
        "paths.bin": paths,
    }
    assert seen["mapped"] and report.info.n_kept == 40 and not (data / ".columns.partial").exists()


def test_fetch_keeps_each_metadata_row_once(tmp_path, monkeypatch):
    # The distinct metadata rows (one per ~3 images at scale) are one set of objects: those the
    # matching hands on are the ones the verified table's pool holds, not a copy per pool.
    src = isic2024_source(tmp_path / "src", n=60, patients=3)
    stages = sys.modules["skincls.data.fetch"]
    real, seen = stages.verify_images, {}

    def verify_images(staged, *args, **kwargs):
        out = real(staged, *args, **kwargs)
        seen["matched"] = {id(r) for r in staged.layout.files.rows}
        seen["kept"] = list(out.table.pools["row"].values)
        return out

    monkeypatch.setattr(stages, "verify_images", verify_images)
    report = fetch(tmp_path / "d", source_dir=src, dataset="isic2024", workers=1)
    assert report.info.n_kept == 60 and len(seen["kept"]) > 1
    assert [id(r) in seen["matched"] for r in seen["kept"]] == [True] * len(seen["kept"])
    assert {(r.diagnosis, r.malignant) for r in seen["kept"]} == {("", None)}


def test_isic2024_keys_are_matched_as_the_generic_matcher_matches_paths():
    # _match_keys is layouts._match for one HDF5 file's keys: the same files in the same order,
    # rows, classes, skips and summary. Keys sort differently from their paths ("a-b" < "a"
    # as files: "a-b.jpg" < "a.jpg"); rows repeat, name no image, or have no class.
    policy = LabelPolicy()
    row = [MetaRow(k, "unk", patient_id="P1", malignant=k != "b") for k in ("a", "a-b", "b", "c")]
    rows = [row[0], row[1], row[0], row[2], MetaRow("gone", "unk"), row[3], MetaRow("x", "zz")]
    rows.append(MetaRow("c\0", "unk"))  # a key padded with NUL bytes is no key
    keys = ["a", "a-b", "c", "d", "x"]  # d is in no row; x has no class
    array = np.array([k.encode() for k in keys])  # as hdf5_key_array gives them: sorted bytes
    new = _match_keys("train-image.hdf5", rows, [("e", "bad")], array, policy, "m.csv")
    paths = [PurePosixPath("train-image.hdf5", f"{k}.jpg") for k in keys]
    old = _match(PurePosixPath(), rows, [("e", "bad")], paths, {}, policy, ["m.csv"], False)
    assert list(new.files) == old.files == [paths[1], paths[0], paths[2]]
    # (their rows as the verified table keeps them: `MetaRow.grouping`)
    assert [replace(c, row=c.row.grouping()) for c in old.candidates()] == list(new.candidates())
    assert (new.skipped, new.summary) == (old.skipped, old.summary)
    assert new.summary["rows_repeating_an_image"] == 1 and new.summary["rows_without_image"] == 3
    conflict = [*rows, MetaRow("a", "unk", patient_id="P2")]
    with pytest.raises(DataError, match=r"m.csv describes image\(s\) 'a' twice, differently"):
        _match_keys("train-image.hdf5", conflict, [], array, policy, "m.csv")


def test_isic2024_summary_counts_lesions_as_the_generic_matcher():
    # The summary counts each distinct row once, with its number of images: the same diagnoses,
    # classes and lesions with several diagnoses or classes as counted image by image.
    spec = [("a", "nev", "L1", False), ("b", "mel", "L1", True), ("c", "nev", "L2", False)]
    spec += [("d", "nev", "L2", False), ("e", "bcc", "", True), ("f", "nev", "L3", False)]
    rows = [MetaRow(k, dx, lesion_id=les, patient_id="P", malignant=m) for k, dx, les, m in spec]
    array = np.array([k.encode() for k, *_ in spec])
    new = _match_keys("train-image.hdf5", rows, [], array, LabelPolicy(), "m.csv")
    paths = [PurePosixPath("train-image.hdf5", f"{k}.jpg") for k, *_ in spec]
    old = _match(PurePosixPath(), rows, [], paths, {}, LabelPolicy(), ["m.csv"], False)
    assert new.summary == old.summary
    assert new.summary["diagnoses"] == {"bcc": 1, "mel": 1, "nev": 4}
    assert new.summary["lesions_with_several_diagnoses"] == 1
    assert new.summary["lesions_with_several_classes"] == 1
    assert new.summary["lesion_conflict_examples"] == {"L1": {"mel": 1, "nev": 1}}


def test_isic2024_matching_holds_a_few_bytes_per_key():
    # ISIC 2024 has 401,059 keys: matching keeps each key's bytes, its row's code and its index;
    # the checks, the paths' order and the summary look at a small fixed share of keys at a
    # time and count rows by code: no Python int, path or count entry for every key.
    n = 20_000
    keys = np.array([f"ISIC_{i:07d}".encode() for i in range(n)])

    def rows():
        for i in range(n):
            yield MetaRow(f"ISIC_{i:07d}", "unk", patient_id=f"P{i % 50}", malignant=i % 7 == 0)

    layout, peak = traced_peak(
        lambda: _match_keys("train-image.hdf5", rows(), [], keys, LabelPolicy(), "m.csv")
    )
    assert len(layout.files) == n and layout.files[n - 1].name == f"ISIC_{n - 1:07d}.jpg"
    assert layout.summary["classes"] == {"benign": n - 2858, "malignant": 2858}
    assert peak / n < 40, f"{peak / n:.0f} bytes a key"  # 26; 70 before


def test_fetch_gives_the_freed_heap_back_before_curation_and_writing(tmp_path, monkeypatch):
    # glibc keeps freed pages (the listing's, verification's, curation's): the next stage's peak
    # would come on top.
    src = isic2024_source(tmp_path / "src", n=12, patients=2)
    stages = sys.modules["skincls.data.fetch"]
    calls = []
    monkeypatch.setattr(stages, "_give_back_freed_memory", lambda: calls.append("trim"))

    def logged(name, real):
        def stage(*args, **kwargs):
            calls.append(name)
            return real(*args, **kwargs)

        return stage

    for name in ("curate", "write_dataset"):
        monkeypatch.setattr(stages, name, logged(name, getattr(stages, name)))
    fetch(tmp_path / "d", source_dir=src, dataset="isic2024", workers=1)
    assert calls == ["trim", "curate", "trim", "write_dataset"]
    stages._give_back_freed_memory()  # the real one: returns, whatever the C library
