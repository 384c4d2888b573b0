"""Model card from a checkpoint made the real way: `skincls train`, then `skincls evaluate --calibrate`."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from skincls.cli import main
from skincls.data.caveats import CAVEATS
from skincls.data.info import DatasetIdentity, DatasetInfo, DatasetSource
from skincls.evaluation.modelcard import NOT_RECORDED, SECTIONS, write_model_card
from skincls.models.checkpoint import load_checkpoint
from tests.conftest import TINY_TRAIN


@pytest.fixture(scope="module")
def evaluated(tiny_data, tmp_path_factory):
    """A tiny smallcnn trained by the CLI, calibrated and thresholded on val by `skincls evaluate`."""
    out = tmp_path_factory.mktemp("card-run")
    run = CliRunner().invoke(
        main, ["train", "--data-dir", str(tiny_data), "--out", str(out / "run"), *TINY_TRAIN]
    )
    assert run.exit_code == 0, run.output
    ckpt = out / "run" / "best.pt"
    card = out / "card.md"
    args = ["evaluate", str(ckpt), "--data-dir", str(tiny_data), "--calibrate"]
    args += ["--target-sensitivity", "0.9", "--bootstrap", "50", "--device", "cpu", "--save"]
    r = CliRunner().invoke(main, [*args, "--model-card", str(card)])
    assert r.exit_code == 0, r.output
    return ckpt, card


def _section(text: str, title: str) -> str:
    return re.search(rf"^## {title}\n(.*?)(?=^## |\Z)", text, re.M | re.S).group(1)


def _expected_lines(ckpt_path) -> list[str]:
    """What the threshold and calibration sections must say, from the checkpoint's stored keys."""
    data = load_checkpoint(ckpt_path).data
    info, cal = data["threshold_info"], data["calibration"]
    assert info["method"] == "target_sensitivity" and info["split"] == "val"
    assert cal["split"] == "val" and data["temperature"] == cal["temperature"]
    return [
        f"P(malignant) >= {data['threshold']:.4f}, on probabilities at temperature "
        f"{data['temperature']:.4g}",
        "the largest threshold reaching sensitivity >= 0.9 on the val split",
        f"**On the val split where it was chosen** ({info['n_images']} images, "
        f"{info['n_positive']} malignant): sensitivity {100 * info['sensitivity']:.1f}%, "
        f"specificity {100 * info['specificity']:.1f}%",
        f"**Temperature:** {cal['temperature']:.4g}: temperature scaling fitted on the val split "
        f"({cal['n_images']} images)",
        f"ECE {cal['ece_before']:.4f} before, {cal['ece_after']:.4f} after; negative "
        f"log-likelihood {cal['nll_before']:.4f} before, {cal['nll_after']:.4f} after",
    ]


@pytest.mark.slow
def test_card_from_cli_evaluate_shows_threshold_and_calibration(evaluated):
    ckpt, card = evaluated
    text = card.read_text()
    assert [line[3:] for line in re.findall(r"^## .*", text, re.M)] == list(SECTIONS)
    for line in _expected_lines(ckpt):
        assert line in text, line
    for title in ("Decision threshold", "Calibration"):
        assert NOT_RECORDED not in _section(text, title), title
    details = _section(text, "Model details")
    assert "`smallcnn` backbone" in details and "Initial weights:** none" in details
    assert "epochs 2, batch_size 8" in details and "seed 1" in details


@pytest.mark.slow
def test_card_later_reads_the_stored_keys_of_the_checkpoint(evaluated, tiny_data, tmp_path):
    """Without --calibrate the report has no fit of its own: the card must read the checkpoint's."""
    ckpt, _ = evaluated
    card = tmp_path / "later.md"
    args = ["evaluate", str(ckpt), "--data-dir", str(tiny_data), "--split", "val", "--no-save"]
    r = CliRunner().invoke(main, [*args, "--device", "cpu", "--model-card", str(card)])
    assert r.exit_code == 0, r.output
    text = card.read_text()
    assert "**val** split" in text
    for line in _expected_lines(ckpt):
        assert line in text, line

    # From the checkpoint alone: its stored metrics summary lacks the fit, threshold_info has it.
    summary = load_checkpoint(ckpt).metrics["test"]
    assert "calibration" not in summary and "threshold_choice" not in summary
    text = write_model_card(ckpt, summary, tmp_path / "stored.md").read_text()
    for line in _expected_lines(ckpt):
        assert line in text, line


