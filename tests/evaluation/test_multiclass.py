"""More than two classes end to end: fetch (HAM10000-like, multiclass) → train with class weights and a
balanced sampler → evaluate (balanced accuracy, per-class recall/precision, macro one-vs-rest ROC-AUC,
confusion plot, model card) → predict top-k → export; and the metrics against scikit-learn."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import precision_score, recall_score, roc_auc_score
from sklearn.utils.class_weight import compute_class_weight

from skincls.cli import main
from skincls.data.fetch import fetch
from skincls.data.info import DatasetInfo, LabelsInfo
from skincls.evaluation import metrics as M
from skincls.evaluation.evaluator import Evaluator
from skincls.evaluation.modelcard import render_model_card
from skincls.models.checkpoint import load_checkpoint, update_checkpoint
from skincls.training.optim import balanced_class_weights
from tests.conftest import TINY_TRAIN
from tests.data.dermo import make_ham

MIX = {"nv": 3, "mel": 2, "bkl": 2, "vasc": 1}


def _random_multiclass(n=400, c=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.normal(0, 1, (n, c)) + 1.5 * np.eye(c)[y]
    return y, np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


def test_multiclass_metrics_match_scikit_learn():
    y, probs = _random_multiclass()
    m = M.multiclass_metrics(y, probs)
    pred = probs.argmax(1)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"))
    assert m["recall"] == pytest.approx(list(recall_score(y, pred, average=None)))
    assert m["precision"] == pytest.approx(list(precision_score(y, pred, average=None)))
    assert m["balanced_accuracy"] == pytest.approx(np.mean(m["recall"]))
    assert m["roc_auc_classes"] == 4
    # A class absent from the split: its AUC is undefined; the macro averages the other three.
    keep = y != 2
    part = M.multiclass_metrics(y[keep], probs[keep])
    assert np.isnan(part["class_roc_auc"][2]) and part["roc_auc_classes"] == 3
    present = [roc_auc_score(y[keep] == k, probs[keep][:, k]) for k in (0, 1, 3)]
    assert part["roc_auc"] == pytest.approx(np.mean(present))


def test_balanced_weights_for_k_classes_match_scikit_learn():
    targets = [0] * 50 + [1] * 20 + [2] * 5 + [3] * 25
    ours = balanced_class_weights(targets, 4).numpy()
    ref = compute_class_weight("balanced", classes=np.arange(4), y=np.array(targets))
    assert ours == pytest.approx(ref)


@pytest.fixture(scope="module")
def multiclass_run(tmp_path_factory):
    """A HAM10000-like multiclass data dir and a smallcnn trained on it by the CLI."""
    root = tmp_path_factory.mktemp("multi")
    src = make_ham(root / "ham", n=72, seed=5, size=40, mix=MIX)
    data = root / "data"
    report = fetch(data, source_dir=src, task="multiclass", val_fraction=0.2, near_dup_distance=-1)
    assert report.manifest.classes == ["bkl", "mel", "nv", "vasc"]
    args = ["train", "--data-dir", str(data), "--out", str(root / "run"), *TINY_TRAIN]
    args += ["--class-weights", "balanced", "--sampler", "balanced"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    return data, root / "run" / "best.pt", root


@pytest.mark.slow
def test_checkpoint_records_the_task_and_classes(multiclass_run):
    data, ckpt, _ = multiclass_run
    stored = load_checkpoint(ckpt)
    assert stored.classes == ["bkl", "mel", "nv", "vasc"]
    dataset = json.loads((data / "dataset.json").read_text())
    assert (
        stored.data["labels"] == dataset["labels"] and stored.data["labels"]["task"] == "multiclass"
    )


@pytest.mark.slow
def test_evaluate_reports_per_class_and_macro_metrics(multiclass_run):
    data, ckpt, root = multiclass_run
    card, plots = root / "card.md", root / "plots"
    args = ["evaluate", str(ckpt), "--data-dir", str(data), "--device", "cpu", "--bootstrap", "0"]
    r = CliRunner().invoke(main, [*args, "--plots", str(plots), "--model-card", str(card)])
    assert r.exit_code == 0, r.output
    assert "Test Balanced accuracy:" in r.output and "Test ROC-AUC:" in r.output
    assert "Test Accuracy of Mel:" in r.output  # the original per-class lines
    for name in ("bkl", "mel", "nv", "vasc"):
        assert f"Test {name}: recall" in r.output
    assert (plots / "test_confusion.png").is_file()
    assert not (plots / "test_roc.png").exists()  # binary-only plots are not drawn

    ev = Evaluator(ckpt, device="cpu")
    rep = ev.evaluate(data, "test", n_bootstrap=0)
    out = ev.outputs(data, "test")
    probs, y = out.probs(), out.labels
    cm = np.asarray(rep.confusion_matrix)
    for k, c in enumerate(rep.per_class):
        assert (c.correct, c.total, c.predicted) == (cm[k, k], cm[k].sum(), cm[:, k].sum())
    pred = probs.argmax(1)
    present = [k for k in range(4) if (y == k).any()]
    assert len(present) >= 3
    ref = recall_score(y, pred, average=None, labels=present, zero_division=0)
    assert [rep.per_class[k].recall for k in present] == pytest.approx(list(ref))
    assert all(rep.per_class[k].recall is None for k in range(4) if k not in present)
    assert rep.balanced_accuracy == pytest.approx(np.mean(ref))
    aucs = [roc_auc_score(y == k, probs[:, k]) for k in present]
    assert [rep.per_class[k].roc_auc for k in present] == pytest.approx(aucs)
    assert rep.roc_auc == pytest.approx(np.mean(aucs)) and rep.roc_auc_classes == len(present)
    assert rep.sensitivity is None and rep.threshold is None and rep.pr_auc is None

    text = card.read_text()
    assert "multiclass task, one class per diagnosis code" in text
    assert "| class | images | recall | precision | ROC-AUC |" in text
    assert all(f"| {name} |" in text for name in ("bkl", "mel", "nv", "vasc"))
    assert "positive class" not in text and "Sensitivity" not in text
    assert "into 4 diagnoses" in text and "Two classes only" not in text
    assert "Groups kept within one split:" in text and "HAM10000_metadata.csv" in text


@pytest.mark.slow
def test_predict_top_k_and_export(multiclass_run):
    data, ckpt, root = multiclass_run
    images = sorted((data / "images").rglob("*.jpg"))[:3]
    r = CliRunner().invoke(
        main, ["predict", str(ckpt), *map(str, images), "--top-k", "2", "--json", "--device", "cpu"]
    )
    assert r.exit_code == 0, r.output
    preds = json.loads(r.output)
    for p in preds:
        probs = p["probabilities"]
        assert sum(probs.values()) == pytest.approx(1, abs=1e-5)
        ranked = sorted(probs, key=probs.get, reverse=True)
        assert [c for c, _ in p["top"]] == ranked[:2]
        assert p["label"] == ranked[0] and p["probability"] == pytest.approx(probs[ranked[0]])
        assert p["positive_class"] is None
    table = CliRunner().invoke(main, ["predict", str(ckpt), str(images[0]), "--device", "cpu"])
    assert table.exit_code == 0 and "P(label)" in table.output and "top 3" in table.output

    onnx_path = root / "model.onnx"
    r = CliRunner().invoke(main, ["export", str(ckpt), "--out", str(onnx_path)])
    assert r.exit_code == 0, r.output
    import onnx

    meta = {p.key: json.loads(p.value) for p in onnx.load(str(onnx_path)).metadata_props}
    assert meta["classes"] == ["bkl", "mel", "nv", "vasc"]
    assert meta["labels"]["task"] == "multiclass"


def test_binary_card_names_the_diagnosis_map(ckpt, tiny_data):
    labels = {
        "task": "binary",
        "map": {"mel": "malignant", "bcc": "malignant", "nv": "benign", "bkl": "benign"},
        "source": ["HAM10000_metadata.csv"],
    }
    update_checkpoint(ckpt, labels=labels)
    report = Evaluator(ckpt, device="cpu").evaluate(tiny_data, "test", n_bootstrap=0)
    dataset = DatasetInfo(classes=["benign", "malignant"], labels=LabelsInfo(**labels))
    text = render_model_card(load_checkpoint(ckpt), report, dataset=dataset)
    assert "binary task from the diagnoses in HAM10000_metadata.csv: malignant = bcc, mel; " in text
    assert "benign = bkl, nv" in text and "positive class: malignant" in text
