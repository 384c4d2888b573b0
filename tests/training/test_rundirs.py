"""Run dirs: one training per run dir, nothing overwritten or half-made, stale temps cleaned, and the
training-data record each checkpoint carries."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from skincls.cli import main
from skincls.data.provenance import HASH_DIGITS
from skincls.data.splits import load_manifest
from skincls.models.checkpoint import load_checkpoint
from tests.conftest import TINY_TRAIN, lock_held_elsewhere

DEAD_PID = 2**22 + 12345  # above Linux's default pid_max: never a running process


def _train(data, *args):
    return CliRunner().invoke(main, ["train", "--data-dir", str(data), *TINY_TRAIN, *args])


def _one_line_error(result, *needles):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output and result.output.count("Error:") == 1
    [line] = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    for n in needles:
        assert n in line, line
    return line


def _files(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """One finished tiny run (module-wide; tests copy it before changing it)."""
    run = tmp_path_factory.mktemp("rundirs") / "run"
    r = _train(tiny_data, "--out", str(run), "--epochs", "1")
    assert r.exit_code == 0, r.output
    return run


def _copy_run(trained, tmp_path):
    import shutil

    return shutil.copytree(trained, tmp_path / "run")


def test_second_training_into_a_locked_run_dir_is_refused(tiny_data, tmp_path):
    run = tmp_path / "run"
    with lock_held_elsewhere(run, "skincls train") as pid:
        r = _train(tiny_data, "--out", str(run))
        _one_line_error(r, f"pid {pid}", str(run / ".skincls.lock"), "--out")
        assert not {"config.json", "best.pt", "last.pt"} & set(_files(run))


@pytest.mark.slow
def test_non_empty_run_dir_is_refused_without_resume_or_overwrite(tiny_data, trained, tmp_path):
    run = _copy_run(trained, tmp_path)
    before = {name: (run / name).read_bytes() for name in ("best.pt", "config.json")}
    r = _train(tiny_data, "--out", str(run), "--seed", "7")
    _one_line_error(r, str(run), "not empty", "--resume", "--overwrite")
    assert {name: (run / name).read_bytes() for name in before} == before

    r = _train(tiny_data, "--out", str(run), "--seed", "7", "--overwrite")
    assert r.exit_code == 0, r.output
    assert f"replacing the run in {run}: removed its last.pt, best.pt, history.json" in r.output
    assert json.loads((run / "config.json").read_text())["train"]["seed"] == 7
    assert (run / "best.pt").read_bytes() != before["best.pt"]


@pytest.mark.slow
def test_default_run_dirs_are_new_every_time(tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        r = _train(tiny_data, "--epochs", "1")
        assert r.exit_code == 0, r.output
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(runs) == 2 and all(re.fullmatch(r"smallcnn-\d{8}-\d{6}(-\d+)?", n) for n in runs)
    for name in runs:  # each holds its own complete run, and its config names that folder
        saved = json.loads((tmp_path / "runs" / name / "config.json").read_text())
        assert saved["out"] == f"runs/{name}"
        assert load_checkpoint(tmp_path / "runs" / name / "best.pt").data["epoch"] == 1


def test_device_error_leaves_no_run_dir(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    run = tmp_path / "a" / "run"
    args = [a if a != "cpu" else "cuda" for a in TINY_TRAIN]
    r = CliRunner().invoke(main, ["train", "--data-dir", str(tiny_data), "--out", str(run), *args])
    _one_line_error(r, "no CUDA GPU")
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_failed_resume_leaves_the_run_as_it_was(tiny_data, trained, tmp_path):
    run = _copy_run(trained, tmp_path)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    r = _train(tiny_data, "--out", str(run), "--resume", "--head", "32,16")
    _one_line_error(r, "cannot resume", "size mismatch", "config.json")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name in before} == before
    assert r.output.count("\n") <= 2  # the long load_state_dict report is cut to one line
    # ...so it can still be resumed with its own options.
    r = _train(tiny_data, "--out", str(run), "--resume", "--epochs", "2")
    assert r.exit_code == 0, r.output
    assert load_checkpoint(run / "last.pt").data["epoch"] == 2


def test_resume_without_a_run_creates_nothing(tiny_data, tmp_path):
    r = _train(tiny_data, "--out", str(tmp_path / "none"), "--resume")
    _one_line_error(r, "holds no run")
    assert not (tmp_path / "none").exists()
    _one_line_error(_train(tiny_data, "--resume"), "--resume needs --out")


def test_stale_temps_of_a_killed_write_are_removed_on_the_next_run(tiny_data, trained, tmp_path):
    run = _copy_run(trained, tmp_path)
    stale = run / f".last.pt.{DEAD_PID}.abcdefgh.tmp"
    stale.write_bytes(b"\0" * 4096)
    other = run / "notes.tmp"  # not of our naming: left alone
    other.write_text("mine")
    r = _train(tiny_data, "--out", str(run), "--resume", "--epochs", "2")
    assert r.exit_code == 0, r.output
    assert not stale.exists() and other.read_text() == "mine"
    assert f"removed 1 stale temporary file (4.1 kB) left in {run}" in r.output
    assert stale.name in r.output


def test_a_run_killed_before_its_first_epoch_ended_starts_over(tiny_data, trained, tmp_path):
    run = _copy_run(trained, tmp_path)
    for name in ("last.pt", "best.pt"):  # as if killed during epoch 1
        (run / name).unlink()
    r = _train(tiny_data, "--out", str(run), "--resume")
    assert r.exit_code == 0, r.output
    assert "starting that run from the beginning" in r.output
    assert load_checkpoint(run / "last.pt").data["epoch"] == 2


def test_checkpoint_records_its_training_images_by_content_hash(tiny_data, trained):
    record = load_checkpoint(trained / "best.pt").data["training_data"]
    manifest = load_manifest(tiny_data)
    for split in ("train", "val"):
        expected = sorted({r.sha256[:HASH_DIGITS] for r in manifest.select(split)})
        assert record[split] == expected and expected
    assert record["data_fingerprint"] == manifest.info.fingerprint
    assert set(record) == {"data_fingerprint", "hash", "train", "val", "groups"}  # no paths
    assert record["groups"]["train"] == record["groups"]["val"] == []  # no lesion/patient ids


def test_resume_on_a_re_split_data_dir_is_refused(tiny_data, tmp_path):
    import shutil

    from skincls.data.fetch import fetch

    source = tmp_path / "source"  # class/file: fetch carves train/val/test with its --seed
    for image in (tiny_data / "images").rglob("*.*"):
        target = source / image.parent.name / image.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, target)
    data, run = tmp_path / "data", tmp_path / "run"
    fetch(data, source_dir=source, seed=0, val_fraction=0.2)
    r = _train(data, "--out", str(run), "--epochs", "1")
    assert r.exit_code == 0, r.output
    trained = set(load_checkpoint(run / "last.pt").data["training_data"]["train"])
    fetch(data, source_dir=source, seed=3, val_fraction=0.2)  # the same images, another split
    test_now = {x.sha256[:HASH_DIGITS] for x in load_manifest(data).select("test")}
    assert test_now & trained  # what a resumed run would be tested on, in part
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    r = _train(data, "--out", str(run), "--resume", "--epochs", "2")
    line = _one_line_error(r, "cannot resume", "not the split it was trained on", "--out", "--seed")
    moved = len(trained - {x.sha256[:HASH_DIGITS] for x in load_manifest(data).select("train")})
    assert f"{moved} of the {len(trained)} images it trained on are not training images" in line
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name in before} == before

    fetch(data, source_dir=source, seed=0, val_fraction=0.2)  # the run's own split again
    r = _train(data, "--out", str(run), "--resume", "--epochs", "2")
    assert r.exit_code == 0, r.output
    assert load_checkpoint(run / "last.pt").data["training_data"]["train"] == sorted(trained)
