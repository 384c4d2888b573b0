"""Cross-validation: grouped stratified folds, out-of-fold predictions, the ensemble, resume, one extraction."""

from __future__ import annotations

import csv
import shutil
import warnings
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import skincls.experiments.cv as cv_mod
import skincls.training.features as features_mod
from skincls.config import RunConfig
from skincls.data.dataset import ManifestDataset, build_transform
from skincls.data.splits import Manifest, Record, load_manifest
from skincls.errors import ConfigError, DataError
from skincls.evaluation.evaluator import Evaluator
from skincls.evaluation.modelcard import render_model_card
from skincls.evaluation.run import evaluate_checkpoint
from skincls.experiments.cv import cross_validate
from skincls.experiments.folds import assign_folds, record_group
from skincls.inference.decision import softmax
from skincls.inference.predict import Predictor
from skincls.inference.tta import dihedral_views
from skincls.models.checkpoint import load_checkpoint
from skincls.preprocessing import Preprocessing
from skincls.training.callbacks import Callback

K = 3
PRE = Preprocessing(resize_size=32, crop_size=32)


class TinyBackbone(nn.Module):
    """A frozen random conv body (bring your own backbone): its features can be cached."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x):
        return torch.relu(self.conv2(torch.relu(self.conv(x))))


def _config(data_dir, out) -> RunConfig:
    return RunConfig.model_validate(
        {
            "data": {"data_dir": data_dir},
            "model": {"head": [8], "dropout": 0.0, "freeze": "backbone"},
            # fp32: exact comparisons below (auto may pick bf16 on a CPU).
            "train": {"epochs": 2, "batch_size": 8, "lr": 0.01, "device": "cpu", "seed": 2}
            # last.pt at each epoch's end: the kill test below dies after one.
            | {"precision": "fp32", "checkpoint_interval": 0},
            "out": out,
        }
    )


def _run(config, **kwargs):
    return cross_validate(
        config, K, progress=False, backbone=TinyBackbone(), preprocessing=PRE, **kwargs
    )


def _count_extractions(mp) -> list[int]:
    calls: list[int] = []
    real = features_mod.extract_features

    def counting(model, dataset, **kwargs):
        calls.append(len(dataset))
        return real(model, dataset, **kwargs)

    mp.setattr(features_mod, "extract_features", counting)
    return calls


@pytest.fixture(scope="module")
def cv_run(tiny_data, tmp_path_factory):
    """One 3-fold CV with a frozen custom backbone, refit, a target sensitivity; extractions counted."""
    root = tmp_path_factory.mktemp("cv")
    data = Path(shutil.copytree(tiny_data, root / "data"))  # the pool's features go to data/.cache
    with pytest.MonkeyPatch.context() as mp:
        calls = _count_extractions(mp)
        result = _run(
            _config(data, root / "run"), refit=True, target_sensitivity=0.8, n_bootstrap=50
        )
    return SimpleNamespace(result=result, extractions=calls, data=data)


def _members(cv_dir: Path):
    return [load_checkpoint(cv_dir / f"fold{k}" / "best.pt") for k in range(K)]


def _member_mean(cv_dir: Path, x: torch.Tensor, temperature: float) -> np.ndarray:
    """The mean of the fold models' calibrated probabilities, computed without the ensemble class."""
    probs = []
    for ckpt in _members(cv_dir):
        model = ckpt.build_model(TinyBackbone())
        with torch.no_grad():
            probs.append(softmax(model(x).numpy(), temperature))
    return np.mean(probs, axis=0)


# -- folds ----------------------------------------------------------------------------------------
def test_folds_are_disjoint_grouped_and_stratified():
    rng = np.random.default_rng(0)
    records = []
    for g in range(120):  # groups of 1-4 images; a group has one label
        label = "malignant" if g % 3 == 0 else "benign"
        for j in range(int(rng.integers(1, 5))):
            records.append(Record(f"{g}_{j}.png", label, "train", cluster=g))
    fold = assign_folds(records, ["benign", "malignant"], 5, seed=1)
    assert fold.shape == (len(records),) and set(fold.tolist()) == set(range(5))  # one fold each
    by_group: dict[int, set[int]] = {}
    for r, k in zip(records, fold):
        by_group.setdefault(r.cluster, set()).add(int(k))
    assert all(len(ks) == 1 for ks in by_group.values()), "a group straddles two folds"
    labels = np.array([r.label == "malignant" for r in records])
    overall = labels.mean()
    for k in range(5):
        assert abs(labels[fold == k].mean() - overall) < 0.08, "fold class mix is not stratified"
        assert abs((fold == k).sum() - len(records) / 5) < 0.25 * len(records) / 5
    assert (assign_folds(records, ["benign", "malignant"], 5, seed=1) == fold).all()  # seeded


