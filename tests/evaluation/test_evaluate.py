"""Evaluation: metrics against torchmetrics and hand counts, a val-only threshold, calibration, CLI."""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.metrics import brier_score_loss, confusion_matrix, roc_auc_score
from torchmetrics.functional import classification as tmf

from skincls.cli import main
from skincls.errors import ConfigError
from skincls.evaluation import metrics as M
from skincls.evaluation.calibration import fit_temperature
from skincls.evaluation.evaluator import Evaluator
from skincls.evaluation.run import evaluate_checkpoint
from skincls.inference.decision import predict_labels, softmax
from skincls.models.checkpoint import load_checkpoint
from skincls.models.classifier import create_model


def _random_binary(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0.001, 0.999)  # informative but imperfect
    return y, p


def test_binary_metrics_match_torchmetrics():
    y, p = _random_binary()
    t = 0.4567  # no p equals it, so ">=" (skincls) and ">" (torchmetrics) agree
    m = M.binary_metrics(y, p, t)
    P, Y = torch.tensor(p), torch.tensor(y)
    assert m["accuracy"] == pytest.approx(float(tmf.binary_accuracy(P, Y, threshold=t)))
    assert m["sensitivity"] == pytest.approx(float(tmf.binary_recall(P, Y, threshold=t)))
    assert m["specificity"] == pytest.approx(float(tmf.binary_specificity(P, Y, threshold=t)))
    assert m["ppv"] == pytest.approx(float(tmf.binary_precision(P, Y, threshold=t)))
    assert m["roc_auc"] == pytest.approx(float(tmf.binary_auroc(P, Y)))
    assert m["pr_auc"] == pytest.approx(float(tmf.binary_average_precision(P, Y)))
    assert m["confusion_matrix"] == tmf.binary_confusion_matrix(P, Y, threshold=t).tolist()
    probs = np.stack([1 - p, p], 1)
    ece_ref = float(tmf.binary_calibration_error(P, Y, n_bins=15, norm="l1"))
    assert M.expected_calibration_error(y, probs, 15) == pytest.approx(ece_ref, abs=1e-6)


def test_binary_metrics_by_hand():
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([0.1, 0.6, 0.3, 0.8, 0.45])
    m = M.binary_metrics(y, p, 0.5)  # predictions 0 1 0 1 0: TN=2 FP=1 FN=1 TP=1
    assert m["confusion_matrix"] == [[2, 1], [1, 1]]
    assert (m["sensitivity"], m["specificity"]) == (0.5, pytest.approx(2 / 3))
    assert (m["ppv"], m["npv"]) == (0.5, pytest.approx(2 / 3))
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert m["roc_auc"] == pytest.approx(5 / 6)  # 5 of the 6 (pos, neg) pairs are ordered right
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert M.binary_metrics(y, p, 0.45)["sensitivity"] == 1.0  # threshold is inclusive


def test_multiclass_metrics_match_torchmetrics():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(200, 3))
    y = (logits + rng.normal(scale=1.5, size=logits.shape)).argmax(1)
    probs = softmax(logits)
    m = M.multiclass_metrics(y, probs)
    P, Y = torch.tensor(probs), torch.tensor(y)
    assert m["accuracy"] == pytest.approx(float(tmf.multiclass_accuracy(P, Y, 3, average="micro")))
    assert m["roc_auc"] == pytest.approx(float(tmf.multiclass_auroc(P, Y, 3, average="macro")))
    # Reference: scikit-learn's own multi-class Brier score (scikit-learn >= 1.7).
    assert m["brier"] == pytest.approx(brier_score_loss(y, probs, labels=[0, 1, 2]))
    ece_ref = float(tmf.multiclass_calibration_error(P, Y, 3, n_bins=15))
    assert M.expected_calibration_error(y, probs, 15) == pytest.approx(ece_ref, abs=1e-6)


def test_select_threshold_is_the_largest_reaching_the_target():
    y, p = _random_binary(seed=2)
    t = M.select_threshold(y, p, 0.95)
    assert M.binary_metrics(y, p, t)["sensitivity"] >= 0.95
    # Brute force: no larger candidate threshold reaches the target.
    larger = [c for c in np.unique(p) if c > t]
    assert all(M.binary_metrics(y, p, c)["sensitivity"] < 0.95 for c in larger)


