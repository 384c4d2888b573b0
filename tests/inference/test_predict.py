"""Prediction: odd and broken inputs, folders and globs, threshold and temperature, Grad-CAM, safe loading."""

from __future__ import annotations

import csv
import json
import os
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
        ["predict", str(ckpt), str(images), "--json", "--csv", str(out_csv), "--device", "cpu",
         "--precision", "fp32"],  # compared with float32 by hand below
    )  # fmt: skip
    assert r.exit_code == 1  # one file failed
    preds = {pathlib.Path(p["path"]).name: p for p in json.loads(r.output)}
    assert set(preds) == {"rgb.jpg", "gray.png", "alpha.png", "broken.jpg"}
    assert "cannot read image" in preds["broken.jpg"]["error"]
    # The model's own softmax on each image as PIL reads it; the transparent one is plain white.
    predictor = Predictor.from_checkpoint(ckpt, device="cpu", precision="fp32")
    seen = {
        "rgb.jpg": Image.open(images / "rgb.jpg").convert("RGB"),
        "gray.png": Image.open(images / "gray.png").convert("RGB"),
        "alpha.png": Image.new("RGB", (33, 45), "white"),
    }
    for name, image in seen.items():
        with torch.no_grad():
            logits = predictor.model(predictor.transform(image).unsqueeze(0))
        expected = torch.softmax(logits, 1)[0].tolist()
        p = preds[name]
        assert p["error"] is None and p["positive_class"] == "malignant"
        assert p["probabilities"] == pytest.approx(dict(zip(["benign", "malignant"], expected)))
        assert p["probability"] == pytest.approx(expected[1], abs=1e-6)
        assert p["label"] == ("malignant" if expected[1] > expected[0] else "benign")  # argmax
    rows = {pathlib.Path(r["path"]).name: r for r in csv.DictReader(out_csv.open())}
    assert set(rows) == set(preds)  # the CSV holds the same rows as the JSON
    for name, p in preds.items():
        row = rows[name]
        assert (row["label"] or None, row["error"] or None) == (p["label"], p["error"])
        if p["probability"] is not None:
            assert float(row["probability"]) == pytest.approx(p["probability"], abs=1e-6)


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


def _dihedral_by_hand(x: np.ndarray) -> list[np.ndarray]:
    """The 8 flips and quarter turns of a (C, H, W) array, written with numpy, not skincls."""
    out = []
    for a in (x, x[:, :, ::-1]):
        out += [np.rot90(a, k, axes=(1, 2)).copy() for k in range(4)]
    return out


@pytest.mark.slow
def test_tta_averages_the_eight_dihedral_views(ckpt):
    x = torch.randn(2, 3, 8, 8)
    views = dihedral_views(x)
    assert torch.equal(views[0], x)
    expected = {v.tobytes() for v in _dihedral_by_hand(x[0].numpy())}
    assert len(expected) == 8 and {v[0].numpy().tobytes() for v in views} == expected

    # An image that looks different in every orientation: TTA is the mean of the 8 views' softmax.
    image = Image.fromarray(np.random.default_rng(3).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    plain = Predictor.from_checkpoint(ckpt, device="cpu", precision="fp32").predict([image])[0]
    tta_predictor = Predictor.from_checkpoint(ckpt, device="cpu", tta=True, precision="fp32")
    tta = tta_predictor.predict([image])[0]
    x = tta_predictor.transform(image).numpy()
    with torch.no_grad():
        logits = tta_predictor.model(torch.from_numpy(np.stack(_dihedral_by_hand(x))))
    p = torch.softmax(logits, 1)[:, 1].numpy()
    assert plain.probability == pytest.approx(p[0], abs=1e-6)
    assert tta.probability == pytest.approx(p.mean(), abs=1e-6)
    assert abs(tta.probability - plain.probability) > 1e-4  # the views really differ


@pytest.mark.slow
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


def _gradcam_by_hand(model, layer, x, target):
    """Grad-CAM at the layer's resolution (Selvaraju et al.), min-max scaled to [0, 1]."""
    seen = {}

    def hook(module, inputs, output):
        seen["a"] = output
        output.register_hook(lambda g: seen.__setitem__("g", g))

    handle = layer.register_forward_hook(hook)
    try:
        model(x.requires_grad_(True))[0, target].backward()
    finally:
        handle.remove()
    a, g = seen["a"][0].detach(), seen["g"][0]
    cam = torch.relu((g.mean((1, 2))[:, None, None] * a).sum(0)).numpy()
    return (cam - cam.min()) / (cam.max() - cam.min())


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


@pytest.mark.slow
def test_gradcam_works_with_a_frozen_backbone_and_matches_a_hand_computation(ckpt, tmp_path):
    from skincls.inference.cam import GradCamExplainer

    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    for p in predictor.model.backbone.parameters():
        p.requires_grad_(False)
    pre = predictor.checkpoint.preprocessing.with_size(64)  # a 4 x 4 feature map
    explainer = GradCamExplainer(predictor.model, pre)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    x = explainer.transform(image).unsqueeze(0)
    hand = [_gradcam_by_hand(predictor.model, explainer.layer, x.clone(), k) for k in (0, 1)]
    assert hand[0].shape == (4, 4)
    for k in (0, 1):
        heat = explainer.heatmap(image, k)
        assert heat.shape == (64, 64) and heat.min() == pytest.approx(0, abs=1e-6)
        assert heat.max() == pytest.approx(1, abs=1e-6)
        coarse = heat.reshape(4, 16, 4, 16).mean(axis=(1, 3))  # back to the layer's resolution
        assert np.corrcoef(coarse.ravel(), hand[k].ravel())[0, 1] > 0.95, k
        assert np.corrcoef(coarse.ravel(), hand[1 - k].ravel())[0, 1] < 0.5, k  # class matters


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


def test_predict_csv_escapes_undecodable_names_and_cells_a_spreadsheet_would_run(
    ckpt, tmp_path, monkeypatch
):
    folder = tmp_path / "imgs"
    folder.mkdir()
    odd = os.fsdecode(bytes(folder) + b"/\xff\xfe.png")  # as Python holds a name that is not UTF-8
    Image.new("RGB", (20, 20), (120, 80, 60)).save(odd, format="PNG")
    Image.new("RGB", (20, 20), (60, 80, 120)).save(tmp_path / "=1+2.png")
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(
        main,
        ["predict", str(ckpt), str(folder), "=1+2.png", "--csv", "out.csv", "--device", "cpu",
         "--quiet"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert f"{folder}/\\xff\\xfe.png" in r.output  # the table shows the bytes too
    with open("out.csv", encoding="utf-8", newline="") as fh:
        paths = [row["path"] for row in csv.DictReader(fh)]
    assert sorted(paths) == ["./=1+2.png", f"{folder}/\\xff\\xfe.png"]
