"""Evaluate and the checkpoint file: written only when asked, announced, never over a newer version;
a worse calibration is not kept; images the model was trained on are refused or flagged."""

from __future__ import annotations

import csv
import json
import os
import shutil

import pytest
import torch
from click.testing import CliRunner

from skincls.cli import main
from skincls.data.provenance import is_training_data, training_record
from skincls.data.splits import load_manifest
from skincls.errors import CheckpointError, ConfigError, DataError
from skincls.evaluation.evaluator import Evaluator
from skincls.evaluation.modelcard import render_model_card
from skincls.evaluation.run import evaluate_checkpoint
from skincls.models.checkpoint import load_checkpoint, save_checkpoint, update_checkpoint
from skincls.models.classifier import create_model
from tests.conftest import lock_held_elsewhere

FAST = ["--bootstrap", "0", "--device", "cpu"]


def _evaluate(ckpt, data, *args):
    return CliRunner().invoke(main, ["evaluate", str(ckpt), "--data-dir", str(data), *FAST, *args])


@pytest.fixture()
def recorded(ckpt, tiny_data):
    """The test checkpoint, recorded as trained on `tiny_data`'s train and val images."""
    update_checkpoint(ckpt, training_data=training_record(load_manifest(tiny_data)))
    return ckpt


def _retrained(path):
    """What a training run does to best.pt meanwhile: replace it (atomically) with new weights."""
    torch.manual_seed(1)
    model = create_model("smallcnn", weights="none", head=(16,), dropout=0.0, freeze="none")
    save_checkpoint(path, model, classes=["benign", "malignant"], epoch=9)
    return path.read_bytes()


def test_evaluate_leaves_the_checkpoint_alone_without_save(ckpt, tiny_data):
    before, mtime = ckpt.read_bytes(), ckpt.stat().st_mtime_ns
    r = _evaluate(ckpt, tiny_data, "--calibrate", "--threshold", "0.3")
    assert r.exit_code == 0, r.output
    assert ckpt.read_bytes() == before and ckpt.stat().st_mtime_ns == mtime
    assert f"not stored: {ckpt} is unchanged; give --save to store" in r.output


def test_save_writes_and_says_what_changed(ckpt, tiny_data):
    r = _evaluate(ckpt, tiny_data, "--threshold", "0.3", "--save")
    assert r.exit_code == 0, r.output
    [line] = [ln for ln in r.output.splitlines() if ln.startswith("updated ")]
    assert line.startswith(f"updated {ckpt}: threshold none → 0.3") and "metrics (test)" in line
    stored = load_checkpoint(ckpt)
    assert stored.threshold == 0.3 and stored.metrics["test"]["threshold"] == 0.3


def test_a_checkpoint_replaced_meanwhile_is_not_written_over(ckpt, tiny_data):
    ev = Evaluator(ckpt, device="cpu")  # reads best.pt ...
    ev.choose_threshold(threshold=0.3)
    report = ev.evaluate(tiny_data, "test", n_bootstrap=0)
    newer = _retrained(ckpt)  # ... training writes a new best.pt ...
    with pytest.raises(CheckpointError, match="changed since it was read"):
        ev.save_to_checkpoint(report)  # ... and the stale copy must not come back
    assert ckpt.read_bytes() == newer


def test_an_in_place_change_is_caught_by_the_content_hash(ckpt, tiny_data):
    loaded = load_checkpoint(ckpt, for_update=True)
    st = ckpt.stat()
    with ckpt.open("r+b") as fh:  # same size, same inode; the old mtime is put back
        fh.seek(st.st_size - 1)
        last = fh.read(1)
        fh.seek(st.st_size - 1)
        fh.write(bytes([last[0] ^ 1]))
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns))
    changed = ckpt.read_bytes()
    with pytest.raises(CheckpointError, match=r"\(sha256 differ"):
        update_checkpoint(loaded, threshold=0.2)
    assert ckpt.read_bytes() == changed


def test_save_is_refused_while_a_training_run_holds_the_folder(ckpt, tiny_data):
    before = ckpt.read_bytes()
    with lock_held_elsewhere(ckpt.parent, "skincls train") as pid:
        r = _evaluate(ckpt, tiny_data, "--threshold", "0.3", "--save")
    assert r.exit_code != 0 and "Traceback" not in r.output
    [line] = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert f"pid {pid}" in line and "skincls train" in line and "wait for it to finish" in line
    assert ckpt.read_bytes() == before


