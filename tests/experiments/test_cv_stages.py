"""The cross-validation's stages one by one, where no training is needed: the plan and its resume
decision, out-of-fold aggregation, the operating point chosen on it, and what it measures."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from skincls.config import RunConfig
from skincls.errors import ConfigError
from skincls.evaluation.measure import OperatingPoint, measure
from skincls.evaluation.outputs import Outputs
from skincls.experiments.cv import CV_STATE, plan_cv
from skincls.experiments.oof import OOF_SPLIT, fit_operating_point, gather_oof, measure_oof
from skincls.inference.decision import softmax

CLASSES = ["benign", "malignant"]


def _config(data_dir, out, seed=2) -> RunConfig:
    return RunConfig.model_validate(
        {
            "data": {"data_dir": data_dir},
            "train": {"epochs": 1, "device": "cpu", "seed": seed, "precision": "fp32"},
            "out": out,
        }
    )


def _fake_oof(cv_dir, fold: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> list[dict]:
    """Each fold's held-out rows written as the fold loop writes them; their state entries."""
    entries = []
    for k in range(int(fold.max()) + 1):
        rows = np.flatnonzero(fold == k)
        (cv_dir / f"fold{k}").mkdir(parents=True, exist_ok=True)
        np.savez(
            cv_dir / f"fold{k}" / "oof.npz", rows=rows, logits=logits[rows], labels=labels[rows]
        )
        entries.append({"fold": k, "oof": f"fold{k}/oof.npz"})
    return entries


# -- plan -----------------------------------------------------------------------------------------
def test_plan_decides_per_fold_what_a_resume_does(tiny_data, tmp_path):
    cv_dir = tmp_path / "cv"
    with pytest.raises(ConfigError, match=r"nothing to resume: .* does not exist; run without"):
        plan_cv(_config(tiny_data, cv_dir), 3, resume=True)
    plan = plan_cv(_config(tiny_data, cv_dir), 3)
    assert [plan.fold_action(k) for k in range(3)] == ["train"] * 3
    assert sorted(set(plan.fold.tolist())) == [0, 1, 2] and len(plan.fold) == len(plan.records)
    assert (cv_dir / "folds.csv").is_file() and (cv_dir / "config.json").is_file()
    assert plan.fold_run(1).out == cv_dir / "fold1" and plan.fold_run(1).train.seed == 3
    assert plan.precision == "fp32"
    with pytest.raises(ConfigError, match="already holds a cross-validation; add resume=True"):
        plan_cv(_config(tiny_data, cv_dir), 3)

    # A run killed in fold 1: fold 0 in the state file, fold 1 with its last.pt.
    state = json.loads((cv_dir / CV_STATE).read_text())
    state["completed"] = [{"fold": 0, "best_epoch": 1}]
    (cv_dir / CV_STATE).write_text(json.dumps(state))
    (cv_dir / "fold1").mkdir()
    (cv_dir / "fold1" / "last.pt").write_bytes(b"")
    resumed = plan_cv(_config(tiny_data, cv_dir), 3, resume=True)
    assert [resumed.fold_action(k) for k in range(3)] == ["done", "resume", "train"]
    assert (resumed.fold == plan.fold).all()
    # Without --resume a last.pt is no reason to continue (the plan would start that fold over).
    resumed.resume = False
    assert resumed.fold_action(1) == "train"
    resumed.finish_fold({"fold": 1, "best_epoch": 2})
    saved = json.loads((cv_dir / CV_STATE).read_text())["completed"]
    assert [e["fold"] for e in saved] == [0, 1] and resumed.fold_action(1) == "done"

    with pytest.raises(ConfigError, match=r"its fold assignment .* differs"):
        plan_cv(_config(tiny_data, cv_dir, seed=9), 3, resume=True)
    with pytest.raises(ConfigError, match="its tta differs"):
        plan_cv(_config(tiny_data, cv_dir), 3, resume=True, tta=True)


