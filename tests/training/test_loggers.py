"""Loggers: TensorBoard scalars and an MLflow run per training run (a resumed run continues it), the
pip extra named when a package is missing, and tracker files replaced with the run."""

from __future__ import annotations

import json
import logging
import sys

import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.utils.data import TensorDataset

from skincls import TrainConfig, Trainer
from skincls.cli import main
from skincls.config import LoggerConfig
from skincls.errors import ConfigError
from skincls.training.callbacks import Callback
from skincls.training.loggers import MLflowLogger, TensorBoardLogger, check_loggers
from skincls.training.rundir import remove_run_files as _remove_run_files
from tests.conftest import TINY_TRAIN
from tests.serve._support import needs


@pytest.fixture(autouse=True)
def _local_mlflow(monkeypatch):
    """MLflow sends no usage data and sees no tracking store or experiment of the user's."""
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)


def _data():
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(16, 8, generator=g), torch.tensor([0, 1] * 8))


def _cfg(epochs):
    return TrainConfig(epochs=epochs, batch_size=8, lr=1e-2, device="cpu")


class _Kill(Callback):
    """Keeps the trainer's state after epoch `keep` (a checkpoint), then dies after epoch `at`."""

    def __init__(self, keep: int, at: int):
        self.keep, self.at, self.state = keep, at, None

    def on_epoch_end(self, trainer, record, improved):
        if record.epoch == self.keep:
            self.state = trainer.state_dict()
        if record.epoch == self.at:
            raise KeyboardInterrupt("simulated kill")


def _scalars(logdir):
    ea = needs("tensorboard.backend.event_processing.event_accumulator", "tensorboard")
    acc = ea.EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(s.step, s.value) for s in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_scalars_per_epoch_and_a_resumed_run_shows_each_epoch_once(tmp_path):
    needs("tensorboard", "tensorboard")
    torch.manual_seed(0)
    model, data = nn.Linear(8, 2), _data()
    kill = _Kill(keep=2, at=3)
    with pytest.raises(KeyboardInterrupt):  # epoch 3 logged, but the checkpoint is from epoch 2
        Trainer(model, _cfg(4), callbacks=[TensorBoardLogger(tmp_path), kill]).fit(data, data)
    resumed = Trainer(model, _cfg(4), callbacks=[TensorBoardLogger(tmp_path)])
    resumed.load_state_dict(kill.state)
    history = resumed.fit(data, data)

    scalars = _scalars(tmp_path / "tensorboard")
    assert set(scalars) == {
        "train/loss", "train/accuracy", "val/loss", "val/accuracy", "lr", "epoch_seconds"
    }  # fmt: skip
    assert [step for step, _ in scalars["val/loss"]] == [1, 2, 3, 4]  # the stale epoch 3 hidden
    for name, field in (("val/loss", "val_loss"), ("train/accuracy", "train_accuracy")):
        expected = [getattr(e, field) for e in history.epochs]
        assert [v for _, v in scalars[name]] == pytest.approx(expected, rel=1e-6)


def test_mlflow_run_has_params_and_metrics_and_a_resume_continues_it(tmp_path, monkeypatch):
    mlflow = needs("mlflow", "mlflow")
    torch.manual_seed(0)
    model, data = nn.Linear(8, 2), _data()
    params = {"train.lr": "0.01", "model.head": "[16]"}
    kill = _Kill(keep=2, at=2)
    with pytest.raises(KeyboardInterrupt):
        Trainer(model, _cfg(2), callbacks=[MLflowLogger(tmp_path, params), kill]).fit(data, data)
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"  # the run dir's own store
    assert json.loads((tmp_path / "mlflow_run.json").read_text())["tracking_uri"] == uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # where mlflow.search_runs looks
    [killed] = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert killed.info.status == "KILLED" and killed.data.params == params

    resumed = Trainer(model, _cfg(4), callbacks=[MLflowLogger(tmp_path, {**params, "x": "1"})])
    resumed.load_state_dict(kill.state)
    history = resumed.fit(data, data)

    [run] = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert run.data.params == {**params, "x": "1"}
    assert run.data.metrics["best/val/loss"] == pytest.approx(history.best.val_loss)
    steps = mlflow.MlflowClient(uri).get_metric_history(run.info.run_id, "val/loss")
    assert [m.step for m in steps] == [1, 2, 3, 4]  # one MLflow run, each epoch once
    assert [m.value for m in steps] == pytest.approx([e.val_loss for e in history.epochs])


