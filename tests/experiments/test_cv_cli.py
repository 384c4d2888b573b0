"""`skincls cv` through the CLI, and its ensemble through evaluate, predict, export and the model card."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from skincls.cli import main
from tests.conftest import TINY_TRAIN


@pytest.mark.slow
def test_cv_cli_then_the_ensemble_through_every_command(tiny_data, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cv"
    train = [a for a in TINY_TRAIN if a != "--quiet"]
    epochs = train.index("--epochs")
    train[epochs + 1] = "1"
    args = ["cv", "--folds", "2", "--data-dir", str(tiny_data), "--out", str(out), *train]
    r = runner.invoke(main, [*args, "--quiet", "--target-sensitivity", "0.8", "--bootstrap", "20"])
    assert r.exit_code == 0, r.output
    assert "2-fold cross-validation" in r.output and "mean" in r.output
    assert "Out-of-fold Sensitivity" in r.output and "on out-of-fold" in r.output
    ensemble = out / "ensemble.pt"
    for name in ("ensemble.pt", "oof.csv", "cv_report.json", "folds.csv", "cv_state.json"):
        assert (out / name).is_file(), name

    # A second run into the same folder is refused; --resume of a finished CV redoes nothing.
    r = runner.invoke(main, [*args, "--quiet"])
    assert r.exit_code != 0 and "add --resume" in r.output and "Traceback" not in r.output
    r = runner.invoke(main, ["cv", "--resume", "--folds", "2", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["folds"] == 2  # progress lines went to stderr

    card = tmp_path / "card.md"
    evaluate = ["evaluate", str(ensemble), "--data-dir", str(tiny_data), "--bootstrap", "0"]
    r = runner.invoke(main, [*evaluate, "--tta", "--model-card", str(card)])
    assert r.exit_code == 0, r.output
    assert "Test Accuracy (Overall)" in r.output
    text = card.read_text()
    assert "ensemble of 2 models" in text and "chosen on the out-of-fold predictions" in text
    image = next((tiny_data / "images").rglob("*.png"), None) or next(
        (tiny_data / "images").rglob("*.jpg")
    )
    r = runner.invoke(main, ["predict", str(ensemble), str(image), "--json", "--tta"])
    assert r.exit_code == 0, r.output
    assert 0 <= json.loads(r.output)[0]["probability"] <= 1
    r = runner.invoke(main, ["export", str(ensemble), "--out", str(tmp_path / "ens.onnx")])
    assert r.exit_code == 0 and "parity" in r.output, r.output
