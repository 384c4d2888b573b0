"""`train_from_config` as stages: plan_run → build_trainer → open_run_dir → fit_run, each tested on its
own; an interrupted run keeps what --resume needs and says so; evaluate finds the run's data dir."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import skincls
from skincls import RunConfig
from skincls.cli import main
from skincls.errors import CheckpointError, ConfigError, Interrupted
from skincls.models.checkpoint import load_checkpoint, snapshot_model, update_checkpoint
from skincls.training import run as run_module
from skincls.training.callbacks import Callback, HistoryWriter
from skincls.training.distributed import Dist
from skincls.training.run import (
    CheckpointWriter,
    build_trainer,
    fit_run,
    open_run_dir,
    plan_run,
)
from skincls.training.rundir import recorded_data_dir, run_entries
from tests.conftest import TINY_TRAIN


def _config(data_dir, out, **train) -> RunConfig:
    return RunConfig.model_validate(
        {
            "data": {"data_dir": data_dir, "image_size": 32},
            "model": {"arch": "smallcnn", "weights": "none", "freeze": "none", "head": [8]},
            "train": {"epochs": 2, "batch_size": 8, "device": "cpu", "seed": 1, **train},
            "out": out,
        }
    )


@pytest.fixture()
def no_model(monkeypatch):
    """Building a model fails the test: a refused run must not build (or download) one."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(run_module, "create_model", refuse)


def test_resume_without_a_run_is_refused_before_any_model_is_built(tiny_data, tmp_path, no_model):
    # Without the run's options the default is VGG16 with ImageNet weights: a 528 MB download.
    args = ["train", "--data-dir", str(tiny_data), "--resume", "--out", str(tmp_path / "none")]
    r = CliRunner().invoke(main, args)
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert f"Error: cannot resume: {tmp_path / 'none'} holds no run" in r.output
    assert not (tmp_path / "none").exists()
    with pytest.raises(CheckpointError, match="holds no run"):
        plan_run(RunConfig(out=tmp_path / "none"), device="cpu", resume=True)


def test_a_non_empty_run_dir_is_refused_before_any_model_is_built(tiny_data, tmp_path, no_model):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        plan_run(_config(tiny_data, tmp_path / "run"), device="cpu")


def test_plan_builds_model_and_data_and_writes_nothing(tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_data.parent)
    plan = plan_run(_config(Path(tiny_data.name), tmp_path / "run"), device="cpu")
    assert plan.config.data.data_dir == tiny_data.resolve()  # recorded absolute
    assert plan.run_dir == tmp_path / "run" and plan.auto_arch is None
    assert plan.model.preprocessing.crop_size == 32
    manifest = skincls.load_manifest(tiny_data)
    assert (len(plan.train), len(plan.val)) == (
        len(manifest.select("train")),
        len(manifest.select("val")),
    )
    assert not (tmp_path / "run").exists()
    auto = plan_run(_config(tiny_data, None), device="cpu")
    assert auto.auto_arch == "smallcnn" and auto.run_dir.parent == Path("runs")


def test_run_dir_stage_locks_the_folder_and_writes_the_config(tiny_data, tmp_path):
    plan = plan_run(_config(tiny_data, tmp_path / "run"), device="cpu")
    run = open_run_dir(plan, None, Dist())
    try:
        assert run.path == tmp_path / "run" and run.config.out == run.path
        assert (run.path / ".skincls.lock").is_file()
        saved = json.loads((run.path / "config.json").read_text())
        assert saved["out"] == str(run.path) and saved["data"]["data_dir"] == str(tiny_data)
    finally:
        run.release()
    assert not (run.path / ".skincls.lock").exists()
    with pytest.raises(ConfigError, match="not empty"):  # checked again under the lock
        open_run_dir(plan, None, Dist())


