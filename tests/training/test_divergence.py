"""Runs that cannot succeed stop loudly: a diverging loss, and random frozen backbone weights."""

from __future__ import annotations

import math

import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.utils.data import TensorDataset

from skincls.cli import main
from skincls.config import RunConfig, TrainConfig
from skincls.errors import ConfigError, TrainingError
from skincls.models.checkpoint import load_checkpoint
from skincls.training.callbacks import Callback, ModelCheckpoint
from skincls.training.run import train_from_config
from skincls.training.trainer import Trainer
from tests.conftest import TINY_TRAIN


def _one_line_error(result) -> str:
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


@pytest.mark.slow
def test_diverging_run_stops_with_one_line_and_saves_no_nan_model(tiny_data, tmp_path):
    run = tmp_path / "run"
    # The largest --lr the config allows, with plain SGD and small batches: diverges within steps.
    # (--lr 1e30, the example, is now refused as out of range before anything runs.)
    args = ["train", "--data-dir", str(tiny_data), "--out", str(run), *TINY_TRAIN]
    args += ["--lr", "10", "--optimizer", "sgd", "--batch-size", "4"]
    line = _one_line_error(CliRunner().invoke(main, args))
    assert "training diverged in epoch 1" in line and "step" in line and "lower --lr" in line
    for name in ("best.pt", "last.pt"):
        path = run / name
        if path.exists():  # an earlier, finite epoch may be kept, but never a NaN one
            state = torch.load(path, weights_only=True)["state_dict"]
            assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
            load_checkpoint(path)


class _PoisonLastStep(Callback):
    """Makes the weights NaN after a step whose loss was still finite (the update diverged)."""

    def on_batch_end(self, trainer, loss, accuracy):
        with torch.no_grad():
            trainer.model.weight.fill_(math.nan)


def test_nan_weights_at_epoch_end_are_never_saved(tmp_path):
    saved = []
    data = TensorDataset(torch.randn(8, 4), torch.tensor([0, 1] * 4))
    cfg = TrainConfig(epochs=2, batch_size=8, device="cpu")
    callbacks = [_PoisonLastStep(), ModelCheckpoint(tmp_path, lambda *a: saved.append(a))]
    with pytest.raises(TrainingError, match=r"epoch 1 .*weights hold NaN or inf \(weight\)"):
        Trainer(nn.Linear(4, 2), cfg, callbacks=callbacks).fit(data)
    assert saved == []


def _config(data_dir, out, **model):
    return RunConfig.model_validate(
        {
            "data": {"data_dir": data_dir, "image_size": 32},
            "model": {"arch": "smallcnn", "weights": "none", "head": [16], **model},
            "train": {"epochs": 1, "batch_size": 8, "device": "cpu"},
            "out": out,
        }
    )


def test_random_frozen_backbone_is_refused_with_the_way_out(tiny_data, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--data-dir", str(tiny_data), "--out", str(run), "--arch", "smallcnn"]
    line = _one_line_error(CliRunner().invoke(main, [*args, "--weights", "none", "--quiet"]))
    assert "--weights none with --freeze backbone" in line
    assert "--freeze none" in line and "--weights FILE" in line
    assert not run.exists()  # refused before anything was written

    with pytest.raises(ConfigError) as info:  # the library names its own keys
        train_from_config(_config(tiny_data, run, freeze=0), progress=False)
    assert str(info.value).startswith(
        "model.weights='none' with model.freeze=0 keeps the whole backbone frozen"
    )
    assert str(info.value).endswith(
        "train from scratch with model.freeze='none', or start from pretrained weights "
        "(model.weights='imagenet', or model.weights=FILE)"
    )
    # From scratch is fine (what the demo and the test fixtures do).
    train_from_config(_config(tiny_data, run, freeze="none"), progress=False)


def test_smallcnn_without_weights_option_names_the_working_options(tiny_data, tmp_path):
    args = ["train", "--data-dir", str(tiny_data), "--out", str(tmp_path / "r"), "--quiet"]
    line = _one_line_error(CliRunner().invoke(main, [*args, "--arch", "smallcnn"]))
    assert "--weights none --freeze none" in line


def test_an_absurd_lr_on_the_command_line_is_refused_before_anything_runs(tiny_data, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data-dir", str(tiny_data), "--out", str(out), *TINY_TRAIN, "--lr", "1e30"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and "Invalid value for '--lr': 1e+30 is not in the range" in r.output
    assert not out.exists()
