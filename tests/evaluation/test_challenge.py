"""The ISIC challenges' ranking metrics, against the ISIC scorer (`isic-challenge-scoring`), the 2024
Kaggle metric's own formula and hand computations."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score, roc_curve

from skincls.cli import main
from skincls.cli.evaluate import CHALLENGES as CLI_CHALLENGES
from skincls.errors import ConfigError
from skincls.evaluation.challenge import (
    CHALLENGES,
    balanced_multiclass_accuracy,
    challenge_metrics,
    partial_auc_above_tpr,
    sensitivity_at_specificity,
)

SEEDS = (0, 1, 2)


def _binary(seed: int, n: int = 300):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0.001, 0.999)
    return y, np.stack([1 - p, p], axis=1)


def _multiclass(seed: int, c: int, n: int = 400):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    probs = rng.dirichlet(np.ones(c), n) + 0.3 * np.eye(c)[y] * rng.random((n, 1))
    return y, probs / probs.sum(axis=1, keepdims=True)


def _kaggle_2024(y, p, min_tpr=0.80):
    """The ISIC 2024 Kaggle metric's formula: flip labels and scores, sklearn's McClish-standardised
    partial AUC at max_fpr, mapped back to the raw area in [0.5 * max_fpr**2, max_fpr]."""
    max_fpr = 1 - min_tpr
    scaled = roc_auc_score(1 - y, 1 - p, max_fpr=max_fpr)
    return 0.5 * max_fpr**2 + (max_fpr - 0.5 * max_fpr**2) / 0.5 * (scaled - 0.5)


def test_cli_choices_are_the_library_challenges():
    assert tuple(CHALLENGES) == CLI_CHALLENGES


@pytest.mark.parametrize("challenge,c", [("isic2018", 7), ("isic2019", 8)])
@pytest.mark.parametrize("seed", SEEDS)
def test_balanced_multiclass_accuracy_equals_the_isic_scorer(challenge, c, seed):
    pd = pytest.importorskip("pandas")
    scoring = pytest.importorskip("isic_challenge_scoring.metrics")
    y, probs = _multiclass(seed, c)
    names = list(CHALLENGES[challenge][2])
    truth = pd.DataFrame(np.eye(c)[y], columns=names)
    pred = pd.DataFrame(probs, columns=names)
    weights = pd.Series(np.ones(len(y)))
    ref = scoring.balanced_multiclass_accuracy(truth, pred, weights)
    got = challenge_metrics(challenge, y, probs, names, c - 1)
    assert got.value == pytest.approx(ref, abs=1e-6)
    assert got.note is None and got.metric == "balanced_multiclass_accuracy"
    # By hand: mean of per-class recall.
    pred_k = probs.argmax(1)
    assert got.value == pytest.approx(np.mean([(pred_k[y == k] == k).mean() for k in range(c)]))


@pytest.mark.parametrize("seed", SEEDS)
def test_isic2020_is_the_melanoma_roc_auc_of_the_isic_scorer(seed):
    pd = pytest.importorskip("pandas")
    scoring = pytest.importorskip("isic_challenge_scoring.metrics")
    y, probs = _binary(seed)
    weights = pd.Series(np.ones(len(y)))
    ref = scoring.auc(pd.Series(y.astype(float)), pd.Series(probs[:, 1]), weights)
    got = challenge_metrics("isic2020", y, probs, ["benign", "malignant"], 1)
    assert got.value == pytest.approx(ref, abs=1e-6)
    assert got.scored_class == "malignant" and "melanoma score" in got.note
    # A multiclass model is scored on its mel column, one-vs-rest.
    y7, p7 = _multiclass(seed, 7)
    names = list(CHALLENGES["isic2018"][2])
    got7 = challenge_metrics("isic2020", y7, p7, names, 6)
    assert got7.value == pytest.approx(roc_auc_score(y7 == 0, p7[:, 0]), abs=1e-12)
    assert got7.scored_class == "mel" and got7.note is None


@pytest.mark.parametrize("seed", SEEDS)
def test_isic2024_pauc_equals_the_kaggle_metric_and_relates_to_the_isic_scorers(seed):
    y, probs = _binary(seed)
    p = probs[:, 1]
    got = challenge_metrics("isic2024", y, probs, ["benign", "malignant"], 1)
    assert got.value == pytest.approx(_kaggle_2024(y, p), abs=1e-6)
    assert 0 <= got.value <= 0.2
    # isic-challenge-scoring's `auc_sens_80` is a different quantity: the area under the whole ROC
    # curve right of the point where sensitivity reaches 0.8, the rectangle below TPR 0.8 included.
    # Taking that rectangle, 0.8 x (1 - FPR at TPR 0.8), away gives the 2024 pAUC.
    pd = pytest.importorskip("pandas")
    scoring = pytest.importorskip("isic_challenge_scoring.metrics")
    weights = pd.Series(np.ones(len(y)))
    sens80 = scoring.auc_above_sensitivity(pd.Series(y.astype(float)), pd.Series(p), weights, 0.8)
    fpr, tpr, _ = roc_curve(y, p, drop_intermediate=False)
    i = tpr.searchsorted(0.8, side="left")
    fpr_at_80 = np.interp(0.8, tpr[i - 1 : i + 1], fpr[i - 1 : i + 1])
    assert got.value == pytest.approx(sens80 - 0.8 * (1 - fpr_at_80), abs=1e-6)


def test_pauc_of_perfect_random_and_reversed_scores():
    y = np.r_[np.zeros(50, int), np.ones(50, int)]
    assert partial_auc_above_tpr(y, y.astype(float)) == pytest.approx(0.2)
    assert partial_auc_above_tpr(y, np.full(100, 0.5)) == pytest.approx(0.02)  # 0.2² / 2
    assert partial_auc_above_tpr(y, 1.0 - y) == pytest.approx(0.0)
    assert np.isnan(partial_auc_above_tpr(np.ones(5, int), np.linspace(0, 1, 5)))


def test_sensitivity_at_specificity_by_hand():
    # Negatives at 0.0, 0.1, ..., 0.9; positives at 0.55, 0.65, ..., 0.95. Specificity >= 90% allows
    # one false positive (0.9): the lowest such threshold is 0.85, which keeps 2 of 5 positives;
    # >= 95% allows none: threshold 0.95, 1 of 5.
    y = np.r_[np.zeros(10, int), np.ones(5, int)]
    p = np.r_[np.arange(10) / 10, 0.55 + np.arange(5) / 10]
    assert sensitivity_at_specificity(y, p, 0.90) == pytest.approx(2 / 5)
    assert sensitivity_at_specificity(y, p, 0.95) == pytest.approx(1 / 5)
    assert sensitivity_at_specificity(y, p, 0.80) == pytest.approx(3 / 5)


def test_model_classes_the_challenge_cannot_score_are_refused_or_noted():
    y, probs = _multiclass(0, 3)
    with pytest.raises(ConfigError, match=r"challenge='isic2024' scores a binary malignancy"):
        challenge_metrics("isic2024", y, probs, ["a", "b", "c"], 2)
    with pytest.raises(ConfigError, match=r"unknown challenge='isic2017'; choose one of"):
        challenge_metrics("isic2017", y, probs, ["a", "b", "c"], 2)
    got = challenge_metrics("isic2019", y, probs, ["a", "b", "c"], 2)
    assert got.note == "on the model's 3 classes, not the challenge's 8"
    assert got.value == pytest.approx(balanced_multiclass_accuracy(y, probs))
    # One class only: undefined, None, never a number.
    one = challenge_metrics("isic2020", np.ones(4, int), np.full((4, 2), 0.5), ["b", "m"], 1)
    assert one.value is None and one.sensitivity_at_specificity == {"0.90": None, "0.95": None}


def test_evaluate_cli_reports_the_challenge_metric(ckpt, tiny_data):
    args = ["evaluate", str(ckpt), "--data-dir", str(tiny_data), "--bootstrap", "0"]
    r = CliRunner().invoke(main, [*args, "--challenge", "isic2024"])
    assert r.exit_code == 0, r.output
    assert "Test isic2024 metric, partial ROC-AUC above 80% sensitivity (range 0-0.2)" in r.output
    r = CliRunner().invoke(main, [*args, "--challenge", "isic2020", "--json"])
    assert r.exit_code == 0, r.output
    import json

    report = json.loads(r.stdout)
    assert report["challenge"]["challenge"] == "isic2020"
    assert report["challenge"]["value"] == pytest.approx(report["roc_auc"])