def test_card_names_the_positive_class_like_the_evaluator(ckpt, tmp_path):
    # Classes are sorted folder names, so "malignant" need not be last; it is still the positive one.
    from skincls.models.checkpoint import update_checkpoint

    ckpt = update_checkpoint(ckpt, classes=["malignant", "nevus"])
    text = write_model_card(ckpt, {"split": "test", "n_images": 0}, tmp_path / "c.md").read_text()
    assert "positive class: malignant" in text
    assert "positive class: nevus" not in text


KAGGLE = "fanconic/skin-cancer-malignant-vs-benign"


def test_provenance_caveats_come_from_the_datas_own_record(ckpt, tiny_data, tmp_path):
    """Known biases of the Kaggle dataset belong to it: synthetic or custom data gets none."""
    report = {"split": "test", "n_images": 0}
    known = CAVEATS[KAGGLE]
    caveat_lines = [*known.data, *known.limitations, *known.ethics]
    synthetic = DatasetInfo.load(tiny_data)
    assert synthetic.source.kind == "synthetic" and synthetic.caveats is None
    custom = synthetic.model_copy(update={"source": DatasetSource(kind="source_dir", path="x")})
    kaggle = synthetic.model_copy(update={"source": DatasetSource(kind="kaggle", dataset=KAGGLE)})
    for name, dataset in [("synthetic", tiny_data), ("custom", custom), ("none", None)]:
        text = write_model_card(ckpt, report, tmp_path / f"{name}.md", dataset=dataset).read_text()
        for word in ("HAM10000", "ISIC", KAGGLE.split("/")[1] + "` (", "Known biases of"):
            assert word not in text, (name, word)
        assert not any(line in text for line in caveat_lines), name
        assert "Known biases:**" in _section(text, "Data"), name
    assert "kind synthetic" in _section(
        write_model_card(ckpt, report, tmp_path / "s.md", dataset=tiny_data).read_text(), "Data"
    )

    text = write_model_card(ckpt, report, tmp_path / "kaggle.md", dataset=kaggle).read_text()
    assert f"Known biases of {known.title}:" in _section(text, "Data")
    for title, lines in [
        ("Data", known.data),
        ("Limitations", known.limitations),
        ("Ethical considerations", known.ethics),
    ]:
        for line in lines:
            assert line in _section(text, title), (title, line)


def test_only_data_read_as_a_named_dataset_is_that_dataset(tiny_data):
    """A folder of class folders matches the Kaggle dataset's layout, but only a download by name
    or `--dataset NAME` makes it that dataset (and brings its known biases)."""
    synthetic = DatasetInfo.load(tiny_data)  # layout detected as the default dataset's
    assert synthetic.dataset.name == KAGGLE and synthetic.dataset_name is None
    folders = DatasetIdentity(name=KAGGLE, layout="folders")
    archive = DatasetSource(kind="archive", path="skin.zip")
    detected = synthetic.model_copy(update={"source": archive, "layout": "auto"})
    named = synthetic.model_copy(
        update={"source": archive, "layout": "folders", "dataset": folders}
    )
    downloaded = synthetic.model_copy(
        update={"source": DatasetSource(kind="kaggle", dataset=KAGGLE), "layout": "auto"}
    )
    assert [i.dataset_name for i in (detected, named, downloaded)] == [None, KAGGLE, KAGGLE]
    assert detected.caveats is None and named.caveats == downloaded.caveats == CAVEATS[KAGGLE]
