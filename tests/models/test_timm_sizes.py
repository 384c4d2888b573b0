"""timm models at another input size than their weights': built for it when timm can, else one line.

Tiny configs of real timm families (random weights, never downloaded): Swin (windows; timm builds it
for any size), LeViT (attention biases sized for one input; timm builds it at `img_size`, but cannot
resample weights made for another), BEiT (relative position tables sized for one input, which timm
resamples) and EfficientFormer (its last stage's biases fit 224 px only, whatever `img_size` says).
"""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from skincls.cli import main
from skincls.errors import ModelError
from skincls.models.checkpoint import load_checkpoint, save_checkpoint
from skincls.models.classifier import create_model
from tests.conftest import TINY_TRAIN

timm = pytest.importorskip("timm", reason="timm backbones need: pip install 'skincls[timm]'")
hf_constants = pytest.importorskip("huggingface_hub.constants")

TINY = {
    "swin_tiny_patch4_window7_224": {"embed_dim": 16, "depths": (1, 1), "num_heads": (1, 2)},
    "levit_128s": {
        "embed_dim": (16, 32, 48),
        "key_dim": 8,
        "num_heads": (1, 2, 3),
        "depth": (1, 1, 1),
    },
    "efficientformer_l1": {"depths": (1, 1, 1, 1), "embed_dims": (8, 8, 16, 16), "num_vit": 1},
    "beit_base_patch16_224": {"embed_dim": 16, "depth": 1, "num_heads": 1},
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


def _weights(name, tmp_path, monkeypatch, source: str):
    """The state dict of a random `name` at its native 224 px, as a file or in an offline hub cache;
    returns (the model saved, what to pass as `weights`)."""
    torch.manual_seed(0)
    saved = timm.create_model(name, num_classes=0)
    with torch.no_grad():  # position tables start at zero: make them (all) tell apart
        for param in saved.parameters():
            param.uniform_(-1, 1)
    if source == "file":
        path = tmp_path / f"{name}.pt"
        torch.save(saved.state_dict(), path)
        return saved, str(path)
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    hub_id = timm.models.get_pretrained_cfg(name).hf_hub_id
    repo = cache / ("models--" + hub_id.replace("/", "--"))
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(saved.state_dict(), str(repo / "snapshots" / commit / "model.safetensors"))
    return saved, "imagenet"


@pytest.mark.parametrize("source", ["file", "hub"])
def test_position_tables_of_weights_are_resampled_to_the_size_asked(source, tmp_path, monkeypatch):
    from timm.layers import resize_rel_pos_bias_table

    saved, weights = _weights("beit_base_patch16_224", tmp_path, monkeypatch, source)
    model = create_model("timm/beit_base_patch16_224", weights=weights, image_size=96)
    attn = model.backbone.blocks[0].attn
    assert attn.window_size == (6, 6)  # built for 96 px: a 6 x 6 patch grid, not 14 x 14
    table = saved.blocks[0].attn.relative_position_bias_table
    expected = resize_rel_pos_bias_table(
        table, new_window_size=(6, 6), new_bias_shape=attn.relative_position_bias_table.shape
    )
    torch.testing.assert_close(attn.relative_position_bias_table, expected)
    torch.testing.assert_close(model.backbone.cls_token, saved.cls_token)


@pytest.mark.parametrize("source", ["file", "hub"])
def test_weights_timm_cannot_resample_to_the_size_asked_are_refused(source, tmp_path, monkeypatch):
    saved, weights = _weights("levit_128s", tmp_path, monkeypatch, source)
    with pytest.raises(ModelError) as err:
        create_model("timm/levit_128s", weights=weights, image_size=96)
    msg = str(err.value)
    assert "\n" not in msg and "at 96 px: 5 tensors have another shape in the weights" in msg
    assert "(stages.0.blocks.0.attn.attention_biases: [1, 196] in the weights, [1, 36] in " in msg
    assert msg.endswith(
        "build the model at that size with data.image_size=N; or train without them with "
        "weights='none', freeze='none'"
    )
    model = create_model("timm/levit_128s", weights=weights)  # at the weights' own 224 px
    torch.testing.assert_close(
        model.backbone.stages[0].blocks[0].attn.attention_biases,
        saved.stages[0].blocks[0].attn.attention_biases,
    )


def test_cli_refuses_weights_it_cannot_resample_in_one_line(tiny_data, tmp_path):
    path = tmp_path / "levit.pt"
    torch.save(timm.create_model("levit_128s", num_classes=0).state_dict(), path)
    args = list(TINY_TRAIN)
    args[args.index("--arch") + 1] = "timm/levit_128s"
    args[args.index("--image-size") + 1] = "96"
    args[args.index("--weights") + 1] = str(path)
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--data-dir", str(tiny_data), "--out", str(out), *args])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    [line] = r.output.strip().splitlines()
    assert line.startswith(f"Error: weights file {path} does not fit timm's levit_128s at 96 px: ")
    assert line.endswith(
        "build the model at that size with --image-size N; or train without them with "
        "--weights none --freeze none"
    )
