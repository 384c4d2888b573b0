"""Leave-site-out / leave-source-out cross-validation: `cv --group-by COLUMN` holds out whole values
of a manifest column per fold, still never splitting a lesion or patient; too few values is loud."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from skincls.cli import main
from skincls.data.fetch import fetch
from skincls.data.splits import Record, load_manifest
from skincls.errors import DataError
from skincls.experiments.folds import assign_folds, fold_groups, pool_records, record_group
from tests.conftest import TINY_TRAIN

from ..data.dermo import ham_rows, make_ham

SOURCES = ("vidir_modern", "vidir_molemax", "rosendahl", "vienna_dias")
CLASSES = ["benign", "malignant"]


def _rec(i, label, site="", patient="", cluster=-1):
    attrs = (("site", site),) if site else ()
    group = f"patient:{patient}" if patient else ""
    return Record(f"{i}.png", label, "train", cluster=cluster, group=group, patient_id=patient,
                  attributes=attrs)  # fmt: skip


def test_group_by_holds_out_whole_values_and_joins_patients_across_them():
    # 5 sites, both classes in each; patient p0 has images at sites a and b: a and b go together.
    records = [_rec(i, CLASSES[i % 2], site="abcde"[i % 5], cluster=i) for i in range(40)]
    records += [_rec(40, "benign", site="a", patient="p0"), _rec(41, "malignant", site="b",
                                                                 patient="p0")]  # fmt: skip
    groups = fold_groups(records, "site")
    assert set(groups) == {"site:a+b", "site:c", "site:d", "site:e"}
    fold = assign_folds(records, CLASSES, 4, seed=0, group_by="site")
    by_group: dict[str, set[int]] = {}
    for g, k in zip(groups, fold):
        by_group.setdefault(g, set()).add(int(k))
    assert all(len(ks) == 1 for ks in by_group.values())  # a site (with its patients) per fold
    assert sorted(k for ks in by_group.values() for k in ks) == [0, 1, 2, 3]  # one each
    # No value: the record keeps its own group (here its duplicate cluster).
    assert fold_groups([_rec(1, "benign", cluster=99), *records], "site")[0] == "cluster:99"


def test_group_by_too_few_values_or_a_class_in_one_value_is_a_clear_error():
    records = [_rec(i, CLASSES[i % 2], site="ab"[i % 2 == 0 and i % 4 == 0], cluster=i)
               for i in range(20)]  # fmt: skip
    with pytest.raises(DataError, match=r"group_by='site' makes only 2 groups .*site:a, site:b.*"
                                        r"fewer than 3 folds; use folds=2 or fewer"):  # fmt: skip
        assign_folds(records, CLASSES, 3, group_by="site")
    # Every malignant image is at site c: the fold holding c out would train without one.
    one = [_rec(i, "malignant" if i % 3 == 2 else "benign", site="abc"[i % 3], cluster=i)
           for i in range(30)]  # fmt: skip
    with pytest.raises(DataError, match=r"training images have no 'malignant'"):
        assign_folds(one, CLASSES, 3, group_by="site")
    with pytest.raises(DataError, match=r"group_by='source': no image outside the test split has"):
        fold_groups(records, "source")


@pytest.fixture(scope="module")
def sourced(tmp_path_factory):
    """A HAM10000-layout fixture whose metadata has HAM10000's `dataset` column (the source)."""
    root = tmp_path_factory.mktemp("sourced")
    ham = make_ham(root / "ham", n=80, seed=2)
    rows = ham_rows(ham)
    patients = sorted({r["patient_id"] for r in rows})
    for r in rows:
        r["dataset"] = SOURCES[patients.index(r["patient_id"]) % 4]
    with (ham / "HAM10000_metadata.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    fetch(root / "d", source_dir=ham, near_dup_distance=-1, test_fraction=0.1)
    return root / "d"


@pytest.mark.slow
def test_leave_one_source_out_cv_through_the_cli(sourced, tmp_path):
    pool = pool_records(load_manifest(sourced))
    assert {r.column("source") for r in pool} == set(SOURCES)
    train = list(TINY_TRAIN)
    train[train.index("--epochs") + 1] = "1"
    out = tmp_path / "cv"
    args = ["cv", "--folds", "4", "--group-by", "source", "--data-dir", str(sourced),
            "--out", str(out), *train, "--bootstrap", "0"]  # fmt: skip
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    with (out / "folds.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    held = {}
    for row in rows:
        held.setdefault(row["fold"], set()).add(row["fold_group"])
    assert sorted(map(sorted, held.values())) == [[f"source:{s}"] for s in sorted(SOURCES)]
    # `group` is each image's own (lesion, patient or copies) in folds.csv and oof.csv alike.
    own = {r.path: record_group(r) for r in pool}
    with (out / "oof.csv").open(newline="") as fh:
        oof = {row["path"]: row for row in csv.DictReader(fh)}
    for row in rows:
        assert row["group"] == own[row["path"]] == oof[row["path"]]["group"]
        assert oof[row["path"]]["fold_group"] == row["fold_group"]
        assert oof[row["path"]]["fold"] == row["fold"]
    report = json.loads((out / "cv_report.json").read_text())
    assert report["n_groups"] == 4 and report["grouping"].startswith("whole source values held")
    assert "4 groups: whole source values held out per fold" in r.output
    bad = CliRunner().invoke(main, [*args[:2], "5", *args[3:5], *args[5:7], "--out",
                                    str(tmp_path / "cv2"), *train])  # fmt: skip
    assert bad.exit_code != 0 and "Traceback" not in bad.output
    assert (
        "Error: --group-by source makes only 4 groups outside the test split (source:rosendahl, "
        "source:vidir_modern, source:vidir_molemax, source:vienna_dias), fewer than 5 folds; use "
        "--folds 4 or fewer"
    ) in bad.output
    assert not np.isnan(report["oof"]["accuracy"])
