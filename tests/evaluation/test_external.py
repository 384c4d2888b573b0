"""External validation: a model evaluated on another dataset's layout, whose label set differs.

Classes are matched through the canonical diagnosis codes (or a benign/malignant model's binary
map); images of a class the model does not know are counted and reported, never measured as another
class and never silently dropped; nothing mapping at all is a clear error."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest
from click.testing import CliRunner

from skincls.cli import main
from skincls.data.fetch import fetch
from skincls.data.splits import load_manifest
from skincls.errors import ConfigError, DataError
from skincls.evaluation.classmap import map_classes
from skincls.evaluation.evaluator import Evaluator
from skincls.evaluation.run import evaluate_checkpoint
from skincls.models.checkpoint import load_checkpoint
from tests.conftest import TINY_TRAIN
from tests.data.clinic import ddi_tree, pad_ufes20_tree
from tests.data.dermo import make_ham

EVAL = ["--device", "cpu", "--bootstrap", "0", "--quiet"]


@pytest.fixture(scope="module")
def ham_model(tmp_path_factory):
    """A smallcnn trained (2 epochs) on a HAM10000-layout fixture, seven diagnoses."""
    root = tmp_path_factory.mktemp("ham_model")
    src = make_ham(root / "ham", n=60, seed=5, size=40)
    data = root / "data"
    fetch(data, source_dir=src, task="multiclass", val_fraction=0.2, near_dup_distance=-1)
    r = CliRunner().invoke(
        main, ["train", "--data-dir", str(data), "--out", str(root / "run"), *TINY_TRAIN]
    )
    assert r.exit_code == 0, r.output
    return root / "run" / "best.pt"


@pytest.fixture(scope="module")
def pad_data(tmp_path_factory):
    """PAD-UFES-20-layout fixture (other photos), fetched multiclass: its SCC is no HAM class."""
    root = tmp_path_factory.mktemp("pad")
    mix = {"nv": 2, "mel": 1, "bkl": 1, "bcc": 1, "akiec": 1, "vasc": 2}  # vasc → PAD's SCC
    tree = pad_ufes20_tree(make_ham(root / "ham", n=48, seed=9, size=40, mix=mix), root / "pad")
    fetch(root / "data", source_dir=tree, task="multiclass", near_dup_distance=-1)
    return root / "data"


def test_map_classes_by_name_code_and_binary_map():
    m = map_classes(["MEL", "nv", "scc", "psoriasis"], ["bkl", "mel", "nv"])
    assert m.mapped == {"MEL": "mel", "nv": "nv"} and m.unknown == ["scc", "psoriasis"]
    assert m.how == {"MEL": "diagnosis code", "nv": "same name"}
    b = map_classes(["akiec", "nv", "psoriasis"], ["benign", "malignant"], {"map": {"akiec": "benign", "nv": "benign"}})  # fmt: skip
    assert b.mapped == {"akiec": "benign", "nv": "benign"} and b.unknown == ["psoriasis"]
    assert map_classes(["scc"], ["benign", "malignant"]).mapped == {"scc": "malignant"}
    with pytest.raises(DataError, match=r"none of the data's classes \['benign', 'malignant'\]"):
        map_classes(["benign", "malignant"], ["mel", "nv"])


@pytest.mark.slow
def test_ham_model_on_pad_ufes20_reports_the_mapping_and_leaves_out_scc(ham_model, pad_data):
    test = load_manifest(pad_data).select("test")
    counts = Counter(r.label for r in test)
    assert counts["scc"] > 0 and len(counts) > 2
    card = pad_data.parent / "card.md"
    r = CliRunner().invoke(
        main,
        ["evaluate", str(ham_model), "--data-dir", str(pad_data), *EVAL, "--model-card", str(card)],
    )
    assert r.exit_code == 0, r.output
    text = card.read_text()
    assert "**Another dataset's classes.** Class mapping (data → model, images in the test" in text
    assert f"Not classes of the model, left out of every metric: scc ({counts['scc']})." in text
    measured = sum(counts.values()) - counts["scc"]
    assert f"Test split: {measured} images" in r.output
    assert "Class mapping (data → model, images in the test split): akiec → akiec" in r.output
    assert f"Not classes of the model, left out of every metric: scc ({counts['scc']})" in r.output
    assert (
        f"WARNING: {counts['scc']} of {sum(counts.values())} images in the test split are of "
        f"classes the model does not know; the metrics below are of the other {measured}"
    ) in r.output
    j = CliRunner().invoke(
        main, ["evaluate", str(ham_model), "--data-dir", str(pad_data), *EVAL, "--json"]
    )
    report = json.loads(j.output)
    cm = report["class_mapping"]
    assert cm["unknown"] == ["scc"] and cm["left_out"] == counts["scc"]
    assert cm["images"] == {c: counts[c] for c in load_manifest(pad_data).classes}
    assert report["n_images"] == measured == sum(map(sum, report["confusion_matrix"]))
    # Each measured image counts as the model class its data class maps to.
    totals = {c["name"]: c["total"] for c in report["per_class"]}
    assert all(totals[cm["mapped"][c]] == n for c, n in counts.items() if c != "scc")
    whole = CliRunner().invoke(
        main, ["evaluate", str(ham_model), "--data-dir", str(pad_data), *EVAL, "--split", "all"]
    )
    n_all = len(load_manifest(pad_data).records)
    assert whole.exit_code == 0, whole.output
    assert "Class mapping (data → model, images in all splits): " in whole.output
    assert (
        f"All split: {n_all - sum(r.label == 'scc' for r in load_manifest(pad_data).records)}"
        in whole.output
    )


def test_binary_model_on_pad_maps_diagnoses_and_on_ddi_is_direct(ckpt, pad_data, tmp_path):
    ev = Evaluator(ckpt, device="cpu")
    rep = ev.evaluate(pad_data, "test", n_bootstrap=0)
    counts = Counter(r.label for r in load_manifest(pad_data).select("test"))
    cm = rep.class_mapping
    assert cm.how["scc"] == "binary map" and cm.mapped["scc"] == "malignant" and not cm.unknown
    malignant = sum(n for c, n in counts.items() if c in ("mel", "bcc", "akiec", "scc"))
    assert rep.per_class[1].total == malignant and rep.n_images == sum(counts.values())
    # An external dataset used whole: every split; fitting anything on it is refused.
    whole = ev.evaluate(pad_data, "all", n_bootstrap=0)
    assert whole.n_images == len(load_manifest(pad_data).records) > rep.n_images
    assert whole.class_mapping.split == "all"
    with pytest.raises(ConfigError, match="refusing to calibrate on the all split"):
        ev.calibrate(pad_data, "all")
    with pytest.raises(ConfigError, match=r"calibrate and target_sensitivity fit on the val split, "
                       r"which split='all' measures too"):  # fmt: skip
        evaluate_checkpoint(ckpt, pad_data, "all", calibrate=True, device="cpu")
    ddi = tmp_path / "ddi"
    fetch(ddi, source_dir=ddi_tree(make_ham(tmp_path / "ham", n=36, seed=4, size=40),
                                   tmp_path / "src"), near_dup_distance=-1)  # fmt: skip
    rep = Evaluator(ckpt, device="cpu").evaluate(ddi, "test", n_bootstrap=0, by=["fitzpatrick"])
    assert rep.class_mapping is None  # the same classes: nothing to map
    assert {row.value for row in rep.subgroups[0].rows} <= {"I-II", "III-IV", "V-VI"}


@pytest.mark.slow
def test_multiclass_model_on_benign_malignant_data_is_a_clear_error(ham_model, tmp_path):
    data = tmp_path / "ddi"
    fetch(data, source_dir=ddi_tree(make_ham(tmp_path / "ham", n=24, seed=4, size=40),
                                    tmp_path / "src"), near_dup_distance=-1)  # fmt: skip
    r = CliRunner().invoke(main, ["evaluate", str(ham_model), "--data-dir", str(data), *EVAL])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert (
        "Error: none of the data's classes ['benign', 'malignant'] is one of the model's "
        "['akiec', 'bcc', 'bkl', 'df', 'mel', 'nv', 'vasc']"
    ) in r.output
    assert "--task multiclass" in r.output


@pytest.mark.slow
def test_another_datasets_metrics_never_replace_the_models_own(tiny_data, tmp_path):
    run = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--data-dir", str(tiny_data), "--out", str(run), *TINY_TRAIN])  # fmt: skip
    assert r.exit_code == 0, r.output
    best = run / "best.pt"
    own = CliRunner().invoke(main, ["evaluate", str(run), "--data-dir", str(tiny_data), *EVAL, "--save"])  # fmt: skip
    assert own.exit_code == 0, own.output
    assert "not the data the model was trained on" not in own.output
    stored = json.dumps(load_checkpoint(best).metrics["test"], sort_keys=True)
    ddi = tmp_path / "ddi"
    fetch(ddi, source_dir=ddi_tree(make_ham(tmp_path / "ham", n=36, seed=4, size=40),
                                   tmp_path / "src"), near_dup_distance=-1)  # fmt: skip
    n_test = len(load_manifest(ddi).select("test"))
    card = tmp_path / "card.md"
    args = ["evaluate", str(run), "--data-dir", str(ddi), *EVAL, "--save"]
    ext = CliRunner().invoke(main, [*args, "--model-card", str(card)])
    assert ext.exit_code == 0, ext.output
    metrics = load_checkpoint(best).metrics
    assert json.dumps(metrics["test"], sort_keys=True) == stored  # the model's own, untouched
    assert metrics["ddi:test"]["n_images"] == n_test and metrics["ddi:test"]["data"] == "ddi"
    assert metrics["ddi:test"]["data_dir"] == str(ddi)
    assert (
        f"Test split: {n_test} images of ddi ({ddi}), not the data the model was trained on; "
        "checkpoint metrics key ddi:test, apart from the model's own"
    ) in ext.output, ext.output
    assert f"confusion matrix (test split of ddi, n={n_test})" in ext.output
    assert f"Measured on the **test** split of **ddi** (`{ddi}`), not the data" in card.read_text()
    j = json.loads(CliRunner().invoke(main, [*args[:-1], "--json"]).output)
    assert j["metrics_key"] == "ddi:test" and j["data"] == "ddi"
    listed = CliRunner().invoke(main, ["runs", str(tmp_path), "--json"])
    (summary,) = json.loads(listed.output)
    assert summary["test"]["n_images"] == len(load_manifest(tiny_data).select("test"))
    assert summary["other_data"] == {"ddi:test": n_test}
    text = CliRunner().invoke(main, ["runs", str(tmp_path)]).output
    assert f"{run}: also measured on other data (not in the table): ddi:test (n={n_test})" in text
    # A threshold fitted on the other dataset's val split is not stored; nothing is changed.
    bad = CliRunner().invoke(main, [*args, "--target-sensitivity", "0.9"])
    assert bad.exit_code != 0 and "Traceback" not in bad.output
    assert (
        f"Error: not stored: the threshold/temperature was fitted on the val split of ddi ({ddi}), "
        "not on data the model was trained on"
    ) in bad.output
    assert load_checkpoint(best).metrics == metrics
    # Another data dir of the same folder name does not replace the stored one either.
    twin = shutil.copytree(ddi, tmp_path / "elsewhere" / "ddi")
    clash = CliRunner().invoke(main, ["evaluate", str(run), "--data-dir", str(twin), *EVAL, "--save"])  # fmt: skip
    assert clash.exit_code != 0 and "Traceback" not in clash.output
    assert (
        f"Error: not stored: {best} keeps the metrics of another data dir named ddi ({ddi}) "
        "under ddi:test; nothing was changed"
    ) in clash.output
    assert load_checkpoint(best).metrics == metrics