def test_group_column_wins_over_duplicate_clusters_and_too_few_groups_is_loud():
    assert record_group(Record("a.png", "benign", "train", cluster=3, group="p7")) == "group:p7"
    # A patient's images (distinct duplicate clusters) share one fold.
    records = [
        Record(f"{p}_{j}.png", "malignant" if p % 2 else "benign", "train", cluster=10 * p + j,
               group=f"patient{p}")
        for p in range(12) for j in range(3)
    ]  # fmt: skip
    fold = assign_folds(records, ["benign", "malignant"], 3, seed=0)
    for p in range(12):
        assert len(set(fold[3 * p : 3 * p + 3].tolist())) == 1
    assert record_group(Record("a.png", "benign", "train", cluster=3)) == "cluster:3"
    assert record_group(Record("a.png", "benign", "train")) == "image:a.png"
    # Two malignant groups (of several images each) cannot fill three folds.
    records = [Record(f"b{i}", "benign", "train", cluster=i) for i in range(6)]
    records += [Record(f"m{i}", "malignant", "train", cluster=100 + i % 2) for i in range(6)]
    with pytest.raises(DataError, match=r"'malignant' has only 2 .*use folds=2 or fewer"):
        assign_folds(records, ["benign", "malignant"], 3)


# -- out-of-fold predictions ----------------------------------------------------------------------
@pytest.mark.slow
def test_every_non_test_image_gets_one_oof_prediction_from_the_model_that_held_it_out(cv_run):
    res = cv_run.result
    manifest = load_manifest(cv_run.data)
    non_test = [r.path for r in manifest.records if r.split != "test"]
    rows = list(csv.DictReader(res.oof_csv.open()))
    assert sorted(r["path"] for r in rows) == sorted(non_test)  # each exactly once, test never
    folds = {r["path"]: int(r["fold"]) for r in csv.DictReader((res.cv_dir / "folds.csv").open())}
    assert all(int(r["fold"]) == folds[r["path"]] for r in rows)
    t = res.report.member_temperature
    by_path = {r.path: r for r in manifest.records}
    for k, ckpt in enumerate(_members(res.cv_dir)):
        mine = [r for r in rows if int(r["fold"]) == k]
        # The fold-k model, run on the images themselves, gives the stored OOF probabilities.
        picked = [replace(by_path[r["path"]], split="train") for r in mine]
        only = Manifest(manifest.root, manifest.classes, picked)
        held = ManifestDataset(only, "train", build_transform(PRE))
        ev = Evaluator(ckpt, backbone=TinyBackbone(), device="cpu", precision="fp32")
        expected = ev.outputs(held).probs(t)[:, 1]
        got = np.array([float(r["p_malignant"]) for r in mine])
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert res.report.oof.n_images == len(non_test) and res.report.oof.split == "out-of-fold"
    assert res.report.oof.threshold_choice.split == "out-of-fold"  # chosen on OOF, not test
    assert len(res.report.fold_results) == K
    accs = [f.metrics["accuracy"] for f in res.report.fold_results]
    assert res.report.mean["accuracy"] == pytest.approx(np.mean(accs))
    assert res.report.std["accuracy"] == pytest.approx(np.std(accs, ddof=1))


def test_oof_report_records_the_precision_the_recipe_ran_in(cv_run):
    # The recipe runs in fp32; "auto" on a CPU with native bf16 would have said bf16.
    oof = cv_run.result.report.oof
    assert oof.precision == "fp32" and "model run in" not in " ".join(oof.metric_lines())


def test_frozen_backbone_features_are_extracted_once_for_all_folds_and_the_refit(cv_run):
    n_pool = sum(r.split != "test" for r in load_manifest(cv_run.data).records)
    assert cv_run.extractions == [n_pool]  # one pass over the pooled images, not one per fold
    assert cv_run.result.refit is not None and cv_run.result.refit.is_file()