def test_a_calibration_that_makes_val_worse_is_discarded_unless_asked(ckpt, tiny_data, monkeypatch):
    # Temperature 0.01 makes an untrained model certain of every answer: far worse NLL and ECE.
    monkeypatch.setattr("skincls.evaluation.calibration.fit_temperature", lambda *a: 0.01)
    r = _evaluate(ckpt, tiny_data, "--calibrate", "--save")
    assert r.exit_code == 0, r.output
    [line] = [ln for ln in r.output.splitlines() if ln.startswith("calibration made val")]
    assert "NLL" in line and "ECE" in line and "(worse)" in line
    assert "temperature 0.010 discarded, keeping 1.000 (give --keep-worse-calibration" in line
    stored = load_checkpoint(ckpt)
    assert stored.temperature == 1.0 and "calibration" not in stored.data

    report = evaluate_checkpoint(
        ckpt, tiny_data, calibrate=True, save=True, keep_worse_calibration=True, n_bootstrap=0
    )
    assert report.calibration.kept and report.calibration.worse == ["NLL", "ECE"]
    assert load_checkpoint(ckpt).temperature == 0.01


def test_splits_seen_in_training_are_flagged_in_output_report_and_card(
    recorded, tiny_data, tmp_path
):
    n_train = len(load_manifest(tiny_data).select("train"))
    card = tmp_path / "card.md"
    r = _evaluate(recorded, tiny_data, "--split", "train", "--model-card", str(card))
    assert r.exit_code == 0, r.output
    warning = (
        f"WARNING: {n_train} of the {n_train} train images were seen in training ({n_train} as "
        "training images, matched by content hash): these numbers are not a held-out estimate"
    )
    assert warning in r.output.replace("\n", " ")
    assert "**Warning: not a held-out estimate.**" in card.read_text()

    r = _evaluate(recorded, tiny_data, "--split", "val", "--json")
    report = json.loads(r.stdout)["training_overlap"]
    assert report["in_val"] == report["n_images"] > 0 and report["in_train"] == 0
    assert report["same_data_dir"] is True and "WARNING" in r.stderr

    r = _evaluate(recorded, tiny_data, "--json", "--model-card", str(card))  # test: held out
    report = json.loads(r.stdout)["training_overlap"]
    assert report["in_train"] == report["in_val"] == 0 and report["message"] is None
    assert "none of these" in card.read_text() and "WARNING" not in r.output


