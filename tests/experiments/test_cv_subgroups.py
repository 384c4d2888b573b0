"""Subgroup reports of a cross-validation: the out-of-fold predictions grouped by manifest columns."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from skincls.cli import main
from skincls.config import RunConfig
from skincls.data.fetch import fetch
from skincls.data.splits import Record, load_manifest
from skincls.errors import ConfigError
from skincls.experiments.cv import cross_validate
from skincls.experiments.folds import pool_records
from skincls.experiments.oof import subgroup_columns
from tests.conftest import TINY_TRAIN

from ..data.dermo import ham_archive, make_ham


@pytest.fixture(scope="module")
def ham_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cvsub")
    ham = make_ham(root / "ham", n=60)
    fetch(root / "d", archive=ham_archive(ham, root / "ham.zip"), near_dup_distance=-1)
    return root / "d"


def _config(data_dir, out) -> RunConfig:
    return RunConfig.model_validate(
        {
            "data": {"data_dir": data_dir, "image_size": 32},
            "model": {"arch": "smallcnn", "weights": "none", "freeze": "none"},
            "train": {"epochs": 1, "batch_size": 8, "device": "cpu", "precision": "fp32"},
            "out": out,
        }
    )


def test_cv_by_sex_groups_the_out_of_fold_predictions(ham_data, tmp_path):
    result = cross_validate(
        _config(ham_data, tmp_path / "cv"), 2, by=["sex"], min_group_n=5, n_bootstrap=20,
        progress=False,
    )  # fmt: skip
    oof = result.report.oof
    (table,) = oof.subgroups
    assert table.column == "sex" and table.min_group_n == 5
    assert sum(r.n for r in table.rows) == oof.n_images == result.report.n_images
    # Each group's n and positives are those of the pool's records, in the OOF rows' order.
    pool = pool_records(load_manifest(ham_data))
    for row in table.rows:
        mine = [r for r in pool if (r.column("sex") or "unknown") == row.value]
        assert (row.n, row.positives) == (len(mine), sum(r.label == "malignant" for r in mine))
    saved = json.loads((result.cv_dir / "cv_report.json").read_text())
    assert saved["oof"]["subgroups"][0]["column"] == "sex"
    plot = result.cv_dir / "out-of-fold_subgroups_sex.png"
    assert plot.stat().st_size > 0 and str(plot) in saved["oof"]["plots"]


def test_a_column_no_image_has_is_refused_before_any_fold_trains(ham_data, tmp_path):
    with pytest.raises(ConfigError, match=r"by='colour': no image of this split has a 'colour'"):
        cross_validate(_config(ham_data, tmp_path / "cv"), 2, by=["colour"], progress=False)
    assert not (tmp_path / "cv" / "fold0").exists()
    assert not (tmp_path / "cv" / "cv_state.json").exists()  # the same command can run again


def test_cv_by_sex_through_the_cli(ham_data, tmp_path):
    train = list(TINY_TRAIN)
    train[train.index("--epochs") + 1] = "1"
    args = ["cv", "--folds", "2", "--data-dir", str(ham_data), "--out", str(tmp_path / "cv")]
    r = CliRunner().invoke(
        main, [*args, *train, "--bootstrap", "20", "--by", "sex,age_band", "--min-group-n", "5"]
    )
    assert r.exit_code == 0, r.output
    assert "Subgroups by sex (at " in r.output and "Subgroups by age_band (at " in r.output
    assert "  female" in r.output and "  male" in r.output
    assert "out-of-fold_subgroups_age_band.png" in r.output


def test_subgroups_need_two_classes():
    recs = [Record("a.jpg", "nv", "train", attributes=(("sex", "male"),))]
    assert subgroup_columns(recs, ["mel", "nv"], None) == {}
    assert subgroup_columns(recs, ["mel", "nv"], ["sex"]) == {"sex": ["male"]}
    with pytest.raises(
        ConfigError, match=r"subgroup reports \(by\) need two classes; this data has 3"
    ):
        subgroup_columns(recs, ["bcc", "mel", "nv"], ["sex"])