# -- out-of-fold aggregation ----------------------------------------------------------------------
def test_gather_oof_puts_every_folds_rows_back_in_pool_order(tmp_path):
    fold = np.array([2, 0, 1, 0, 2, 1, 1])
    logits = np.arange(14, dtype=np.float32).reshape(7, 2)
    labels = np.array([0, 1, 1, 0, 1, 0, 1])
    entries = _fake_oof(tmp_path, fold, logits, labels)
    oof = gather_oof(tmp_path, entries, len(fold))
    assert oof.split == OOF_SPLIT
    np.testing.assert_array_equal(oof.logits, logits)
    np.testing.assert_array_equal(oof.labels, labels)
    with pytest.raises(ConfigError, match="do not cover every image once"):
        gather_oof(tmp_path, entries[:2], len(fold))  # fold 2's images missing
    with pytest.raises(ConfigError, match="do not cover every image once"):
        gather_oof(tmp_path, [*entries, entries[0]], len(fold))  # fold 0's twice


# -- operating point and measurement --------------------------------------------------------------
def _overconfident(n=3000, factor=4.0, seed=0) -> Outputs:
    rng = np.random.default_rng(seed)
    honest = rng.normal(scale=1.5, size=(n, 2))
    y = (rng.random(n) < softmax(honest)[:, 1]).astype(int)
    return Outputs(OOF_SPLIT, factor * honest, y)


def test_operating_point_calibrates_then_chooses_the_threshold_on_oof():
    oof = _overconfident()
    point = fit_operating_point(oof, CLASSES, target_sensitivity=0.9)
    assert point.temperature == pytest.approx(4.0, rel=0.1) and point.calibration.kept
    choice = point.threshold_choice
    assert choice.split == OOF_SPLIT and choice.temperature == point.temperature
    p = oof.probs(point.temperature)[:, 1]
    assert ((p >= point.threshold) & (oof.labels == 1)).sum() / oof.labels.sum() >= 0.9
    plain = fit_operating_point(oof, CLASSES, calibrate=False, threshold=0.3)
    assert (plain.temperature, plain.threshold, plain.calibration) == (1.0, 0.3, None)
    assert plain.threshold_choice.method == "fixed"
    with pytest.raises(ConfigError, match="exactly two classes"):
        fit_operating_point(
            Outputs(OOF_SPLIT, np.zeros((3, 3)), np.arange(3)), ["a", "b", "c"], threshold=0.5
        )


def test_a_worse_oof_calibration_is_discarded_and_said_in_evaluates_words(monkeypatch, caplog):
    monkeypatch.setattr("skincls.evaluation.calibration.fit_temperature", lambda *a: 0.01)
    oof = _overconfident(n=200, factor=0.5)
    with caplog.at_level(logging.WARNING, logger="skincls"):
        point = fit_operating_point(oof, CLASSES)
    assert point.temperature == 1.0 and not point.calibration.kept
    [line] = [r.getMessage() for r in caplog.records]
    c = point.calibration
    assert line == (
        f"calibration made out-of-fold NLL {c.nll_before:.4f} → {c.nll_after:.4f}, "
        f"ECE {c.ece_before:.4f} → {c.ece_after:.4f} (worse): temperature 0.010 discarded, "
        "keeping 1.000"
    )


def test_measure_oof_gives_the_oof_report_and_each_folds_share():
    oof = _overconfident(n=90, seed=1)
    fold = np.arange(90) % 3
    point = OperatingPoint(temperature=2.0, threshold=0.4)
    measured = measure_oof(oof, fold, CLASSES, point, precision="bf16", n_bootstrap=20, seed=5)
    assert measured.report.split == OOF_SPLIT and measured.report.n_images == 90
    assert measured.report.precision == "bf16" and measured.report.bootstrap_resamples == 20
    for k, got in enumerate(measured.per_fold):
        share = Outputs(f"fold {k}", oof.logits[fold == k], oof.labels[fold == k])
        expected = measure(share, CLASSES, point, precision="bf16", n_bootstrap=0)
        assert got == expected.model_dump()
    accs = [f["accuracy"] for f in measured.per_fold]
    assert measured.mean["accuracy"] == pytest.approx(np.mean(accs))
    assert measured.std["accuracy"] == pytest.approx(np.std(accs, ddof=1))