def test_fitting_on_training_images_is_refused(recorded, tiny_data, tmp_path):
    # Another data dir of the same images where the model's training images form the val split.
    swapped = tmp_path / "swapped"
    shutil.copytree(tiny_data, swapped)
    rows = list(csv.DictReader((swapped / "manifest.csv").open()))
    swap = {"train": "val", "val": "train", "test": "test"}
    for row in rows:
        row["split"] = swap[row["split"]]
    with (swapped / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    n = sum(row["split"] == "val" for row in rows)
    ev = Evaluator(recorded, device="cpu")
    with pytest.raises(DataError, match=f"{n} of its {n} images are this model's training images"):
        ev.calibrate(swapped, "val")
    with pytest.raises(DataError, match="refusing to choose a threshold"):
        ev.choose_threshold(swapped, "val", target_sensitivity=0.9)
    ev.calibrate(tiny_data, "val")  # its own val split is what calibration is for


def _with_ids(src, dst, ids):
    """A copy of data dir `src` whose manifest rows get lesion/patient ids from `ids(i, row)`."""
    shutil.copytree(src, dst)
    rows = list(csv.DictReader((dst / "manifest.csv").open()))
    for i, row in enumerate(rows):
        row.update(ids(i, row))
    with (dst / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return dst


def test_other_photos_of_training_lesions_and_patients_are_flagged_and_refused(
    ckpt, tiny_data, tmp_path
):
    def trained_ids(i, row):  # lesion L<i> for each training image, two lesions per patient
        return {"lesion_id": f"L{i}", "patient_id": f"P{i // 2}"} if row["split"] == "train" else {}

    trained = _with_ids(tiny_data, tmp_path / "trained", trained_ids)
    train_rows = [i for i, r in enumerate(load_manifest(trained).records) if r.split == "train"]
    record = training_record(load_manifest(trained))
    assert "L0" not in json.dumps(record) and len(record["groups"]["train"]) > len(train_rows)
    update_checkpoint(ckpt, training_data=record)

    # Another data dir of other photos: its test images show 3 training lesions and 1 training
    # patient (with a lesion of their own), its val images 2 training lesions: new pixels, old ids.
    def other_ids(i, row):
        test = [j for j, r in enumerate(rows) if r.split == "test"]
        val = [j for j, r in enumerate(rows) if r.split == "val"]
        if i in test[:3]:
            return {"lesion_id": f"L{train_rows[test.index(i)]}"}
        if i == test[3]:
            return {"lesion_id": "new", "patient_id": f"P{train_rows[5] // 2}"}
        if i in val[:2]:
            return {"lesion_id": f"L{train_rows[val.index(i)]}"}
        return {"lesion_id": f"other{i}"}

    rows = load_manifest(tiny_data).records
    other = _with_ids(tiny_data, tmp_path / "other", other_ids)
    n_test = sum(r.split == "test" for r in rows)
    n_val = sum(r.split == "val" for r in rows)

    r = _evaluate(ckpt, other, "--json")
    assert r.exit_code == 0, r.output
    overlap = json.loads(r.stdout)["training_overlap"]
    assert (overlap["lesion_in_train"], overlap["in_train"], overlap["in_val"]) == (4, 0, 0)
    assert overlap["message"] == (
        f"4 of the {n_test} test images show a lesion or patient of the training images (another "
        "photo of it, matched by lesion/patient id): these numbers are not a held-out estimate"
    )
    assert f"WARNING: {overlap['message']}" in r.stderr.replace("\n", " ")

    ev = Evaluator(ckpt, device="cpu")
    refused = f"refusing to calibrate on the val split: 2 of its {n_val} images show a lesion"
    with pytest.raises(DataError, match=refused):
        ev.calibrate(other, "val")
    with pytest.raises(DataError, match="refusing to choose a threshold on the val split: 2 of"):
        ev.choose_threshold(other, "val", target_sensitivity=0.9)

    # The data dir it was trained on: its held-out splits share no id with training, nothing flagged.
    held_out = Evaluator(ckpt, device="cpu").training_overlap(trained, "test")
    assert held_out is not None and not held_out.any
    ev.calibrate(trained, "val")


def _resplit(src, dst):
    """A copy of data dir `src`, its first test image swapped with its first training image."""
    shutil.copytree(src, dst)
    info = json.loads((dst / "dataset.json").read_text())
    (dst / "dataset.json").write_text(json.dumps({**info, "fingerprint": None}))
    rows = list(csv.DictReader((dst / "manifest.csv").open()))
    first = {s: next(r for r in rows if r["split"] == s) for s in ("train", "test")}
    first["train"]["split"], first["test"]["split"] = "test", "train"
    with (dst / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return dst


def test_the_models_own_data_is_told_by_fingerprint_or_content(recorded, tiny_data, tmp_path):
    record = load_checkpoint(recorded).data["training_data"]
    assert is_training_data(record, load_manifest(tiny_data)) is True
    assert is_training_data(None, load_manifest(tiny_data)) is None
    # No fingerprint (a hand-made data dir): the same images outside test are its own data.
    bare = _resplit(tiny_data, tmp_path / "bare")
    shutil.copy(tiny_data / "manifest.csv", bare / "manifest.csv")
    assert is_training_data(record, load_manifest(bare)) is True
    # The same images split again: another test split, not the model's own.
    assert is_training_data(record, load_manifest(_resplit(tiny_data, tmp_path / "re"))) is False


def test_metrics_of_other_data_are_saved_under_its_name_beside_the_own(
    recorded, tiny_data, tmp_path
):
    own = evaluate_checkpoint(recorded, tiny_data, device="cpu", n_bootstrap=0, save=True)
    assert own.metrics_key == "test" and own.data is None
    stored = load_checkpoint(recorded).metrics["test"]
    other = _resplit(tiny_data, tmp_path / "resplit")
    rep = evaluate_checkpoint(recorded, other, device="cpu", n_bootstrap=0, save=True)
    assert rep.metrics_key == "resplit:test" and rep.data_dir == str(other)
    metrics = load_checkpoint(recorded).metrics
    assert metrics["test"] == stored and metrics["resplit:test"]["n_images"] == rep.n_images
    with pytest.raises(ConfigError, match=r"not stored: the threshold/temperature was fitted on "
                       r"the val split of resplit \("):  # fmt: skip
        evaluate_checkpoint(recorded, other, device="cpu", calibrate=True, save=True)
    ev = Evaluator(load_checkpoint(recorded, for_update=True), device="cpu")
    fit = ev.calibrate(other, "val", keep_worse=True)  # measured without saving: allowed
    choice = ev.choose_threshold(other, "val", target_sensitivity=0.5)
    assert fit.where == "val of resplit" and choice.describe().startswith(
        "largest with sensitivity >= 0.5 on val of resplit (n="
    )
    rep = ev.evaluate(other, n_bootstrap=0)
    card = render_model_card(ev.checkpoint, rep)
    assert (
        "temperature scaling fitted on the val split of resplit (not the model's own data)" in card
    )
    assert "the largest threshold reaching sensitivity >= 0.5 on the val split of resplit" in card
    assert "- **Measured data, not the training data:** below is resplit (`" in card
    assert "- **External test set:** yes: resplit, not the data the model was trained on" in card
    with pytest.raises(ConfigError, match="not stored: the threshold/temperature"):
        ev.save_to_checkpoint(rep)
    assert load_checkpoint(recorded).metrics == metrics
