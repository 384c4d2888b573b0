"""Subgroup reports: per-group metrics at the one threshold, small groups flagged, the largest gap."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from skincls.cli import main
from skincls.data.fetch import fetch
from skincls.data.splits import Record
from skincls.errors import ConfigError
from skincls.evaluation.subgroups import age_band, column_values, subgroup_tables

from ..data.dermo import ham_archive, make_ham


def _hand_made():
    """Group a (40): perfect. Group b (40): 10 of 20 positives and 15 of 20 negatives right.
    Group c (5, small): every positive missed. Threshold 0.5."""
    y = np.r_[[1] * 20 + [0] * 20, [1] * 20 + [0] * 20, [1] * 3 + [0] * 2]
    p = np.r_[
        [0.9] * 20 + [0.1] * 20,
        [0.8] * 10 + [0.2] * 10 + [0.1] * 15 + [0.7] * 5,
        [0.3] * 3 + [0.6] * 2,
    ]
    values = ["a"] * 40 + ["b"] * 40 + ["c"] * 5
    return y, p, values


def test_per_group_values_small_group_flagged_and_the_gap():
    y, p, values = _hand_made()
    (table,) = subgroup_tables(y, p, 0.5, {"site": values}, min_group_n=30, n_bootstrap=200)
    rows = {r.value: r for r in table.rows}
    assert [r.value for r in table.rows] == ["a", "b", "c"]  # c is flagged, not dropped
    assert (rows["a"].n, rows["a"].positives, rows["a"].small) == (40, 20, False)
    assert rows["a"].sensitivity == 1.0 and rows["a"].specificity == 1.0
    assert rows["b"].sensitivity == pytest.approx(0.5) and rows["b"].specificity == 0.75
    # b's ROC-AUC by hand: positives at 0.8 beat every negative (10 x 20), positives at 0.2 beat
    # the 15 negatives at 0.1 and lose to the 5 at 0.7: (200 + 150) / 400.
    assert rows["b"].roc_auc == pytest.approx(350 / 400)
    assert rows["c"].small and rows["c"].n == 5 and rows["c"].sensitivity == 0.0
    lo, hi = rows["b"].ci["sensitivity"]
    assert lo <= 0.5 <= hi and hi - lo > 0.1
    gaps = {g.metric: g for g in table.gaps}
    # c (sensitivity 0) would be the extreme; being small it is left out of the gap.
    assert (gaps["sensitivity"].high, gaps["sensitivity"].low) == ("a", "b")
    assert gaps["sensitivity"].gap == pytest.approx(0.5)
    assert gaps["specificity"].gap == pytest.approx(0.25)
    lo, hi = gaps["sensitivity"].ci
    assert lo <= 0.5 <= hi and lo > 0  # a is perfect in every resample: the gap is b's shortfall
    lines = table.lines("P(malignant) >= 0.5000")
    assert lines[0].startswith("Subgroups by site (at P(malignant) >= 0.5000; 95% CI; * = under 30")
    assert any(line.startswith("  c *: n=5, 3 positive") for line in lines)
    assert any("largest sensitivity gap: 0.500 [CI" in line and "(a - b)" in line for line in lines)
    # Seeded: the same call gives the same intervals.
    again = subgroup_tables(y, p, 0.5, {"site": values}, min_group_n=30, n_bootstrap=200)
    assert again[0] == table


def test_a_group_without_positives_has_no_sensitivity_and_no_gap_of_it():
    y = np.r_[[0] * 40, [1] * 20 + [0] * 20]
    p = np.r_[[0.1] * 40, [0.9] * 20 + [0.1] * 20]
    (table,) = subgroup_tables(y, p, 0.5, {"sex": ["f"] * 40 + ["m"] * 40}, n_bootstrap=50)
    f = table.rows[0]
    assert f.sensitivity is None and f.roc_auc is None and f.ci["sensitivity"] is None
    assert [g.metric for g in table.gaps] == ["specificity"]


def test_age_bands_and_column_values():
    assert [age_band(a) for a in ("5", "29.9", "30", "49", "50.0", "69", "70", "85", "", "x")] == [
        "<30", "<30", "30-49", "30-49", "50-69", "50-69", ">=70", ">=70", "unknown", "unknown",
    ]  # fmt: skip
    recs = [
        Record("a.jpg", "benign", "test", attributes=(("age", "45"), ("sex", "male"))),
        Record("b.jpg", "benign", "test", attributes=(("age", "72"),)),
    ]
    assert column_values(recs, "age_band") == ["30-49", ">=70"]
    assert column_values(recs, "sex") == ["male", "unknown"]
    assert column_values(recs, "label") == ["benign", "benign"]
    with pytest.raises(ConfigError, match=r"by='fitzpatrick': no image of this split has a"):
        column_values(recs, "fitzpatrick")


@pytest.fixture(scope="module")
def ham_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("hamsub")
    ham = make_ham(root / "ham", n=60)
    fetch(root / "d", archive=ham_archive(ham, root / "ham.zip"), near_dup_distance=-1)
    return root / "d"


def test_evaluate_by_sex_through_the_cli(ckpt, ham_data, tmp_path):
    args = ["evaluate", str(ckpt), "--data-dir", str(ham_data), "--bootstrap", "50"]
    r = CliRunner().invoke(main, [*args, "--by", "sex,age_band", "--min-group-n", "5"])
    assert r.exit_code == 0, r.output
    assert "Subgroups by sex (at " in r.output and "Subgroups by age_band (at " in r.output
    assert "  female" in r.output and "  male" in r.output
    r = CliRunner().invoke(main, [*args, "--by", "sex", "--json", "--plots", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    (table,) = report["subgroups"]
    assert table["column"] == "sex" and table["min_group_n"] == 30
    assert sum(row["n"] for row in table["rows"]) == report["n_images"]
    assert all(row["small"] for row in table["rows"])  # a 60-image dataset: every group is small
    assert str(tmp_path / "p" / "test_subgroups_sex.png") in report["plots"]
    assert (tmp_path / "p" / "test_subgroups_sex.png").stat().st_size > 0
    r = CliRunner().invoke(main, [*args, "--by", "colour"])
    assert r.exit_code != 0
    assert "Error: by='colour': no image of this split has a 'colour' value" in r.output


def test_model_card_has_the_clear_derm_section(ckpt, ham_data, tmp_path):
    card = tmp_path / "card.md"
    args = ["evaluate", str(ckpt), "--data-dir", str(ham_data), "--bootstrap", "20"]
    r = CliRunner().invoke(main, [*args, "--by", "sex", "--model-card", str(card)])
    assert r.exit_code == 0, r.output
    text = card.read_text().split("## CLEAR Derm checklist")[1]
    manifest = (ham_data / "manifest.csv").read_text()
    n_histo = manifest.count(",histo,")
    assert f"{n_histo} of 60 images" in text and "confirmed by histopathology" in text
    assert "**Split unit:** patient" in text
    assert "  - train: " in text and "  - test: " in text
    assert "By `sex` (* = under 30 images):" in text and "| female * |" in text
