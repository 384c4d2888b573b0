"""timm models at another input size than their weights': built for it when timm can, else one line.

Tiny configs of real timm families (random weights, never downloaded): Swin (windows; timm builds it
for any size), LeViT (attention biases sized for one input; timm builds it at `img_size`) and
EfficientFormer (its last stage's biases fit 224 px only, whatever `img_size` says).
"""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from skincls.cli import main
from skincls.errors import ModelError
from skincls.models.checkpoint import load_checkpoint, save_checkpoint
from skincls.models.classifier import create_model
from tests.conftest import TINY_TRAIN

timm = pytest.importorskip("timm", reason="timm backbones need: pip install 'skincls[timm]'")

TINY = {
    "swin_tiny_patch4_window7_224": {"embed_dim": 16, "depths": (1, 1), "num_heads": (1, 2)},
    "levit_128s": {
        "embed_dim": (16, 32, 48),
        "key_dim": 8,
        "num_heads": (1, 2, 3),
        "depth": (1, 1, 1),
    },
    "efficientformer_l1": {"depths": (1, 1, 1, 1), "embed_dims": (8, 8, 16, 16), "num_vit": 1},
}


@pytest.fixture(autouse=True)
def _tiny_configs(monkeypatch):
    """timm builds these families at a tiny width and depth (same layers, same size rules)."""
    create = timm.create_model

    def tiny(name, *args, **kwargs):
        return create(name, *args, **{**TINY.get(name, {}), **kwargs})

    monkeypatch.setattr(timm, "create_model", tiny)


@pytest.mark.parametrize("name", ["swin_tiny_patch4_window7_224", "levit_128s"])
def test_fixed_size_families_are_built_for_the_size_asked(name, tmp_path):
    arch = f"timm/{name}"
    torch.manual_seed(0)
    model = create_model(arch, weights="none", head=(), freeze="none", image_size=96).eval()
    assert model.preprocessing.crop_size == 96
    images = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        before = model(images)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, classes=["benign", "malignant"])
    rebuilt = load_checkpoint(path).build_model()  # at the checkpoint's 96 px, weights fitting
    with torch.no_grad():
        assert torch.equal(rebuilt(images), before)


def test_a_model_that_runs_at_one_size_only_is_refused_in_one_line(tiny_data, tmp_path):
    with pytest.raises(ModelError) as err:
        create_model("timm/efficientformer_l1", weights="none", image_size=96)
    assert str(err.value).startswith(
        "timm/efficientformer_l1 runs only at its native input size of 224 px, not 96 px ("
    )
    assert "train it at data.image_size=224 (the default)" in str(err.value)
    assert create_model("timm/efficientformer_l1", weights="none", image_size=224)

    args = list(TINY_TRAIN)
    args[args.index("--arch") + 1] = "timm/efficientformer_l1"
    args[args.index("--image-size") + 1] = "96"
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--data-dir", str(tiny_data), "--out", str(out), *args])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    [line] = r.output.strip().splitlines()
    assert line.startswith("Error: timm/efficientformer_l1 runs only at its native input size")
    assert "train it at --image-size 224 (the default)" in line
