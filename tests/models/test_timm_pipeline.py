"""A timm CNN and a timm ViT through the whole pipeline: train → evaluate → predict (Grad-CAM, TTA) →
export (parity) → serve; and the frozen-feature cache runs the backbone once per image."""

from __future__ import annotations

import json
import re

import pytest
import torch
from click.testing import CliRunner

from skincls.cli import main
from skincls.models.checkpoint import load_checkpoint
from tests.conftest import TINY_TRAIN

from ..serve._support import image_bytes, needs

timm = needs("timm", "timm backbones need: pip install 'skincls[timm]'")

ARCHS = {"cnn": "timm/test_efficientnet", "vit": "timm/test_vit"}


def _train_args(data, out, arch: str, weights: str, *extra: str) -> list[str]:
    """conftest's TINY_TRAIN with this arch, weights and a 16-unit head (no freezing given)."""
    args = list(TINY_TRAIN)
    args[args.index("--arch") + 1], args[args.index("--weights") + 1] = arch, weights
    i = args.index("--freeze")
    args[i : i + 2] = ["--head", "16"]
    return ["train", "--data-dir", str(data), "--out", str(out), *args, *extra]


@pytest.fixture(scope="module", params=sorted(ARCHS))
def trained(request, tiny_data, tmp_path_factory):
    """A run trained from a local weights file (a random timm model's state dict), last stage tuned."""
    name = ARCHS[request.param]
    tmp = tmp_path_factory.mktemp(request.param)
    weights = tmp / "weights.pt"
    torch.manual_seed(0)
    torch.save(timm.create_model(name.removeprefix("timm/")).state_dict(), weights)
    args = _train_args(tiny_data, tmp / "run", name, str(weights), "--train-stages", "1")
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    return name, tmp / "run" / "best.pt"


def test_trained_checkpoint_records_arch_and_preprocessing(trained):
    name, path = trained
    ckpt = load_checkpoint(path)
    assert ckpt.model_config["arch"] == name and ckpt.model_config["freeze"] == 1
    # built by timm as for pretrained weights (from the file), and so rebuilt
    assert ckpt.model_config["timm_args"]["pretrained"] is True
    pre = ckpt.preprocessing  # from the weights' pretrained_cfg, at the --image-size asked for
    assert pre.crop_size == 32 and pre.interpolation == "bicubic"
    assert pre.mean == tuple(timm.create_model(name.removeprefix("timm/")).pretrained_cfg["mean"])


def test_evaluate_and_predict_with_tta_and_gradcam(trained, tiny_data, tmp_path):
    _, path = trained
    r = CliRunner().invoke(main, ["evaluate", str(path), "--data-dir", str(tiny_data), "--tta"])
    assert r.exit_code == 0, r.output
    image = next((tiny_data / "images" / "test").rglob("*.jpg"))
    cams = tmp_path / "cams"
    args = ["predict", str(path), str(image), "--json", "--tta", "--cam", str(cams)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    [pred] = json.loads(r.stdout)
    assert 0 <= pred["probability"] <= 1
    assert list(cams.glob("*.png")), "no Grad-CAM figure written"


def test_gradcam_targets_the_last_stage_or_block(trained):
    from PIL import Image

    from skincls.inference.cam import GradCamExplainer

    name, path = trained
    ckpt = load_checkpoint(path)
    model = ckpt.build_model()
    explainer = GradCamExplainer(model, ckpt.preprocessing)
    if name.endswith("vit"):
        assert explainer.layer is model.backbone.blocks[-1].norm1
    heat = explainer.heatmap(Image.new("RGB", (40, 40), (200, 120, 90)), 1)
    assert heat.shape == (32, 32) and heat.min() >= 0 and heat.max() <= 1


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_passes_parity(trained, tmp_path, fmt):
    _, path = trained
    out = tmp_path / f"model.{fmt}"
    r = CliRunner().invoke(main, ["export", str(path), "--format", fmt, "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert out.is_file()
    assert float(re.search(r"max abs difference (\S+)", r.output).group(1)) <= 1e-4


def test_safetensors_copy_holds_every_field_and_predicts_the_same(trained, tiny_data, tmp_path):
    _, path = trained
    out = tmp_path / "model.safetensors"
    r = CliRunner().invoke(
        main, ["export", str(path), "--format", "safetensors", "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    a, b = load_checkpoint(path), load_checkpoint(out)
    assert {k: v for k, v in a.data.items() if k not in ("state_dict", "training_state")} == {
        k: v for k, v in b.data.items() if k != "state_dict"
    }
    assert all(torch.equal(v, b.data["state_dict"][k]) for k, v in a.data["state_dict"].items())
    images = [str(p) for p in sorted((tiny_data / "images" / "test").rglob("*.jpg"))[:4]]
    preds = []
    for ckpt in (path, out):
        r = CliRunner().invoke(main, ["predict", str(ckpt), *images, "--json", "--tta"])
        assert r.exit_code == 0, r.output
        preds.append(json.loads(r.stdout))
    assert preds[0] == preds[1] and len(preds[0]) == 4


def test_serve_predicts_with_a_heat_map(trained):
    needs("starlette", "skincls serve needs: pip install 'skincls[serve]'")
    from starlette.testclient import TestClient

    from skincls.serve.app import create_app
    from skincls.serve.service import ModelService

    _, path = trained
    with TestClient(create_app(ModelService.from_checkpoint(path, device="cpu"))) as client:
        files = [("images", ("a.png", image_bytes(1), "application/octet-stream"))]
        r = client.post("/api/predict", files=files)
    assert r.status_code == 200, r.text
    [result] = r.json()["results"]
    assert result["heatmap"].startswith("data:image/") and not result["cam_error"], result


def test_frozen_backbone_runs_once_per_image(tiny_data, tmp_path, monkeypatch):
    """With the backbone frozen, its features are cached: 2 epochs cost one pass over the images."""
    seen = []
    real = timm.models.vision_transformer.VisionTransformer.forward

    def counting(self, x):
        seen.append(x.shape[0])
        return real(self, x)

    monkeypatch.setattr(timm.models.vision_transformer.VisionTransformer, "forward", counting)
    weights = tmp_path / "vit.pt"
    torch.save(timm.create_model("test_vit", num_classes=0).state_dict(), weights)
    args = _train_args(
        tiny_data, tmp_path / "run", ARCHS["vit"], str(weights), "--freeze", "backbone"
    )
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    from skincls.data.splits import load_manifest

    n_fit = sum(r.split in ("train", "val") for r in load_manifest(tiny_data).records)
    assert sum(seen) <= n_fit + 2  # one pass over train and val (+ the probes of a batch of one)
