"""Clinical-photo datasets for external validation: PAD-UFES-20, DDI and Fitzpatrick17k, each read in
its real layout through the registry, with its label map recorded and nothing dropped silently."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from skincls.cli import main
from skincls.data.clinical import fitzpatrick_type
from skincls.data.fetch import fetch
from skincls.data.registry import get_dataset
from skincls.errors import DataError

from .clinic import TO_DDI, TO_F17K, TO_PAD, ddi_tree, fitzpatrick17k_tree, pad_ufes20_tree
from .dermo import across, ham_rows, make_ham


@pytest.fixture(scope="module")
def ham(tmp_path_factory) -> Path:
    return make_ham(tmp_path_factory.mktemp("ham") / "ham", n=60)


@pytest.fixture(scope="module")
def pad(ham, tmp_path_factory) -> Path:
    return pad_ufes20_tree(ham, tmp_path_factory.mktemp("pad") / "pad-ufes-20")


def _by_stem(records) -> dict:
    return {Path(r.path).stem: r for r in records}


def test_pad_ufes20_is_detected_with_codes_lesions_patients_and_attributes(tmp_path, ham, pad):
    report = fetch(tmp_path / "d", source_dir=pad, task="multiclass", near_dup_distance=-1)
    m, info = report.manifest, report.info
    rows = ham_rows(ham)
    assert info.dataset.layout == "pad_ufes20"  # detected from metadata.csv's columns
    assert len(m.records) == len(rows) - 1  # the first row's image is missing, and counted
    assert info.metadata.rows_without_image == 1
    codes = {"NEV": "nv", "MEL": "mel", "SEK": "bkl", "BCC": "bcc", "ACK": "akiec", "SCC": "scc"}
    assert m.classes == sorted(codes.values())
    by_stem = _by_stem(m.records)
    for k, r in enumerate(rows[1:], start=1):
        rec = next(v for s, v in by_stem.items() if s.endswith(f"_{k}"))
        assert rec.label == codes[TO_PAD[r["dx"]]]
        assert rec.patient_id == "PAT_" + r["patient_id"].split("_")[-1].lstrip("0")
        assert rec.lesion_id.startswith(rec.patient_id + "/")
        attrs = dict(rec.attributes)
        assert attrs["fitzpatrick"] == ["I", "II", "III", "IV", "V", "VI"][k % 6]
        assert attrs["sex"] == r["sex"] and attrs["site"] == "neck"
        assert attrs["dx_type"] == ("histo" if rec.label in ("bcc", "scc", "mel") else "consensus")
        assert attrs["smoke"] == "False" and attrs["diameter_1"] == "6.0"
    assert across(m.records, lambda r: r.patient_id) == 0
    assert info.metadata.label_map["ACK"] == "akiec" and info.metadata.label_map["SEK"] == "bkl"
    assert any("ACK" in n for n in info.metadata.label_notes)
    saved = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert saved["metadata"]["label_map"]["NEV"] == "nv"
    # The recorded Fitzpatrick types are summed up beside the ITA estimate (the model card's).
    fitz = Counter(r.column("fitzpatrick") for r in m.records)
    assert saved["skin_tone"]["fitzpatrick"] == dict(sorted(fitz.items())) and len(fitz) == 6


def test_pad_ufes20_binary_counts_ack_by_the_map_and_malignant_changes_it(tmp_path, pad):
    default = fetch(tmp_path / "a", source_dir=pad, dataset="pad-ufes-20", near_dup_distance=-1)
    own = fetch(tmp_path / "b", source_dir=pad, dataset="pad_ufes_20", near_dup_distance=-1,
                malignant=["bcc", "mel", "scc"])  # fmt: skip
    assert default.info.dataset.name == "pad-ufes-20"
    dx = {r.path: r for r in default.manifest.records}
    ack = [p for p, r in dx.items() if dict(r.attributes)["dx_type"] == "consensus"
           and r.label == "malignant"]  # fmt: skip
    assert ack  # ACK (akiec) is malignant by the default map …
    after = {r.path: r.label for r in own.manifest.records}
    assert all(after[p] == "benign" for p in ack)  # … and benign when only bcc, mel, scc are
    assert own.info.labels.map["akiec"] == "benign"


def test_ddi_takes_its_own_malignant_label_outside_the_map_and_counts_disagreements(tmp_path, ham):
    tree = ddi_tree(ham, tmp_path / "ddi")
    report = fetch(tmp_path / "d", source_dir=tree, near_dup_distance=-1)
    m, meta = report.manifest, report.info.metadata
    rows = ham_rows(ham)
    assert report.info.dataset.layout == "ddi" and len(m.records) == len(rows)
    for k, r in enumerate(rows):
        rec = _by_stem(m.records)[f"{k + 1:06d}"]
        disease, own = TO_DDI[r["dx"]]
        # Diseases outside the map (verruca, mycosis fungoides) take DDI's own column; AK follows
        # the map (malignant), and the disagreement with DDI's "benign" is counted.
        expected = "malignant" if (own or disease == "actinic-keratosis") else "benign"
        assert rec.label == expected
        assert dict(rec.attributes)["fitzpatrick"] == ["I-II", "III-IV", "V-VI"][k % 3]
        assert not rec.patient_id and not rec.lesion_id
    n_ak = sum(r["dx"] == "akiec" for r in rows)
    assert meta.label_disagreements == {"akiec": n_ak}
    said = CliRunner().invoke(main, ["fetch", "--source-dir", str(tree), "--data-dir",
                                     str(tmp_path / "c"), "--near-dup-distance", "-1"])  # fmt: skip
    assert said.exit_code == 0, said.output
    assert (
        f"warning: {n_ak} images take the binary map's class against the dataset's own "
        f"benign/malignant label (akiec {n_ak}); see label_notes in dataset.json"
    ) in said.output
    assert meta.diagnoses["verruca-vulgaris"] == sum(r["dx"] == "df" for r in rows)
    multi = fetch(tmp_path / "e", source_dir=tree, dataset="ddi", task="multiclass",
                  near_dup_distance=-1)  # fmt: skip
    assert {"mel", "nv", "bkl", "bcc", "akiec", "verruca-vulgaris"} <= set(multi.manifest.classes)


def test_fitzpatrick17k_non_neoplastic_and_wrongly_labelled_are_explicit(tmp_path, ham):
    tree = fitzpatrick17k_tree(ham, tmp_path / "f17k")
    report = fetch(tmp_path / "d", source_dir=tree, dataset="fitzpatrick17k", near_dup_distance=-1)
    m, meta = report.manifest, report.info.metadata
    rows = ham_rows(ham)
    non_neo = [k for k, r in enumerate(rows) if TO_F17K[r["dx"]][1] == "non-neoplastic" and k]
    assert len(m.records) == len(rows) - 1 - len(non_neo)
    assert [b[0] for b in meta.rows_unreadable] == [f"{0:032x}"]  # qc: 3 Wrongly labelled
    skipped = dict(report.skipped)
    for k in non_neo:
        assert "'psoriasis' is in neither class" in skipped[f"images/{k:032x}.jpg"]
    for rec in m.records:
        k = int(Path(rec.path).stem, 16)
        assert rec.label == TO_F17K[rows[k]["dx"]][1]
        fitz = dict(rec.attributes).get("fitzpatrick")
        assert fitz == (None if (k % 7) < 2 else ["I", "II", "III", "IV", "V", "VI"][k % 7 - 2])
    assert any("non-neoplastic" in n for n in meta.label_notes)
    multi = fetch(tmp_path / "e", source_dir=tree, task="multiclass", near_dup_distance=-1)
    assert "psoriasis" in multi.manifest.classes and "mel" in multi.manifest.classes
    assert multi.info.dataset.layout == "fitzpatrick17k"


def test_registry_entries_say_how_to_get_them(tmp_path):
    for name, layout in (("PAD-UFES-20", "pad_ufes20"), ("ddi", "ddi"),
                         ("fitzpatrick17k", "fitzpatrick17k")):  # fmt: skip
        spec = get_dataset(name)
        assert spec.layout == layout and not spec.kaggle and "source_dir=DIR" in spec.notes
    with pytest.raises(DataError, match=r"cannot be downloaded here.*images are not distributed"):
        fetch(tmp_path / "d", dataset="fitzpatrick17k", cache_dir=tmp_path)
    folders = tmp_path / "folders"
    (folders / "benign").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no ddi_metadata\.csv in the source"):
        fetch(tmp_path / "d", source_dir=folders, dataset="ddi")


def test_fitzpatrick_type_spellings():
    assert [fitzpatrick_type(v) for v in ("3", "3.0", "iv", "-1", "", "2.5", "7")] == [
        "III", "III", "IV", "", "", "", ""]  # fmt: skip
