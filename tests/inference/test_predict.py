"""Prediction: odd and broken inputs, folders and globs, threshold and temperature, Grad-CAM, safe loading."""

from __future__ import annotations

import csv
import json
import pathlib

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from skincls.cli import main
from skincls.errors import CheckpointError, ConfigError
from skincls.inference.decision import softmax
from skincls.inference.predict import Predictor
from skincls.inference.tta import dihedral_views
from skincls.models.checkpoint import FORMAT, load_checkpoint, update_checkpoint


@pytest.fixture()
def images(tmp_path):
    """A folder with an RGB JPEG, a grayscale PNG, an RGBA PNG (in a subfolder) and a corrupt JPEG."""
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(root / "rgb.jpg")
    Image.fromarray(rng.integers(0, 255, (30, 30), dtype=np.uint8), "L").save(root / "gray.png")
    rgba = rng.integers(0, 255, (45, 33, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent: must still predict (composited on white)
    Image.fromarray(rgba, "RGBA").save(root / "sub" / "alpha.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    (root / "notes.txt").write_text("not an image; folders skip it")
    return root


def test_predict_folder_with_odd_and_broken_files(ckpt, images, tmp_path):
    out_csv = tmp_path / "out" / "preds.csv"
    r = CliRunner().invoke(
        main,
        ["predict", str(ckpt), str(images), "--json", "--csv", str(out_csv), "--device", "cpu"],
    )
    assert r.exit_code == 1  # one file failed
    preds = {pathlib.Path(p["path"]).name: p for p in json.loads(r.output)}
    assert set(preds) == {"rgb.jpg", "gray.png", "alpha.png", "broken.jpg"}
    assert "cannot read image" in preds["broken.jpg"]["error"]
    for name in ("rgb.jpg", "gray.png", "alpha.png"):
        p = preds[name]
        assert p["error"] is None and p["label"] in ("benign", "malignant")
        assert 0 <= p["probability"] <= 1 and p["positive_class"] == "malignant"
        assert sum(p["probabilities"].values()) == pytest.approx(1)
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 4 and {"path", "label", "probability", "threshold", "error"} <= set(rows[0])


def test_predict_expands_globs_and_reports_missing(ckpt, images):
    pattern = str(images / "**" / "*.png")  # quoted: the shell did not expand it
    r = CliRunner().invoke(main, ["predict", str(ckpt), pattern, "--json"])
    assert r.exit_code == 0, r.output
    assert sorted(pathlib.Path(p["path"]).name for p in json.loads(r.output)) == [
        "alpha.png",
        "gray.png",
    ]
    r = CliRunner().invoke(main, ["predict", str(ckpt), str(images / "nope.jpg")])
    assert r.exit_code == 1 and "error" in r.output and "Traceback" not in r.output


def test_stored_threshold_and_temperature_are_used(ckpt, images):
    image = Image.open(images / "rgb.jpg")
    base = Predictor.from_checkpoint(ckpt, device="cpu", precision="fp32")
    x = base.transform(image).unsqueeze(0)
    with torch.no_grad():
        logits = base.model(x).numpy()
    update_checkpoint(ckpt, temperature=2.0, threshold=0.0)
    pred = Predictor.from_checkpoint(ckpt, device="cpu", precision="fp32").predict([image])[0]
    assert pred.probability == pytest.approx(softmax(logits, 2.0)[0, 1], abs=1e-6)
    assert pred.label == "malignant" and pred.threshold == 0.0  # everything reaches threshold 0
    update_checkpoint(ckpt, threshold=1.0)
    assert Predictor.from_checkpoint(ckpt, device="cpu").predict([image])[0].label == "benign"


def test_tta_views_and_invariance(ckpt):
    x = torch.randn(2, 3, 8, 8)
    views = dihedral_views(x)
    assert len(views) == 8 and torch.equal(views[0], x)
    assert len({v.numpy().tobytes() for v in views}) == 8  # all distinct for a random image
    flat = Image.new("RGB", (32, 32), (180, 120, 90))  # looks the same in every orientation
    plain = Predictor.from_checkpoint(ckpt, device="cpu").predict([flat])[0]
    tta = Predictor.from_checkpoint(ckpt, device="cpu", tta=True).predict([flat])[0]
    assert tta.probability == pytest.approx(plain.probability, abs=1e-5)


def test_gradcam_figures_are_written_per_readable_image(ckpt, images, tmp_path):
    cams = tmp_path / "cams"
    r = CliRunner().invoke(main, ["predict", str(ckpt), str(images), "--cam", str(cams)])
    assert r.exit_code == 1  # the corrupt file still fails; the others get their maps
    for src in ("rgb.jpg", "gray.png", "sub/alpha.png"):
        out = cams / f"{(images / src).stem}_cam.png"
        assert out.is_file(), out
        with Image.open(out) as im:
            im.verify()
    assert not (cams / "broken_cam.png").exists()


def test_gradcam_figure_keeps_the_lesion_and_names_label_probability_and_scale(ckpt):
    from skincls.inference.cam import GradCamExplainer

    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    explainer = GradCamExplainer(predictor.model, predictor.checkpoint.preprocessing)
    image = Image.fromarray(np.random.default_rng(2).integers(0, 255, (40, 56, 3), dtype=np.uint8))
    fig = explainer.figure(image, 1, label="malignant", probability=0.8123, target_name="malignant")
    left, right, bar = fig.axes
    # The original, unmarked and at full resolution, beside the overlay: the lesion stays visible.
    assert np.array_equal(left.get_images()[0].get_array(), np.asarray(image))
    assert len(right.get_images()) == 2  # the image, and the heat map over it
    assert "relevance for malignant" in bar.get_ylabel()
    title = fig.get_suptitle()
    assert "malignant" in title and "0.812" in title


def test_gradcam_works_with_a_frozen_backbone(ckpt, tmp_path):
    from skincls.inference.cam import GradCamExplainer

    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    for p in predictor.model.backbone.parameters():
        p.requires_grad_(False)
    explainer = GradCamExplainer(predictor.model, predictor.checkpoint.preprocessing)
    assert isinstance(explainer.layer, torch.nn.Module)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    heat = explainer.heatmap(image, 1)
    assert heat.shape == (32, 32) and np.isfinite(heat).all()


class _Payload:
    """Unpickling this would create a marker file: a stand-in for arbitrary code execution."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_pickle_payload_checkpoint_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "classes": ["a", "b"], "x": _Payload(marker)}, evil)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(evil)
    r = CliRunner().invoke(main, ["predict", str(evil), str(tmp_path)])
    assert r.exit_code != 0 and "refused" in r.output and "Traceback" not in r.output
    assert not marker.exists()


def test_backbone_module_is_passed_to_the_checkpoint(ckpt, monkeypatch):
    from skincls.evaluation.evaluator import Evaluator
    from skincls.models.checkpoint import Checkpoint

    seen = []
    real = Checkpoint.build_model

    def fake(self, backbone=None):  # a custom-backbone checkpoint needs the module again
        seen.append(backbone)
        return real(self)

    monkeypatch.setattr(Checkpoint, "build_model", fake)
    module = torch.nn.Identity()
    Predictor.from_checkpoint(ckpt, device="cpu", backbone=module)
    Evaluator(ckpt, device="cpu", backbone=module)
    assert seen == [module, module]


def test_threshold_option_overrides_the_stored_one(ckpt, images):
    update_checkpoint(ckpt, threshold=1.0)  # stored: (almost) everything benign
    args = ["predict", str(ckpt), str(images / "rgb.jpg"), str(images / "gray.png"), "--json"]
    r = CliRunner().invoke(main, [*args, "--threshold", "0"])
    assert r.exit_code == 0, r.output
    preds = json.loads(r.output)
    assert [p["label"] for p in preds] == ["malignant", "malignant"]
    assert all(p["threshold"] == 0.0 for p in preds)
    r = CliRunner().invoke(main, [*args[:-1], "--threshold", "0.5"])
    assert r.exit_code == 0 and "threshold 0.5000" in r.output

    r = CliRunner().invoke(main, [*args, "--threshold", "1.5"])
    assert r.exit_code == 2 and "--threshold" in r.output
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        Predictor.from_checkpoint(ckpt, device="cpu", threshold=float("nan"))


def test_threshold_option_is_refused_for_more_than_two_classes(tmp_path, images):
    from skincls.models.checkpoint import save_checkpoint
    from skincls.models.classifier import create_model

    model = create_model("smallcnn", num_classes=3, weights="none", head=(8,), freeze="none")
    path = tmp_path / "three.pt"
    save_checkpoint(path, model, classes=["a", "b", "c"])
    r = CliRunner().invoke(main, ["predict", str(path), str(images), "--threshold", "0.3"])
    assert r.exit_code == 1 and "two-class" in r.output and "Traceback" not in r.output


def test_nan_output_is_an_error_row_not_benign(ckpt, images, monkeypatch):
    import skincls.inference.predict as pr

    real = pr.model_logits

    def overflowing(model, x, *args):
        out = real(model, x, *args).clone()
        out[0] = float("nan")  # the first image of the batch overflowed
        return out

    monkeypatch.setattr(pr, "model_logits", overflowing)
    args = ["predict", str(ckpt), str(images / "rgb.jpg"), str(images / "gray.png"), "--json"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1
    first, second = json.loads(r.output)
    assert first["label"] is None and "NaN or infinite" in first["error"]
    assert second["error"] is None and second["label"] in ("benign", "malignant")
