"""An ensemble checkpoint (`skincls cv`) served like a single model: info, averaged probabilities, CAM."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from skincls.experiments.ensemble import create_ensemble
from skincls.inference.cam import GradCamExplainer
from skincls.inference.predict import Predictor
from skincls.models.checkpoint import save_checkpoint
from skincls.models.classifier import create_model

from ._support import image_bytes, needs

needs("starlette", "skincls serve needs: pip install 'skincls[serve]'")

from starlette.testclient import TestClient  # noqa: E402

from skincls.serve.app import create_app  # noqa: E402
from skincls.serve.schemas import ModelInfo, PredictResponse  # noqa: E402
from skincls.serve.service import ModelService  # noqa: E402


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """Two untrained 32 px smallcnn checkpoints with different weights and temperatures."""
    folder = tmp_path_factory.mktemp("members")
    paths = []
    for seed, temperature in ((0, 1.0), (1, 2.0)):
        torch.manual_seed(seed)
        model = create_model("smallcnn", weights="none", head=(16,), dropout=0.0, freeze="none")
        path = folder / f"m{seed}.pt"
        save_checkpoint(
            path,
            model,
            classes=["benign", "malignant"],
            preprocessing=model.preprocessing.with_size(32),
            temperature=temperature,
        )
        paths.append(path)
    return paths


def test_ensemble_checkpoint_is_served_with_mean_probabilities_and_a_heatmap(members, tmp_path):
    ens = create_ensemble(members, tmp_path / "ensemble.pt", threshold=0.4)
    service = ModelService.from_checkpoint(ens.path, device="cpu", precision="fp32")
    with TestClient(create_app(service)) as c:
        info = ModelInfo.model_validate(c.get("/api/model").json())
        data = image_bytes(7, (50, 40))
        r = c.post("/api/predict", files=[("images", ("a.png", data, "image/png"))])
    assert info.arch == "ensemble" and info.members == 2
    assert info.name.startswith("ensemble of 2 smallcnn models")
    assert info.threshold == 0.4 and info.precision == "fp32"
    assert r.status_code == 200, r.text
    (result,) = PredictResponse.model_validate(r.json()).results

    image = Image.open(io.BytesIO(data)).convert("RGB")
    singles = [
        Predictor.from_checkpoint(m, "cpu", precision="fp32").predict([image])[0] for m in members
    ]
    mean = np.mean([[p.probabilities[c] for c in ("benign", "malignant")] for p in singles], axis=0)
    got = [result.probabilities[c] for c in ("benign", "malignant")]
    np.testing.assert_allclose(got, mean, atol=1e-5)
    assert result.label == ("malignant" if mean[1] >= 0.4 else "benign")
    assert result.heatmap is not None and result.cam_error is None


def test_gradcam_of_an_ensemble_hooks_every_members_feature_map(members, tmp_path):
    ens = create_ensemble(members, tmp_path / "ensemble.pt")
    model = ens.build_model()
    explainer = GradCamExplainer(model, ens.preprocessing)
    assert len(explainer.layers) == 2  # separate backbones: one map each, averaged
    assert {id(layer) for layer in explainer.layers} == {
        id(GradCamExplainer(m, ens.preprocessing).layer) for m in model.members
    }
    heat = explainer.heatmap(Image.open(io.BytesIO(image_bytes(3))).convert("RGB"), 1)
    assert heat.shape == (32, 32) and np.isfinite(heat).all() and heat.max() > 0