def test_mlflow_honours_the_tracking_uri_variable(tmp_path, monkeypatch):
    mlflow = needs("mlflow", "mlflow")
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "lesions")
    run_dir = tmp_path / "run"
    trainer = Trainer(nn.Linear(8, 2), _cfg(1), callbacks=[MLflowLogger(run_dir, {})])
    trainer.fit(_data())
    assert not (run_dir / "mlruns").exists()
    [run] = mlflow.search_runs(experiment_names=["lesions"], output_format="list")
    assert run.info.run_name == "run" and "train/loss" in run.data.metrics


def test_cli_logs_to_tensorboard_and_mlflow_and_resume_continues_both(tiny_data, tmp_path):
    mlflow = needs("mlflow", "mlflow")
    run = tmp_path / "run"
    args = ["train", "--data-dir", str(tiny_data), *TINY_TRAIN, "--out", str(run)]
    result = CliRunner().invoke(main, [*args, "--logger", "tensorboard,mlflow"])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert config["logging"]["loggers"] == ["csv", "tensorboard", "mlflow"]
    resume = ["train", "--out", str(run), "--resume", "--epochs", "3", "--quiet"]
    result = CliRunner().invoke(main, resume)
    assert result.exit_code == 0, result.output

    assert [s for s, _ in _scalars(run / "tensorboard")["val/loss"]] == [1, 2, 3]
    client = mlflow.MlflowClient(f"sqlite:///{run / 'mlruns' / 'mlflow.db'}")
    [mlrun] = client.search_runs(client.search_experiments()[0].experiment_id)
    assert mlrun.info.status == "FINISHED" and mlrun.info.run_name == "run"
    assert (
        mlrun.data.params["train.epochs"] == "2" and mlrun.data.params["model.arch"] == "smallcnn"
    )
    history = json.loads((run / "history.json").read_text())
    assert "MLflow: params keep their first values: train.epochs changed" in history["notes"]
    steps = client.get_metric_history(mlrun.info.run_id, "val/loss")
    assert [m.step for m in steps] == [1, 2, 3]
    best = history["epochs"][history["best_epoch"] - 1]
    assert mlrun.data.metrics["best/val/accuracy"] == pytest.approx(best["val_accuracy"])
    names = {a.path for a in client.list_artifacts(mlrun.info.run_id)}
    assert {"best.pt", "config.json", "history.json", "training_curves.png"} <= names


@pytest.mark.parametrize("name", ["mlflow", "tensorboard"])
def test_a_missing_logger_package_names_the_extra(tiny_data, tmp_path, monkeypatch, name):
    module = {"mlflow": "mlflow", "tensorboard": "torch.utils.tensorboard"}[name]
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=rf"pip install 'skincls\[{name}\]'"):
        check_loggers(LoggerConfig(loggers=[name]))
    out = tmp_path / "run"
    args = ["train", "--data-dir", str(tiny_data), *TINY_TRAIN, "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--logger", name])
    assert result.exit_code != 0 and "Traceback" not in result.output
    [line] = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert line.startswith(f"Error: --logger {name} needs the {name} package")
    assert line.endswith(f"pip install 'skincls[{name}]'") and not out.exists()


def test_an_unknown_logger_is_refused():
    result = CliRunner().invoke(main, ["train", "--logger", "tensorboard,wandb"])
    assert result.exit_code == 2
    assert "'wandb': give csv, tensorboard, mlflow" in result.output


def test_overwrite_removes_the_trackers_files_with_the_run(tmp_path, caplog):
    for name in ("tensorboard", "mlruns"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text("old")
    (tmp_path / "mlflow_run.json").write_text("{}")
    (tmp_path / "history.json").write_text("{}")
    with caplog.at_level(logging.WARNING, logger="skincls"):
        _remove_run_files(tmp_path)
    assert list(tmp_path.iterdir()) == []
    assert "removed its history.json, tensorboard, mlruns, mlflow_run.json" in caplog.text
