"""The evaluator's parts as functions over `Outputs`, on hand-made logits (no model runs)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from skincls.errors import ConfigError, DataError
from skincls.evaluation.calibration import fit_calibration
from skincls.evaluation.measure import OperatingPoint, measure
from skincls.evaluation.outputs import Outputs
from skincls.evaluation.threshold import choose_threshold, fixed_threshold, rescale_choice
from skincls.inference.decision import predict_labels, softmax

CLASSES = ["benign", "malignant"]


def _binary(split: str, p_positive, labels) -> Outputs:
    """Outputs whose softmax gives exactly `p_positive` for class 1 (logits 0 and logit(p))."""
    p = np.asarray(p_positive, dtype=np.float64)
    logits = np.stack([np.zeros_like(p), np.log(p / (1 - p))], axis=1)
    return Outputs(split, logits, np.asarray(labels))


def test_threshold_for_95_percent_sensitivity_on_a_known_set():
    # 20 positives at P = 0.30, 0.33, ..., 0.87; 10 negatives at 0.05 ... 0.50. 19 of 20 positives
    # is 95%: the largest threshold keeping 19 is the second-lowest positive probability, 0.33.
    pos = 0.30 + 0.03 * np.arange(20)
    neg = 0.05 + 0.05 * np.arange(10)
    out = _binary("val", np.r_[pos, neg], [1] * 20 + [0] * 10)
    choice = choose_threshold(out, 0.95)
    assert choice.threshold == pytest.approx(0.33)
    assert choice.method == "target_sensitivity" and choice.split == "val"
    assert (choice.n_images, choice.n_positive) == (30, 20)
    assert choice.sensitivity == pytest.approx(19 / 20)
    assert choice.specificity == pytest.approx(
        6 / 10
    )  # negatives 0.35 ... 0.50 are called positive
    # At a temperature the probabilities move, and the threshold with them: sigmoid(logit(0.33) / 2).
    at_2 = choose_threshold(out, 0.95, temperature=2.0)
    assert at_2.threshold == pytest.approx(1 / (1 + (0.67 / 0.33) ** 0.5))
    assert at_2.temperature == 2.0 and at_2.sensitivity == pytest.approx(19 / 20)
    with pytest.raises(DataError, match="cannot choose a threshold on val: no positive"):
        choose_threshold(_binary("val", neg, [0] * 10), 0.95)


def test_fixed_threshold_range_and_rescaled_choice_keep_decisions():
    with pytest.raises(ConfigError, match=r"threshold must be in \[0, 1\], not 1.5"):
        fixed_threshold(1.5)
    choice = fixed_threshold(0.3, temperature=1.0)
    logits = np.random.default_rng(0).normal(scale=3, size=(400, 2))
    moved, new = rescale_choice(0.3, choice, 1.0, 2.5)
    assert new.threshold == moved and new.temperature == 2.5 and new.method == "fixed"
    before = predict_labels(softmax(logits, 1.0), 0.3)
    assert np.array_equal(before, predict_labels(softmax(logits, 2.5), moved))


def test_temperature_fit_recovers_a_known_temperature():
    rng = np.random.default_rng(1)
    honest = rng.normal(scale=1.5, size=(20000, 3))  # labels drawn from softmax(honest)
    cum = softmax(honest).cumsum(1)
    y = (rng.random((len(cum), 1)) > cum).sum(1)
    result = fit_calibration(Outputs("val", 3.0 * honest, y), tta=True)  # three times too sure
    assert result.temperature == pytest.approx(3.0, rel=0.05)
    assert result.kept and result.worse == [] and result.tta
    assert result.nll_after < result.nll_before and result.ece_after < result.ece_before
    assert (result.split, result.n_images) == ("val", 20000)


@pytest.mark.parametrize(
    ("logits", "labels", "value", "why"),
    [
        # Every image on the right side of the boundary: sharper is always better.
        ([[0, 2.0], [0, 1.0], [0, -1.0], [0, -3.0]], [1, 1, 0, 0], 0.05, "separable"),
        # Logits that say nothing: the flattest temperature allowed.
        ([[0, 0.01], [0, -0.01], [0, 0.01], [0, -0.01]], [0, 1, 1, 0], 20, "nothing"),
    ],
)
def test_a_temperature_fit_at_its_bound_is_flagged(caplog, logits, labels, value, why):
    out = Outputs("val", np.array(logits), np.array(labels))
    with caplog.at_level(logging.WARNING, logger="skincls"):
        result = fit_calibration(out)
    [record] = caplog.records
    line = record.getMessage()
    assert f"fit on val hit its bound (T = {value}" in line and why in line and "(4 images)" in line
    assert "too small" in line and result.temperature == pytest.approx(value, rel=1e-3)


def test_a_fit_inside_its_bounds_is_not_flagged(caplog):
    rng = np.random.default_rng(2)
    z = rng.normal(size=(500, 2))
    y = (rng.random(500) < softmax(z)[:, 1]).astype(int)
    with caplog.at_level(logging.WARNING, logger="skincls"):
        fit_calibration(Outputs("val", z, y))
    assert caplog.records == []


def test_a_worse_calibration_is_marked_and_described(monkeypatch):
    monkeypatch.setattr("skincls.evaluation.calibration.fit_temperature", lambda *a: 0.01)
    out = _binary("val", [0.4, 0.6, 0.45, 0.55], [1, 0, 0, 1])
    result = fit_calibration(out)
    assert not result.kept and result.worse == ["NLL", "ECE"]
    line = result.worse_notice(1.0, "--keep-worse-calibration")
    assert line.startswith("calibration made val NLL ") and "(worse): temperature 0.010" in line
    assert line.endswith("discarded, keeping 1.000 (give --keep-worse-calibration to use it)")
    kept = fit_calibration(out, keep_worse=True)
    assert kept.kept and kept.worse_notice(0.01).endswith("(worse): kept as asked")


def test_measure_outputs_at_an_operating_point():
    out = _binary("test", [0.9, 0.6, 0.2, 0.4, 0.7], [1, 1, 1, 0, 0])
    report = measure(out, CLASSES, OperatingPoint(threshold=0.5), n_bootstrap=0)
    # Called positive: 0.9, 0.6, 0.7 -> TP 2, FN 1, TN 1, FP 1.
    assert report.confusion_matrix == [[1, 1], [1, 2]]
    assert report.sensitivity == pytest.approx(2 / 3) and report.specificity == 0.5
    assert report.threshold_source == "from checkpoint" and report.ci == {}
    argmax = measure(out, CLASSES, OperatingPoint(), n_bootstrap=0)
    [decision] = [ln for ln in argmax.metric_lines() if ln.startswith("Decision:")]
    assert decision == "Decision: argmax; temperature 1.000"  # not "argmax (argmax)"
    [decision] = [ln for ln in report.metric_lines() if ln.startswith("Decision:")]
    assert decision == "Decision: P(malignant) >= 0.5000 (from checkpoint); temperature 1.000"
