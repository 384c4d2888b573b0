"""Operating points that hold: what the threshold reached where it was chosen, and a warning with
its confidence interval when too few positive images there to place it."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from skincls.cli import main
from skincls.errors import spell_options
from skincls.evaluation.report import OUT_OF_FOLD, ThresholdChoice, wilson_interval
from skincls.experiments.oof import OOF_SPLIT


def test_wilson_interval_matches_the_textbook():
    lo, hi = wilson_interval(47, 50)
    assert lo == pytest.approx(0.8378, abs=1e-4) and hi == pytest.approx(0.9794, abs=1e-4)
    assert wilson_interval(0, 0) is None
    assert wilson_interval(10, 10)[1] == 1.0


def _choice(split: str, n_positive: int, sensitivity: float = 0.957) -> ThresholdChoice:
    return ThresholdChoice(
        threshold=0.31, method="target_sensitivity", target_sensitivity=0.95, split=split,
        n_images=2 * n_positive, n_positive=n_positive, sensitivity=sensitivity, specificity=0.71,
    )  # fmt: skip


def test_small_validation_split_is_flagged_with_its_ci_and_the_cv_advice():
    lines = [spell_options(line) for line in _choice("val", 94).source_lines()]
    lo, hi = wilson_interval(90, 94)
    assert lines[0] == (
        "At this threshold on val (n=188, 94 positive), where it was chosen: sensitivity 0.957 "
        f"[95% CI {lo:.3f}-{hi:.3f}], specificity 0.710"
    )
    assert lines[1].startswith("WARNING: 94 positive images in val are too few")
    assert "skincls.cross_validate(..., target_sensitivity=0.95)" in lines[1]


def test_enough_positives_hold_the_point_and_out_of_fold_is_not_sent_to_cv():
    assert len(_choice("val", 2000, 0.95).source_lines()) == 1  # no warning
    assert OUT_OF_FOLD == OOF_SPLIT
    small_oof = _choice(OOF_SPLIT, 94).source_lines()
    assert "cross_validate" not in small_oof[1] and "more labelled images" in small_oof[1]
    fixed = ThresholdChoice(threshold=0.5, method="fixed")
    assert fixed.source_lines() == []


def test_evaluate_reports_the_point_on_val_and_on_test(ckpt, tiny_data):
    args = ["evaluate", str(ckpt), "--data-dir", str(tiny_data), "--target-sensitivity", "0.9"]
    result = CliRunner().invoke(main, [*args, "--bootstrap", "20", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())  # rich wraps long lines
    assert "At this threshold on val (n=" in out and "where it was chosen: sensitivity" in out
    assert "WARNING:" in out and "skincls cv --target-sensitivity 0.9: its ensemble.pt" in out
    assert "Test Sensitivity:" in out and "Test Specificity:" in out