# -- the ensemble ---------------------------------------------------------------------------------
def test_ensemble_outputs_the_mean_of_members_calibrated_probabilities(cv_run):
    res = cv_run.result
    t = res.report.member_temperature
    assert abs(t - 1.0) > 1e-3  # otherwise calibration would not be tested
    ens = load_checkpoint(res.ensemble)
    model = ens.build_model(TinyBackbone())
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = softmax(model(x).numpy())
    np.testing.assert_allclose(got, _member_mean(res.cv_dir, x, t), atol=1e-6)
    assert not np.allclose(got, _member_mean(res.cv_dir, x, 1.0), atol=1e-4)
    assert ens.threshold == pytest.approx(res.report.oof.threshold)
    # The members' shared frozen backbone is stored once.
    sd = torch.load(res.ensemble, weights_only=True)["state_dict"]
    ptr = {sd[f"members.{k}.backbone.conv.weight"].untyped_storage().data_ptr() for k in range(K)}
    assert len(ptr) == 1


@pytest.mark.slow
def test_ensemble_works_as_a_checkpoint_with_tta_predict_and_model_card(cv_run, tmp_path):
    res = cv_run.result
    t = res.report.member_temperature
    manifest = load_manifest(cv_run.data)
    test_ds = ManifestDataset(manifest, "test", build_transform(PRE))
    ev = Evaluator(res.ensemble, backbone=TinyBackbone(), device="cpu", tta=True, precision="fp32")
    got = ev.outputs(test_ds).probs(ev.temperature)
    x = torch.stack([test_ds[i][0] for i in range(len(test_ds))])
    views = dihedral_views(x)
    expected = np.mean([_member_mean(res.cv_dir, v, t) for v in views], axis=0)
    np.testing.assert_allclose(got, expected, atol=1e-5)  # TTA averages views of the ensemble

    report = evaluate_checkpoint(
        res.ensemble,
        cv_run.data,
        "test",
        backbone=TinyBackbone(),
        save=False,
        n_bootstrap=0,
        precision="fp32",
    )
    assert report.n_images == len(test_ds) and report.threshold == pytest.approx(ev.threshold)
    image = manifest.root / manifest.select("test")[0].path
    predictor = Predictor.from_checkpoint(
        res.ensemble, "cpu", backbone=TinyBackbone(), precision="fp32"
    )
    pred = predictor.predict([image])
    p1 = _member_mean(res.cv_dir, x[:1], t)[0, 1]
    assert pred[0].probability == pytest.approx(p1, abs=1e-5)
    assert report.training_overlap is not None and report.training_overlap.in_train == 0
    # Every non-test image trained some member: the ensemble knows, and says so on val.
    val = evaluate_checkpoint(
        res.ensemble, cv_run.data, "val", backbone=TinyBackbone(), save=False, n_bootstrap=0
    )
    n_val = len(manifest.select("val"))
    assert val.training_overlap.in_train == n_val and "not a held-out" in val.lines()[1]
    with pytest.raises(DataError, match="training images"):
        Evaluator(res.ensemble, backbone=TinyBackbone(), device="cpu").calibrate(cv_run.data, "val")
    card = render_model_card(load_checkpoint(res.ensemble), report)
    assert f"ensemble of {K} models" in card and "out-of-fold" in card


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_ensemble_export_parity(cv_run, tmp_path, fmt):
    from skincls.inference.export import export_model

    res = cv_run.result
    out = tmp_path / ("ens.onnx" if fmt == "onnx" else "ens.pt")
    result = export_model(res.ensemble, out, format=fmt, backbone=TinyBackbone())
    assert result.max_abs_diff <= 1e-4
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = session.run(None, {"images": images.numpy()})[0]
    else:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter(
                "ignore", FutureWarning
            )  # torch.jit is deprecated in torch >= 2.10
            got = torch.jit.load(str(out)).eval()(images).numpy()
    mean, std = torch.tensor(PRE.mean).view(1, 3, 1, 1), torch.tensor(PRE.std).view(1, 3, 1, 1)
    expected = _member_mean(res.cv_dir, (images - mean) / std, res.report.member_temperature)
    np.testing.assert_allclose(got, expected, atol=1e-5)


# -- resume ---------------------------------------------------------------------------------------
class Killed(Exception):
    pass


class KillInSecondFold(Callback):
    """Dies after the first epoch of the second fold trained (as a kill would, after last.pt)."""

    def __init__(self):
        self.fits = 0

    def on_fit_start(self, trainer):
        self.fits += 1

    def on_epoch_end(self, trainer, record, improved):
        if self.fits == 2 and record.epoch == 1:
            raise Killed


