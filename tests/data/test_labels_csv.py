"""--labels-csv: which file a row names, rows that name one file twice, labels that differ only in case
and labels a spreadsheet would run as formulas."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from skincls.cli import main
from skincls.data.fetch import fetch
from tests.data.test_fetch import _lesion
from tests.data.test_fetch_sources import _one_line_error


def _source(root: Path, names) -> Path:
    """An image at each relative path in `names`, each a different lesion."""
    for seed, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        _lesion(seed, seed % 2 == 1).save(root / name)
    return root


def _others(n: int = 8) -> list[tuple[str, str]]:
    """Rows for `o/0.png` … of both classes, so that a fetch has two classes whatever else it has."""
    return [(f"o/{i}.png", "malignant" if i % 2 else "benign") for i in range(n)]


def _labels(path: Path, rows, header=("image", "label")) -> Path:
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])
    return path


def _fetch(tmp_path, src, labels, *extra) -> object:
    args = ["fetch", "--source-dir", str(src), "--data-dir", str(tmp_path / "d"), "--quiet"]
    return CliRunner().invoke(main, [*args, "--labels-csv", str(labels), *extra])


def test_a_path_names_that_file_only_a_bare_name_or_stem_any_folder(tmp_path):
    names = ["p2/lesion.png", "p3/bare.png", "p4/stem.png", "p5/abs.png"] + [
        n for n, _ in _others()
    ]
    src = _source(tmp_path / "src", names)
    rows = [
        ("p1/lesion.png", "malignant"),  # p1/ does not exist: never p2/lesion.png
        ("bare.png", "malignant"),  # a file name, in any folder
        ("stem", "benign"),  # a stem, in any folder
        (str(src.resolve() / "p5" / "abs.png"), "malignant"),  # an absolute path to the file
        *_others(),
    ]
    report = fetch(tmp_path / "d", source_dir=src, labels_csv=_labels(tmp_path / "l.csv", rows))
    labels = {r.path: r.label for r in report.manifest.records}
    assert "images/p2/lesion.png" not in labels
    assert labels["images/p3/bare.png"] == "malignant" and labels["images/p4/stem.png"] == "benign"
    assert labels["images/p5/abs.png"] == "malignant"
    meta = report.info.metadata
    assert (meta.rows_without_image, meta.rows_without_image_examples) == (1, ["p1/lesion.png"])
    assert ("p2/lesion.png", "not listed in l.csv") in report.skipped


def test_two_rows_naming_one_file_with_different_labels_are_refused(tmp_path):
    src = _source(tmp_path / "src", ["imgs/x.png"] + [n for n, _ in _others()])
    rows = [("imgs/x.png", "benign"), ("x", "malignant"), *_others()]
    r = _fetch(tmp_path, src, _labels(tmp_path / "l.csv", rows))
    _one_line_error(
        r, "l.csv describes image(s) imgs/x.png (rows 'imgs/x.png' and 'x') twice, differently"
    )
    assert not (tmp_path / "d").exists()
    # The same label twice is one label: taken once, and counted.
    rows = [("imgs/x.png", "benign"), ("x.png", "benign"), *_others()]
    report = fetch(tmp_path / "d", source_dir=src, labels_csv=_labels(tmp_path / "l.csv", rows))
    assert {r.path: r.label for r in report.manifest.records}["images/imgs/x.png"] == "benign"
    assert report.info.metadata.rows_repeating_an_image == 1


def test_labels_differing_only_in_case_are_refused_naming_both(tmp_path):
    src = _source(tmp_path / "src", [n for n, _ in _others(9)])
    rows = [(n, ["Benign", "benign", "malignant"][i % 3]) for i, (n, _) in enumerate(_others(9))]
    r = _fetch(tmp_path, src, _labels(tmp_path / "l.csv", rows))
    _one_line_error(r, "labels Benign (3 rows) and benign (3 rows) in l.csv differ only in case")
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    ("column", "value"),
    [("label", '=HYPERLINK("http://x.example","benign")'), ("label", "@SUM(1)"),
     ("label", "-2+3"), ("lesion_id", "+cmd|' /C calc'!A0")],
)  # fmt: skip
def test_values_a_spreadsheet_would_run_are_refused(tmp_path, column, value):
    src = _source(tmp_path / "src", [n for n, _ in _others()])
    rows = [(n, label, f"L{i}") for i, (n, label) in enumerate(_others())]
    rows[0] = (rows[0][0], value, "L0") if column == "label" else (rows[0][0], rows[0][1], value)
    r = _fetch(tmp_path, src, _labels(tmp_path / "l.csv", rows, ("image", "label", "lesion_id")))
    _one_line_error(r, f"{column} {value!r} (1 row of l.csv) starts with {value[0]!r}", "formula")
    assert not (tmp_path / "d").exists()


def test_numbers_as_labels_are_no_formulas(tmp_path):
    src = _source(tmp_path / "src", [n for n, _ in _others()])
    rows = [(n, "-1" if label == "benign" else "+1") for n, label in _others()]
    report = fetch(tmp_path / "d", source_dir=src, labels_csv=_labels(tmp_path / "l.csv", rows))
    assert report.manifest.classes == ["+1", "-1"]


def test_a_lesion_with_several_diagnoses_is_reported_not_refused(tmp_path):
    src = _source(tmp_path / "src", [n for n, _ in _others()])
    dx = ["nv", "mel", "nv", "mel", "bkl", "mel", "nv", "bcc"]
    lesions = ["A", "A", "B", "C", "D", "D", "E", "F"]  # A: nv + mel; D: bkl + mel
    rows = [(n, d, le) for (n, _), d, le in zip(_others(), dx, lesions)]
    labels = _labels(tmp_path / "l.csv", rows, ("image", "dx", "lesion_id"))
    r = _fetch(tmp_path, src, labels, "--label-column", "dx", "--task", "binary")
    assert r.exit_code == 0, r.output
    assert (
        "warning: 2 lesions have photos with different diagnoses (2 of them in different classes), "
        "e.g. A (mel 1, nv 1); D (bkl 1, mel 1)"
    ) in r.output
    meta = json.loads((tmp_path / "d" / "dataset.json").read_text())["metadata"]
    assert meta["lesions_with_several_diagnoses"] == meta["lesions_with_several_classes"] == 2
    assert meta["lesion_conflict_examples"] == {"A": {"mel": 1, "nv": 1}, "D": {"bkl": 1, "mel": 1}}