def test_rescaled_threshold_keeps_decisions():
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=3, size=(500, 2))
    before = predict_labels(softmax(logits, 1.0), 0.3)
    t2 = M.rescale_threshold(0.3, 1.0, 2.5)
    assert np.array_equal(before, predict_labels(softmax(logits, 2.5), t2))


@pytest.mark.slow
def test_bootstrap_ci_is_seeded_and_contains_the_estimate():
    y, p = _random_binary(n=200, seed=4)
    a = M.bootstrap_ci(y, p, 0.5, n_resamples=300, seed=7)
    assert a == M.bootstrap_ci(y, p, 0.5, n_resamples=300, seed=7)
    assert a != M.bootstrap_ci(y, p, 0.5, n_resamples=300, seed=8)
    point = M.binary_metrics(y, p, 0.5)
    for name, (lo, hi) in a.items():
        assert lo < point[name] < hi, name


def test_temperature_scaling_lowers_ece_of_an_overconfident_model():
    rng = np.random.default_rng(5)
    honest = rng.normal(scale=1.5, size=(4000, 2))  # calibrated by construction: y ~ softmax
    y = (rng.random(4000) < softmax(honest)[:, 1]).astype(int)
    logits = 5 * honest  # the same ranking, five times too sure
    val, test = slice(0, 2000), slice(2000, None)
    t = fit_temperature(logits[val], y[val])
    assert 4 < t < 6.5
    before = M.expected_calibration_error(y[test], softmax(logits[test]))
    after = M.expected_calibration_error(y[test], softmax(logits[test], t))
    assert after < before / 3
    # Ranking (and hence AUC) is unchanged by a temperature.
    p1, pt = softmax(logits[test])[:, 1], softmax(logits[test], t)[:, 1]
    assert M.binary_metrics(y[test], p1)["roc_auc"] == pytest.approx(
        M.binary_metrics(y[test], pt)["roc_auc"]
    )