def test_checkpoint_stage_writes_what_the_run_records(tiny_data, tmp_path):
    plan = plan_run(_config(tiny_data, tmp_path / "run"), device="cpu")
    writer = CheckpointWriter(["benign", "malignant"], None, {"out": "x"}, plan.record)
    extra = {"epoch": 3, "phase": "train"}
    writer(tmp_path / "best.pt", snapshot_model(plan.model), extra, None)
    assert writer.last_epoch is None  # best.pt holds no resume state
    writer(tmp_path / "last.pt", snapshot_model(plan.model), extra, {"epoch": 3})
    assert writer.last_epoch == 3
    data = load_checkpoint(tmp_path / "last.pt").data
    assert data["training_data"] == plan.record and data["train_config"] == {"out": "x"}
    assert data["training_state"] == {"epoch": 3} and data["classes"] == ["benign", "malignant"]


def test_trainer_stage_loads_the_run_to_resume(tiny_data, tmp_path):
    out = tmp_path / "run"
    skincls.train_from_config(_config(tiny_data, out, checkpoint_interval=0), progress=False)
    plan = plan_run(_config(tiny_data, out, epochs=3), device="cpu", resume=True)
    trainer, resumed = build_trainer(plan, device="cpu", dist=Dist())
    assert resumed is not None and resumed.epoch == 2
    last = load_checkpoint(out / "last.pt").data["state_dict"]
    assert all(torch.equal(v, last[k]) for k, v in trainer.model.state_dict().items())


def test_fit_stage_trains_with_the_run_s_callbacks(tiny_data, tmp_path):
    plan = plan_run(_config(tiny_data, tmp_path / "run"), device="cpu")
    trainer, resumed = build_trainer(plan, device="cpu", dist=Dist())
    run = open_run_dir(plan, resumed, Dist())
    try:
        history = fit_run(plan, run, trainer, resumed, [], progress=False)
    finally:
        run.release()
    assert [e.epoch for e in history.epochs] == [1, 2]
    assert run_entries(run.path) == [
        "best.pt", "config.json", "history.csv", "history.json", "last.pt", "training_curves.png"
    ]  # fmt: skip
    last = load_checkpoint(run.path / "last.pt").data
    assert last["epoch"] == 2 and last["train_config"]["out"] == str(run.path)


class _Interrupt(Callback):
    """Ctrl-C in the middle of epoch `epoch`."""

    def __init__(self, epoch: int):
        self.epoch, self.current = epoch, 0

    def on_epoch_start(self, trainer, epoch, batches):
        self.current = epoch

    def on_batch_end(self, trainer, loss, accuracy):
        if self.current == self.epoch:
            raise KeyboardInterrupt


def test_an_interrupted_first_epoch_keeps_the_config_and_says_how_to_resume(tiny_data, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Interrupted) as info:
        skincls.train_from_config(
            _config(tiny_data, out), progress=False, callbacks=[_Interrupt(1)]
        )
    assert str(info.value) == (
        f"interrupted in epoch 1: nothing was trained to the end of an epoch; {out} keeps its "
        f"config.json: skincls.train_from_config(..., resume=True, out='{out}') starts it again"
    )
    assert run_entries(out) == ["config.json"]
    result = skincls.train_from_config(_config(tiny_data, out), progress=False, resume=True)
    assert [e.epoch for e in result.history.epochs] == [1, 2]


def test_an_interrupted_later_epoch_names_the_checkpoint_it_resumes_from(tiny_data, tmp_path):
    out = tmp_path / "run"
    every_epoch = {"checkpoint_interval": 0}
    with pytest.raises(Interrupted) as info:
        skincls.train_from_config(
            _config(tiny_data, out, epochs=3, **every_epoch), progress=False,
            callbacks=[_Interrupt(3)],
        )  # fmt: skip
    assert str(info.value) == (
        f"interrupted in epoch 3: {out / 'last.pt'} holds epoch 2; "
        f"skincls.train_from_config(..., resume=True, out='{out}') continues from there"
    )
    assert load_checkpoint(out / "last.pt").data["epoch"] == 2
    with pytest.raises(Interrupted, match=r"epoch 3: .*last.pt holds epoch 2; "):  # resumed
        skincls.train_from_config(
            _config(tiny_data, out, epochs=3, **every_epoch), progress=False, resume=True,
            callbacks=[_Interrupt(3)],
        )  # fmt: skip


