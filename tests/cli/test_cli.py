"""The CLI through Click's CliRunner: every command, and one-line errors for bad input."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from skincls._version import __version__
from skincls.cli import main
from skincls.data.dataset import build_transform, load_image
from skincls.models.checkpoint import load_checkpoint
from tests.conftest import TINY_TRAIN

COMMANDS = ["fetch", "train", "cv", "evaluate", "predict", "demo"]


@pytest.fixture()
def runner():
    return CliRunner()


def test_help_lists_every_command(runner):
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help(runner, name):
    result = runner.invoke(main, [name, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output and len(result.output.splitlines()) > 4


def test_version(runner):
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


@pytest.mark.slow
def test_fetch_train_evaluate_predict(runner, tmp_path):
    data = tmp_path / "data"
    r = runner.invoke(main, ["fetch", "--synthetic", "40", "--data-dir", str(data), "--seed", "2"])
    assert r.exit_code == 0, r.output
    assert (data / "manifest.csv").is_file() and "train" in r.output

    run = tmp_path / "run"
    r = runner.invoke(main, ["train", "--data-dir", str(data), "--out", str(run), *TINY_TRAIN])
    assert r.exit_code == 0, r.output
    for name in ("best.pt", "last.pt", "history.json", "history.csv", "config.json"):
        assert (run / name).is_file(), name
    assert json.loads((run / "config.json").read_text())["model"]["arch"] == "smallcnn"

    r = runner.invoke(main, ["evaluate", str(run / "best.pt"), "--data-dir", str(data)])
    assert r.exit_code == 0, r.output
    assert "Test Accuracy of Benign:" in r.output and "Test Accuracy of Malignant:" in r.output

    r = runner.invoke(
        main,
        ["evaluate", str(run / "best.pt"), "--data-dir", str(data), "--json", "--split", "val"],
    )
    report = json.loads(r.stdout)  # the overlap warning goes to stderr
    assert report["split"] == "val" and report["n_images"] > 0

    image = next((data / "images" / "test" / "malignant").glob("*.jpg"))
    args = ["predict", str(run / "best.pt"), str(image), "--json", "--precision", "fp32"]
    r = runner.invoke(main, args)
    assert r.exit_code == 0, r.output
    [pred] = json.loads(r.output)
    ckpt = load_checkpoint(run / "best.pt")
    with torch.no_grad():
        x = build_transform(ckpt.preprocessing)(load_image(image)).unsqueeze(0)
        p = torch.softmax(ckpt.build_model().eval()(x), 1)[0]
    assert pred["probability"] == pytest.approx(float(p[1]), abs=1e-6)
    assert pred["label"] == ckpt.classes[int(p.argmax())]


def _assert_one_line_error(result, *needles):
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    for n in needles:
        assert n in result.output


def test_missing_data_dir_is_a_clear_error(runner, tmp_path):
    r = runner.invoke(main, ["train", "--data-dir", str(tmp_path / "nope"), *TINY_TRAIN])
    _assert_one_line_error(r, "skincls fetch")


def test_unknown_arch_is_a_clear_error(runner, tiny_data, tmp_path):
    r = runner.invoke(
        main,
        [
            "train",
            "--data-dir",
            str(tiny_data),
            "--out",
            str(tmp_path),
            "--arch",
            "alexnet9000",
            "--quiet",
        ],
    )
    _assert_one_line_error(r, "unknown arch", "vgg16")


def test_bad_option_value_is_a_clear_error(runner, tiny_data):
    r = runner.invoke(main, ["train", "--data-dir", str(tiny_data), "--epochs", "0"])
    _assert_one_line_error(r, "--epochs")


def test_config_with_unknown_key_is_a_clear_error(runner, tiny_data, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epochz: 3\n")
    r = runner.invoke(main, ["train", "--config", str(cfg), "--data-dir", str(tiny_data)])
    _assert_one_line_error(r, "train.epochz", "unknown key")


def test_cuda_without_gpu_is_a_clear_error(runner, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    args = [a if a != "cpu" else "cuda" for a in TINY_TRAIN]
    r = runner.invoke(main, ["train", "--data-dir", str(tiny_data), "--out", str(tmp_path), *args])
    _assert_one_line_error(r, "no CUDA GPU")


def test_evaluate_missing_checkpoint(runner, tiny_data, tmp_path):
    r = runner.invoke(main, ["evaluate", str(tmp_path / "none.pt"), "--data-dir", str(tiny_data)])
    _assert_one_line_error(r, "does not exist")


@pytest.mark.slow
def test_demo_runs_end_to_end(runner, tmp_path):
    r = runner.invoke(
        main, ["demo", "--workdir", str(tmp_path), "--images", "60", "--epochs", "1", "--quiet"]
    )
    assert r.exit_code == 0, r.output
    assert "Test Accuracy (Overall)" in r.output
    assert (tmp_path / "run" / "best.pt").is_file()


@pytest.mark.slow
def test_train_resume_continues_a_killed_run(runner, tiny_data, tmp_path, monkeypatch):
    """`skincls train --resume` reads the run's config.json and runs only the epochs a killed run
    lacked (that the result equals an uninterrupted run's is tested in tests/training)."""
    from skincls.training.callbacks import HistoryWriter

    real, ran = HistoryWriter.on_epoch_end, []

    def logged(self, trainer, record, improved):
        real(self, trainer, record, improved)
        ran.append(record.epoch)
        if record.epoch == 1 and ran == [1]:
            raise KeyboardInterrupt("simulated kill after epoch 1")

    monkeypatch.setattr(HistoryWriter, "on_epoch_end", logged)
    run = tmp_path / "run"
    every_epoch = ["--checkpoint-interval", "0"]  # last.pt at each epoch's end
    args = ["train", "--data-dir", str(tiny_data), "--out", str(run), *TINY_TRAIN, *every_epoch]
    r = runner.invoke(main, args)
    assert r.exit_code != 0 and load_checkpoint(run / "last.pt").data["epoch"] == 1
    killed = json.loads((run / "history.json").read_text())["epochs"]

    r = runner.invoke(main, ["train", "--out", str(run), "--resume", "--quiet"])  # nothing else
    assert r.exit_code == 0, r.output
    assert ran == [1, 2]  # the resumed run trained epoch 2 only
    history = json.loads((run / "history.json").read_text())["epochs"]
    assert [e["epoch"] for e in history] == [1, 2] and history[0] == killed[0]
    assert load_checkpoint(run / "last.pt").data["epoch"] == 2
    assert json.loads((run / "config.json").read_text())["model"]["arch"] == "smallcnn"