@pytest.mark.slow
def test_killed_cv_resumes_in_the_fold_it_was_in(cv_run, tmp_path, monkeypatch):
    config = _config(cv_run.data, tmp_path / "cv")
    with pytest.raises(Killed):
        _run(config, callbacks=[KillInSecondFold()], n_bootstrap=0)
    fold0 = tmp_path / "cv" / "fold0" / "best.pt"
    before = (fold0.read_bytes(), fold0.stat().st_mtime_ns)
    assert (tmp_path / "cv" / "fold1" / "last.pt").is_file()
    with pytest.raises(ConfigError, match="already holds a cross-validation; add resume=True"):
        _run(config, n_bootstrap=0)

    calls = []
    real = cv_mod.train_from_config

    def spy(run, **kwargs):
        calls.append((run.out.name, kwargs["resume"]))
        return real(run, **kwargs)

    monkeypatch.setattr(cv_mod, "train_from_config", spy)
    extractions = _count_extractions(monkeypatch)
    result = _run(config, resume=True, n_bootstrap=0)
    assert calls == [("fold1", True), ("fold2", False)]  # fold 0 kept, fold 1 continued
    assert extractions == []  # the pooled features were kept on disk
    assert (fold0.read_bytes(), fold0.stat().st_mtime_ns) == before
    # Same numbers as the uninterrupted run with the same recipe.
    for k in range(K):
        a_path = result.cv_dir / f"fold{k}" / "oof.npz"
        with np.load(a_path) as a, np.load(cv_run.result.cv_dir / f"fold{k}" / "oof.npz") as b:
            np.testing.assert_allclose(a["logits"], b["logits"], atol=1e-6)
    with pytest.raises(ConfigError, match="fold assignment"):
        _run(_config(cv_run.data, tmp_path / "cv").model_copy(update={"train": config.train.model_copy(update={"seed": 9})}), resume=True)  # fmt: skip


def test_ensemble_training_record_is_the_union_of_its_members():
    from skincls.experiments.ensemble import _training_record

    def member(train, val, g_train, g_val):
        groups = {"hash": "h", "train": g_train, "val": g_val}
        record = {"data_fingerprint": "fp", "hash": "h", "train": train, "val": val}
        return SimpleNamespace(data={"training_data": {**record, "groups": groups}})

    merged = _training_record(
        [member(["a", "b"], ["c"], ["L1"], ["L2"]), member(["c"], ["a", "d"], ["L2"], ["L3"])]
    )
    # Trained on by any member counts as trained on; only-validated images and lesions stay val.
    assert (merged["train"], merged["val"]) == (["a", "b", "c"], ["d"])
    assert (merged["groups"]["train"], merged["groups"]["val"]) == (["L1", "L2"], ["L3"])
    assert merged["data_fingerprint"] == "fp"


def test_cv_into_a_folder_another_process_writes_is_refused(cv_run, tmp_path):
    from skincls.errors import LockError
    from tests.conftest import lock_held_elsewhere

    out = tmp_path / "cv"
    for command in ("skincls cv", "skincls train"):
        with lock_held_elsewhere(out, command) as pid:
            with pytest.raises(
                LockError, match=f"in use by pid {pid} .*{command}.*give another out$"
            ):
                _run(_config(cv_run.data, out), n_bootstrap=0)
            assert not (out / cv_mod.CV_STATE).exists()


class TrainIntoTheCV(Callback):
    """While the first fold trains, `skincls train --out CV_DIR` (that CV's own folder)."""

    def __init__(self, data, cv_dir):
        self.data, self.cv_dir, self.result = data, cv_dir, None

    def on_epoch_end(self, trainer, record, improved):
        from click.testing import CliRunner

        from skincls.cli import main
        from tests.conftest import TINY_TRAIN

        args = ["train", "--data-dir", str(self.data), "--out", str(self.cv_dir), *TINY_TRAIN]
        self.result = CliRunner().invoke(main, [*args, "--overwrite"])
        raise Killed


def test_a_running_cv_holds_its_folder(cv_run, tmp_path):
    out = tmp_path / "cv"
    intruder = TrainIntoTheCV(cv_run.data, out)
    with pytest.raises(Killed):
        _run(_config(cv_run.data, out), callbacks=[intruder], n_bootstrap=0)
    r = intruder.result
    assert r.exit_code == 1 and f"{out} is in use by pid" in r.output and "skincls cv" in r.output
    assert (out / cv_mod.CV_STATE).is_file() and "smallcnn" not in (out / "config.json").read_text()