def test_threshold_is_chosen_on_val_only(ckpt, tiny_data, tmp_path, monkeypatch):
    calls = []
    real = M.select_threshold

    def spy(y_val, p_val, target):
        calls.append(len(y_val))
        return real(y_val, p_val, target)

    monkeypatch.setattr(M, "select_threshold", spy)
    ev = Evaluator(ckpt, device="cpu")
    n_val = len(ev.outputs(tiny_data, "val").labels)
    choice = ev.choose_threshold(tiny_data, "val", target_sensitivity=0.9)
    assert calls == [n_val] and choice.split == "val" and choice.n_images == n_val

    # Poison the test labels (flip every one): the chosen threshold must not move.
    poisoned = tmp_path / "poisoned"
    shutil.copytree(tiny_data, poisoned)
    rows = list(csv.DictReader((poisoned / "manifest.csv").open()))
    flip = {"benign": "malignant", "malignant": "benign"}
    for r in rows:
        if r["split"] == "test":
            r["label"] = flip[r["label"]]
    with (poisoned / "manifest.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    again = Evaluator(ckpt, device="cpu").choose_threshold(poisoned, target_sensitivity=0.9)
    assert again.threshold == choice.threshold

    with pytest.raises(ConfigError, match="test split"):
        ev.choose_threshold(tiny_data, "test", target_sensitivity=0.9)
    with pytest.raises(ConfigError, match="test split"):
        ev.calibrate(tiny_data, "test")


def test_evaluate_stores_threshold_and_temperature(ckpt, tiny_data):
    report = evaluate_checkpoint(
        ckpt,
        tiny_data,
        "test",
        calibrate=True,
        target_sensitivity=0.9,
        device="cpu",
        n_bootstrap=100,
        save=True,
    )
    stored = load_checkpoint(ckpt)
    assert stored.threshold == pytest.approx(report.threshold)
    assert stored.temperature == pytest.approx(report.temperature) != 1.0
    assert stored.data["threshold_info"]["split"] == "val"
    assert stored.data["calibration"]["split"] == "val"
    assert stored.metrics["test"]["n_images"] == report.n_images
    # A later evaluation without options uses what was stored.
    later = Evaluator(ckpt, device="cpu").evaluate(tiny_data, "test", n_bootstrap=0)
    assert later.threshold == pytest.approx(report.threshold)
    assert later.sensitivity == report.sensitivity and later.ci == {}


@pytest.mark.slow
def test_evaluate_cli_json_and_plots(ckpt, tiny_data, tmp_path):
    # The model's 8-view logits on val, its temperature fitted there, and a threshold that calls the
    # top three of P(malignant) positive: an asymmetric confusion matrix (PPV != NPV, FP != FN).
    out = Evaluator(ckpt, device="cpu", tta=True, precision="fp32").outputs(tiny_data, "val")
    t = fit_temperature(out.logits, out.labels)
    z = torch.tensor(out.logits, dtype=torch.float64) / t
    p = torch.softmax(z, -1).mean(1)[:, 1].numpy()  # mean over the views of P(malignant)
    threshold = float(np.sort(p)[-4:-2].mean())
    plots = tmp_path / "plots"
    r = CliRunner().invoke(
        main,
        ["evaluate", str(ckpt), "--data-dir", str(tiny_data), "--split", "val", "--json",
         "--tta", "--calibrate", "--threshold", repr(threshold), "--plots", str(plots),
         "--bootstrap", "50", "--device", "cpu", "--precision", "fp32"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)  # notices go to stderr
    assert report["split"] == "val" and report["n_images"] == len(p) and report["tta"] is True
    assert report["threshold"] == threshold and report["threshold_choice"]["method"] == "fixed"
    assert report["temperature"] == pytest.approx(t) and t != 1.0
    # Every number again by hand.
    y, pred = out.labels, (p >= threshold).astype(int)
    tp, fn = int(((pred == 1) & (y == 1)).sum()), int(((pred == 0) & (y == 1)).sum())
    tn, fp = int(((pred == 0) & (y == 0)).sum()), int(((pred == 1) & (y == 0)).sum())
    assert report["confusion_matrix"] == [[tn, fp], [fn, tp]] and tp + fp == 3 and fp != fn
    assert report["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert report["specificity"] == pytest.approx(tn / (tn + fp))
    assert report["ppv"] == pytest.approx(tp / (tp + fp))
    assert report["npv"] == pytest.approx(tn / (tn + fn))
    assert report["brier"] == pytest.approx(np.mean((p - y) ** 2))
    ece = tmf.binary_calibration_error(torch.tensor(p), torch.tensor(y), n_bins=15, norm="l1")
    assert report["ece"] == pytest.approx(float(ece), abs=1e-6)
    assert set(report["ci"]) == {"accuracy", "roc_auc", "sensitivity", "specificity"}
    names = sorted(p.name for p in plots.glob("*.png"))
    assert names == ["val_confusion.png", "val_pr.png", "val_reliability.png", "val_roc.png"]
    assert all(p.stat().st_size < 200_000 for p in plots.glob("*.png"))


@pytest.mark.slow
def test_evaluate_cli_text_keeps_the_original_lines(ckpt, tiny_data):
    r = CliRunner().invoke(main, ["evaluate", str(ckpt), "--data-dir", str(tiny_data)])
    assert r.exit_code == 0, r.output
    for needle in ("Test Accuracy of Benign:", "Test Accuracy of Malignant:", "Sensitivity:",
                   "95% CI", "ECE (15 bins)", "Decision: argmax"):  # fmt: skip
        assert needle in r.output, needle


def test_datasets_and_more_than_two_classes():
    from torch.utils.data import TensorDataset

    torch.manual_seed(0)
    model = create_model("smallcnn", weights="none", head=(8,), num_classes=3, freeze="none")
    pre = model.preprocessing
    x, y = torch.randn(30, 3, 32, 32), torch.tensor([0] * 15 + [1] * 10 + [2] * 5)
    ev = Evaluator(
        model,
        classes=["a", "b", "c"],
        preprocessing=pre.with_size(32),
        device="cpu",
        precision="fp32",
    )
    report = ev.evaluate(TensorDataset(x, y), split="holdout")
    assert report.split == "holdout" and report.n_images == 30
    with torch.no_grad():
        probs = torch.softmax(model.eval()(x), 1).numpy()
    pred = probs.argmax(1)
    assert report.confusion_matrix == confusion_matrix(y, pred, labels=[0, 1, 2]).tolist()
    assert [(c.name, c.correct, c.total) for c in report.per_class] == [
        (name, int(((pred == k) & (y.numpy() == k)).sum()), total)
        for k, (name, total) in enumerate(zip("abc", (15, 10, 5)))
    ]
    assert report.sensitivity is None and report.threshold is None and report.ci == {}
    # Macro (not prevalence-weighted) one-vs-rest, as scikit-learn computes it.
    macro = roc_auc_score(y, probs, multi_class="ovr")
    assert macro != pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="weighted"))
    assert report.roc_auc == pytest.approx(macro, abs=1e-6)
    with pytest.raises(ConfigError, match="two classes"):
        ev.choose_threshold(TensorDataset(x, y), target_sensitivity=0.9)


def test_recalibrating_rechooses_a_target_sensitivity_threshold_with_tta(ckpt, tiny_data):
    # With TTA, P(positive) averages several views, so rescaling a threshold to a new temperature
    # would not keep its decisions; the stored val sensitivity/specificity must stay true.
    ev = Evaluator(ckpt, device="cpu", tta=True)
    ev.choose_threshold(tiny_data, "val", target_sensitivity=0.9)
    ev.calibrate(tiny_data, "val")
    choice = ev.threshold_choice
    assert choice.temperature == pytest.approx(ev.temperature)
    out = ev.outputs(tiny_data, "val")
    y = (out.labels == ev.positive).astype(int)
    p = out.probs(ev.temperature)[:, ev.positive]
    at = M.binary_metrics(y, p, ev.threshold)
    assert at["sensitivity"] == pytest.approx(choice.sensitivity)
    assert at["specificity"] == pytest.approx(choice.specificity)
    assert at["sensitivity"] >= 0.9


def test_plots_leave_the_callers_matplotlib_backend_alone(tmp_path):
    # A notebook's inline backend must survive `--plots` and training curves (no pyplot.use("Agg")).
    import importlib

    import matplotlib

    from skincls.evaluation import plots

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        importlib.reload(plots)  # as if first imported now, under the caller's backend
        y, p = np.array([0, 1, 0, 1]), np.array([0.2, 0.7, 0.4, 0.9])
        path = plots.plot_roc(y, p, tmp_path / "roc.png", "test n=4")
        assert matplotlib.get_backend() == "svg"
        assert path and (tmp_path / "roc.png").read_bytes()[:4] == b"\x89PNG"
    finally:
        matplotlib.use(before)


def test_nan_outputs_are_refused_not_measured(ckpt, tiny_data, monkeypatch):
    import skincls.evaluation.outputs as ev

    real = ev.model_logits

    def overflowing(model, x, *args):
        out = real(model, x, *args).clone()
        out[0] = float("nan")  # e.g. fp16 overflow on one image of each batch
        return out

    monkeypatch.setattr(ev, "model_logits", overflowing)
    args = ["evaluate", str(ckpt), "--data-dir", str(tiny_data), "--bootstrap", "0", "--no-save"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    assert len(r.output.strip().splitlines()) == 1 and "NaN or infinite on" in r.output


def test_one_evaluation_reads_the_manifest_once_and_again_when_it_changes(
    ckpt, tiny_data, monkeypatch
):
    import skincls.evaluation.evaluator as evaluator_module

    calls = []
    real = evaluator_module.load_manifest
    monkeypatch.setattr(evaluator_module, "load_manifest", lambda d: calls.append(d) or real(d))
    ev = Evaluator(ckpt, device="cpu")
    first = ev.evaluate(tiny_data, "test", n_bootstrap=0, by=["skin_tone"], min_group_n=1)
    assert len(calls) == 1
    manifest = tiny_data / "manifest.csv"
    st = manifest.stat()
    os.utime(manifest, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # fetched again
    again = ev.evaluate(tiny_data, "test", n_bootstrap=0)
    assert len(calls) == 2 and again.confusion_matrix == first.confusion_matrix