def test_an_interrupted_fold_says_its_own_command_resumes_it(tiny_data, tmp_path):
    """A run on the caller's manifest (a cross-validation fold) is not resumed by `skincls train`."""
    out = tmp_path / "fold-1"
    with pytest.raises(Interrupted) as info:
        skincls.train_from_config(
            _config(tiny_data, out), progress=False, callbacks=[_Interrupt(1)],
            manifest=skincls.load_manifest(tiny_data),
        )  # fmt: skip
    assert str(info.value).endswith(
        f"{out} keeps its config.json: the command that started it, with resume=True, starts it "
        "again"
    )


def test_an_interrupted_run_before_its_first_checkpoint_says_so(tiny_data, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Interrupted) as info:
        skincls.train_from_config(
            _config(tiny_data, out, epochs=3, checkpoint_interval=600), progress=False,
            callbacks=[_Interrupt(2)],
        )  # fmt: skip
    assert str(info.value).startswith(
        "interrupted in epoch 2: no checkpoint was written yet (one every 600 s of training, "
        f"train.checkpoint_interval); {out} keeps its config.json: "
        "skincls.train_from_config(..., resume=True, out="
    )
    assert not (out / "last.pt").exists() and (out / "config.json").is_file()


def test_the_cli_says_what_an_interrupted_run_kept(tiny_data, tmp_path, monkeypatch):
    class Interrupting(HistoryWriter, _Interrupt):
        def __init__(self, run_dir):
            HistoryWriter.__init__(self, run_dir)
            _Interrupt.__init__(self, 1)

    monkeypatch.setattr(run_module, "HistoryWriter", Interrupting)
    out = tmp_path / "run"
    r = CliRunner().invoke(
        main, ["train", "--data-dir", str(tiny_data), "--out", str(out), *TINY_TRAIN]
    )
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.splitlines()[-1] == (
        f"Error: interrupted in epoch 1: nothing was trained to the end of an epoch; {out} keeps "
        f"its config.json: skincls train --resume --out {out} starts it again"
    )


def test_a_failure_in_the_first_epoch_still_removes_what_was_written(tiny_data, tmp_path):
    class Broken(Callback):
        def on_batch_end(self, trainer, loss, accuracy):
            raise RuntimeError("a bug")

    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="a bug"):
        skincls.train_from_config(_config(tiny_data, out), progress=False, callbacks=[Broken()])
    assert not out.exists()


def _evaluate(checkpoint):
    args = ["evaluate", str(checkpoint), "--device", "cpu", "--bootstrap", "0", "--json"]
    return CliRunner().invoke(main, args)


def test_evaluate_finds_the_run_s_data_dir_from_another_folder(tiny_data, tmp_path, monkeypatch):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    shutil.copytree(tiny_data, project / "data")
    elsewhere.mkdir()
    monkeypatch.chdir(project)  # trained with relative paths
    cfg = _config(Path("data"), Path("runs/r"), epochs=1)
    skincls.train_from_config(cfg, progress=False)
    saved = json.loads((project / "runs/r/config.json").read_text())
    assert saved["data"]["data_dir"] == str(project / "data") and saved["out"] == "runs/r"
    monkeypatch.chdir(elsewhere)
    r = _evaluate(project / "runs/r")
    assert r.exit_code == 0, r.output
    assert f"data dir: {project / 'data'} (the one it was trained on)" in r.stderr
    assert json.loads(r.stdout)["split"] == "test"

    # An older checkpoint recorded the data dir relative to where training ran: still found.
    best = project / "runs/r/best.pt"
    old = {**saved, "data": {**saved["data"], "data_dir": "data"}}
    update_checkpoint(best, train_config=old)
    assert recorded_data_dir(load_checkpoint(best)) == project / "data"
    r = _evaluate(best)
    assert r.exit_code == 0, r.output
    assert f"data dir: {project / 'data'}" in r.stderr
