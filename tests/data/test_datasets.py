"""Datasets with metadata: HAM10000, ISIC 2019, ISIC 2020 and --labels-csv, read through the registry;
classes by the documented diagnosis map; lesions and patients never split."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from skincls.cli import main
from skincls.data import download
from skincls.data.fetch import fetch
from skincls.data.metadata import DEFAULT_BINARY_MAP, binary_map, normalise_diagnosis
from skincls.data.registry import get_dataset, list_datasets
from skincls.data.splits import load_manifest
from skincls.errors import DataError

from .dermo import (
    across,
    ham_archive,
    ham_rows,
    isic2019_tree,
    isic2020_tree,
    make_ham,
    zip_tree,
)


@pytest.fixture(scope="module")
def ham(tmp_path_factory) -> Path:
    return make_ham(tmp_path_factory.mktemp("ham") / "ham", n=60)


@pytest.fixture(scope="module")
def ham_zip(ham, tmp_path_factory) -> Path:
    return ham_archive(ham, tmp_path_factory.mktemp("hamzip") / "skin-cancer-mnist-ham10000.zip")


def _dx_by_path(records, rows) -> dict[str, str]:
    dx = {r["image_id"]: r["dx"] for r in rows}
    return {rec.path: dx[Path(rec.path).stem] for rec in records}


# --- HAM10000 --------------------------------------------------------------------------------


def test_ham10000_archive_reads_metadata_not_folders(tmp_path, ham, ham_zip):
    report = fetch(tmp_path / "d", archive=ham_zip, near_dup_distance=-1)
    m, info = report.manifest, report.info
    rows = ham_rows(ham)
    # Not the two "classes" HAM10000_images_part_1 and _part_2 that the folder layout would see.
    assert m.classes == ["benign", "malignant"]
    assert len(m.records) == len(rows) == 60
    assert info.dataset.layout == "ham10000"
    # The lower-case copy of both image folders is taken once and reported.
    assert info.source.ignored_copies == {
        "ham10000_images_part_1": 30,
        "ham10000_images_part_2": 30,
    }
    assert not any("ham10000_images" in r.path for r in m.records)
    for path, dx in _dx_by_path(m.records, rows).items():
        label = next(r.label for r in m.records if r.path == path)
        assert label == DEFAULT_BINARY_MAP[dx]
    lesion = {r["image_id"]: r["lesion_id"] for r in rows}
    assert all(r.lesion_id == lesion[Path(r.path).stem] for r in m.records)
    assert info.labels.task == "binary" and info.labels.map == DEFAULT_BINARY_MAP
    # Every lesion and patient sits in one split, and the report says so.
    assert across(m.records, lambda r: r.lesion_id) == 0
    assert across(m.records, lambda r: r.patient_id) == 0
    assert info.groups.groups_across_splits == 0
    assert info.groups.n_groups == len({r.patient_id for r in m.records})
    assert all(set(s.values()) != {0} for s in m.counts().values())  # both classes everywhere
    # The manifest keeps the group column for every later step.
    with (tmp_path / "d" / "manifest.csv").open() as fh:
        header = next(csv.reader(fh))
    assert {"group", "lesion_id", "patient_id"} <= set(header)
    again = load_manifest(tmp_path / "d")
    assert [r.group for r in again.records] == [r.group for r in m.records]
    assert all(r.group.startswith("patient:") for r in again.records)


def test_binary_map_change_changes_exactly_the_mapped_diagnoses(tmp_path, ham, ham_zip):
    default = fetch(tmp_path / "a", archive=ham_zip, near_dup_distance=-1).manifest
    mel_only = fetch(tmp_path / "b", archive=ham_zip, near_dup_distance=-1, malignant=["MEL"])
    dx = _dx_by_path(default.records, ham_rows(ham))
    before = {r.path: r.label for r in default.records}
    after = {r.path: r.label for r in mel_only.manifest.records}
    changed = {dx[p] for p in before if before[p] != after[p]}
    assert changed == {"bcc", "akiec"}  # malignant by default, benign when only mel is
    assert all(after[p] == ("malignant" if dx[p] == "mel" else "benign") for p in after)
    recorded = mel_only.info.labels.map
    assert recorded == binary_map(["mel"]) and recorded["bcc"] == "benign"
    assert recorded != default.info.labels.map
    assert normalise_diagnosis("AK") == "akiec" and normalise_diagnosis(" Nevus ") == "nv"
    with pytest.raises(DataError, match="unknown diagnosis codes"):
        fetch(tmp_path / "c", archive=ham_zip, malignant=["melanomma"])
    with pytest.raises(DataError, match="binary task"):
        fetch(tmp_path / "c", archive=ham_zip, task="multiclass", malignant=["mel"])


def test_multiclass_task_has_one_class_per_diagnosis(tmp_path, ham, ham_zip):
    report = fetch(tmp_path / "d", archive=ham_zip, task="multiclass", near_dup_distance=-1)
    dx = _dx_by_path(report.manifest.records, ham_rows(ham))
    assert report.manifest.classes == sorted(set(dx.values()))
    assert all(r.label == dx[r.path] for r in report.manifest.records)
    assert report.info.labels.task == "multiclass"


def test_ham10000_lesion_with_two_diagnoses_is_a_warning_with_its_id(tmp_path, ham):
    src = shutil.copytree(ham, tmp_path / "ham")
    rows = ham_rows(src)
    lesion = next(r["lesion_id"] for r in rows if r["dx"] == "nv" and sum(
        o["lesion_id"] == r["lesion_id"] for o in rows) > 1)  # fmt: skip
    first = next(r for r in rows if r["lesion_id"] == lesion)
    first["dx"] = "mel"
    with (src / "HAM10000_metadata.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    r = CliRunner().invoke(
        main, ["fetch", "--source-dir", str(src), "--data-dir", str(tmp_path / "d"), "--quiet"]
    )
    assert r.exit_code == 0, r.output
    n = sum(o["lesion_id"] == lesion for o in rows)
    assert (
        "warning: 1 lesion has photos with different diagnoses (1 of them in different classes), "
        f"e.g. {lesion} (mel 1, nv {n - 1})"
    ) in r.output
    meta = load_manifest(tmp_path / "d").info.metadata
    assert meta.lesion_conflict_examples == {lesion: {"mel": 1, "nv": n - 1}}
    assert fetch(tmp_path / "e", source_dir=ham).info.metadata.lesions_with_several_diagnoses == 0


# --- ISIC 2019 and 2020 ----------------------------------------------------------------------


def test_isic2019_archive_one_hot_and_lesion_ids(tmp_path, ham):
    tree = isic2019_tree(ham, tmp_path / "isic2019")
    zpath = zip_tree(tree, tmp_path / "isic-2019.zip")
    report = fetch(tmp_path / "d", archive=zpath, task="multiclass", near_dup_distance=-1)
    m, meta = report.manifest, report.info.metadata
    rows = ham_rows(ham)
    assert report.info.dataset.layout == "isic2019"
    assert len(m.records) == len(rows)
    # AK is HAM10000's akiec; every other column maps to its code.
    dx = _dx_by_path(m.records, rows)
    assert all(r.label == dx[r.path] for r in m.records)
    assert meta.rows_without_image == 1 and meta.rows_without_image_examples == ["ISIC_9999999"]
    assert [b[0] for b in meta.rows_unreadable] == ["ISIC_9999998"]
    first = next(r for r in m.records if Path(r.path).stem == rows[0]["image_id"])
    assert first.lesion_id == ""  # no lesion id recorded: its own group (or its duplicates')
    assert sum(1 for r in m.records if r.lesion_id) == len(rows) - 1
    assert across(m.records, lambda r: r.lesion_id) == 0


@pytest.mark.parametrize("competition", [True, False])
def test_isic2020_patients_and_own_benign_malignant(tmp_path, ham, competition):
    tree = isic2020_tree(ham, tmp_path / "isic2020", competition=competition)
    # The competition's files are named by --dataset; cdeotte's copy is detected from train.csv.
    name = "siim-isic-melanoma-classification" if competition else None
    report = fetch(tmp_path / "d", source_dir=tree, dataset=name, near_dup_distance=-1)
    m = report.manifest
    rows = {r["image_id"]: r for r in ham_rows(ham)}
    assert len(m.records) == len(rows)
    # "unknown" diagnoses (here bcc, akiec, vasc, df) take the file's own benign_malignant.
    for r in m.records:
        dx = rows[Path(r.path).stem]["dx"]
        assert r.label == ("malignant" if dx in ("mel", "bcc", "akiec") else "benign")
        assert r.patient_id == rows[Path(r.path).stem]["patient_id"] and not r.lesion_id
    assert across(m.records, lambda r: r.patient_id) == 0
    skipped = dict(report.skipped)
    test_image = ("jpeg/test" if competition else "test") + "/ISIC_7777777.jpg"
    assert skipped[test_image].startswith("not listed in")


def test_competition_name_without_files_says_how_to_get_them(tmp_path):
    with pytest.raises(DataError, match="competition, not a dataset") as err:
        fetch(tmp_path / "d", dataset="siim-isic-melanoma-classification", cache_dir=tmp_path)
    # Python names the call to make (the CLI its command: tests/cli/test_option_names.py)
    assert "`skincls.fetch(source_dir=DIR, dataset='siim-isic-melanoma-classification')`" in str(
        err.value
    )
    assert "--" not in str(err.value)


# --- any dataset: --labels-csv ---------------------------------------------------------------


def test_labels_csv_with_own_columns_and_groups(tmp_path, ham):
    src = tmp_path / "flat"
    src.mkdir()
    rows = ham_rows(ham)
    files = {p.stem: p for p in ham.rglob("*.jpg")}
    with (tmp_path / "labels.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "finding", "case"])
        for k, r in enumerate(rows):
            name = f"img{k:03d}.jpg"
            shutil.copy(files[r["image_id"]], src / name)
            w.writerow([name, "lesion" if r["dx"] == "nv" else "other", r["patient_id"]])
    r = CliRunner().invoke(
        main,
        ["fetch", "--source-dir", str(src), "--data-dir", str(tmp_path / "d"), "--quiet",
         "--labels-csv", str(tmp_path / "labels.csv"), "--image-column", "file",
         "--label-column", "finding", "--group-column", "case"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    m = load_manifest(tmp_path / "d")
    assert m.classes == ["lesion", "other"] and len(m.records) == len(rows)
    assert all(rec.group.startswith("case:") for rec in m.records)
    assert across(m.records, lambda rec: rec.group) == 0
    assert len({rec.group for rec in m.records}) == len({r["patient_id"] for r in rows})
    assert "groups kept within one split" in r.output and "0 groups across splits" in r.output
    bad = CliRunner().invoke(
        main,
        ["fetch", "--source-dir", str(src), "--data-dir", str(tmp_path / "e"),
         "--labels-csv", str(tmp_path / "labels.csv")],
    )  # fmt: skip
    assert bad.exit_code != 0 and "Traceback" not in bad.output
    assert "lacks the column(s) ['image', 'label']" in bad.output


# --- registry, Kaggle and misuse -------------------------------------------------------------


def test_registry_names_aliases_and_unknown():
    names = [s.name for s in list_datasets()]
    assert names[0] == download.DEFAULT_DATASET and "kmader/skin-cancer-mnist-ham10000" in names
    assert get_dataset("HAM10000").name == "kmader/skin-cancer-mnist-ham10000"
    assert get_dataset("isic2019").layout == "isic2019"
    assert get_dataset("someone/other-data").layout == "auto"
    with pytest.raises(DataError, match="unknown dataset"):
        get_dataset("ham1000")


class _FakeKaggle:
    def __init__(self, archive: Path):
        self.archive, self.asked = archive, []

    def download(self, dataset, dest, progress=None):
        self.asked.append(dataset)
        return Path(shutil.copy(self.archive, Path(dest) / "archive.zip"))


def test_kaggle_download_of_ham10000_uses_its_parser(tmp_path, ham_zip):
    client = _FakeKaggle(ham_zip)
    report = fetch(tmp_path / "d", dataset="ham10000", client=client, cache_dir=tmp_path / "c")
    assert client.asked == ["kmader/skin-cancer-mnist-ham10000"]
    assert report.info.source.dataset == "kmader/skin-cancer-mnist-ham10000"
    assert report.info.dataset.name == "kmader/skin-cancer-mnist-ham10000"
    assert report.manifest.classes == ["benign", "malignant"]


def test_ham10000_without_credentials_gives_the_default_datasets_message(tmp_path, monkeypatch):
    def no_credentials():
        print("Kaggle's long help text… kaggle auth login")
        raise SystemExit(1)

    monkeypatch.setattr(download, "_import_kaggle", no_credentials)
    outputs = []
    for extra in ([], ["--dataset", "kmader/skin-cancer-mnist-ham10000"]):
        r = CliRunner().invoke(
            main,
            [
                "fetch",
                "--data-dir",
                str(tmp_path / "d"),
                "--cache-dir",
                str(tmp_path / "c"),
                *extra,
            ],
        )
        assert r.exit_code != 0 and "Traceback" not in r.output
        assert r.output.count("Error:") == 1 and "kaggle auth login" not in r.output
        outputs.append(r.output)
    default, ham = outputs
    assert "KAGGLE_API_TOKEN" in ham and "no usable Kaggle credentials" in ham
    assert ham.replace("kmader/skin-cancer-mnist-ham10000", download.DEFAULT_DATASET) == default


def test_layout_given_but_not_found_and_task_on_class_folders(tmp_path):
    folders = tmp_path / "folders"
    for label in ("benign", "malignant"):
        (folders / label).mkdir(parents=True)
    with pytest.raises(DataError, match=r"no HAM10000_metadata\.csv in the source"):
        fetch(tmp_path / "d", source_dir=folders, dataset="ham10000")
    with pytest.raises(DataError, match="class-folder layout"):
        fetch(tmp_path / "d", source_dir=folders, task="binary")


@pytest.mark.slow
def test_synthetic_ham10000_like_fetch_and_fingerprint(tmp_path):
    a = fetch(tmp_path / "d", synthetic=40, dataset="ham10000", seed=2)
    assert a.info.dataset.layout == "ham10000" and a.info.metadata.rows == 40
    assert not list((tmp_path / "d" / "images").glob("*.csv"))  # images only
    assert across(a.manifest.records, lambda r: r.lesion_id) == 0
    assert not fetch(tmp_path / "d", synthetic=40, dataset="ham10000", seed=2).changed
    b = fetch(tmp_path / "d", synthetic=40, dataset="ham10000", seed=2, task="multiclass")
    assert b.changed and len(b.manifest.classes) > 2  # the task is part of the fingerprint
    meta = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert meta["labels"]["task"] == "multiclass"
