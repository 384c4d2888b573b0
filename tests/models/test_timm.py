"""timm backbones (`--arch timm/NAME`): stages, preprocessing, weights from files and the Hub cache."""

from __future__ import annotations

import json
import logging
import pickle
import sys

import pytest
import torch
from click.testing import CliRunner

from skincls.cli import main
from skincls.errors import CheckpointError, ModelError
from skincls.models.checkpoint import load_checkpoint, save_checkpoint
from skincls.models.classifier import count_parameters, create_model, set_freeze

timm = pytest.importorskip("timm", reason="timm backbones need: pip install 'skincls[timm]'")
hf_constants = pytest.importorskip("huggingface_hub.constants")

VIT = "timm/test_vit"  # timm's tiny ViT: 6 blocks, width 64, trained at 160 px
CNN = "timm/test_efficientnet"


def _trainable(model) -> set[str]:
    return {n for n, p in model.backbone.named_parameters() if p.requires_grad}


def test_vit_builds_without_classifier_and_takes_preprocessing_from_its_weights():
    model = create_model(VIT, weights="none", head=(8,), dropout=0.0)
    assert model.config["arch"] == VIT
    assert not any(n.startswith("head.") for n, _ in model.backbone.named_parameters())
    pre = model.preprocessing  # pretrained_cfg: 160 px, crop_pct 0.95, bicubic, mean/std 0.5
    assert (pre.crop_size, pre.resize_size, pre.interpolation) == (160, 168, "bicubic")
    assert pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.5, 0.5, 0.5)
    with torch.no_grad():  # another size than it was built for (--image-size): still runs
        assert model(torch.rand(3, 3, 32, 32)).shape == (3, 2)


def test_vit_stages_are_its_blocks_and_freezing_follows_them():
    model = create_model(VIT, weights="none", head=(8,), freeze="backbone")
    assert len(model.stages) == 7  # stem (patch embedding, cls token, positions) + 6 blocks
    assert _trainable(model) == set()
    set_freeze(model, 1)
    assert {
        n.split(".")[0] + "." + n.split(".")[1] for n in _trainable(model) if "blocks" in n
    } == {"blocks.5"}
    assert "cls_token" not in _trainable(model) and "norm.weight" in _trainable(model)
    set_freeze(model, "none")
    assert {"cls_token", "pos_embed"} <= _trainable(model)
    assert count_parameters(model, True) == count_parameters(model)


def test_cnn_stages_and_frozen_batchnorm_stay_in_eval_mode():
    model = create_model(CNN, weights="none", head=(), freeze=1)
    assert len(model.stages) >= 4
    model.train()
    frozen_bn = [
        m
        for m in model.backbone.modules()
        if isinstance(m, torch.nn.BatchNorm2d) and not m.weight.requires_grad
    ]
    assert frozen_bn and not any(m.training for m in frozen_bn)


def test_weights_file_loads_what_fits_and_names_the_rest(tmp_path, caplog):
    torch.manual_seed(0)
    source = timm.create_model("test_vit")  # with its 1000-class head: two tensors to leave out
    path = tmp_path / "vit.pt"
    torch.save(source.state_dict(), path)
    with caplog.at_level(logging.INFO, logger="skincls"):
        model = create_model(VIT, weights=str(path))
    assert f"loaded 78 of 80 tensors from {path}; not used: head.weight, head.bias" in caplog.text
    torch.testing.assert_close(model.backbone.pos_embed, source.pos_embed)


def test_safetensors_file_loads(tmp_path):
    from safetensors.torch import save_file

    source = timm.create_model("test_vit", num_classes=0)
    path = tmp_path / "vit.safetensors"
    save_file(source.state_dict(), str(path))
    model = create_model(VIT, weights=str(path))
    torch.testing.assert_close(
        model.backbone.blocks[3].mlp.fc1.weight, source.blocks[3].mlp.fc1.weight
    )


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_vit_weights_made_at_another_size_have_their_positions_resampled(tmp_path, suffix, caplog):
    """timm's checkpoint filter for the family runs on the file, as on hub weights: the 2 x 2
    position grid of weights made at 32 px is resampled to the model's, not left random."""
    from safetensors.torch import save_file
    from timm.layers import resample_abs_pos_embed

    torch.manual_seed(0)
    source = timm.create_model("test_vit", img_size=32, num_classes=0)  # patches 16: 2 x 2 grid
    path = tmp_path / f"vit32{suffix}"
    if suffix == ".pt":
        torch.save(source.state_dict(), path)
    else:
        save_file(source.state_dict(), str(path))
    with caplog.at_level(logging.INFO, logger="skincls"):
        model = create_model(VIT, weights=str(path), image_size=48)
    net = model.backbone
    assert net.patch_embed.grid_size == (10, 10)  # built at its weights' native 160 px, dynamic
    expected = resample_abs_pos_embed(source.pos_embed, new_size=(10, 10), num_prefix_tokens=1)
    torch.testing.assert_close(net.pos_embed, expected)
    torch.testing.assert_close(net.cls_token, source.cls_token)
    torch.testing.assert_close(net.blocks[5].attn.qkv.weight, source.blocks[5].attn.qkv.weight)
    assert f"{path}: resampled to the model's size by timm: pos_embed" in caplog.text
    assert "left as initialised" not in caplog.text
    with torch.no_grad():
        assert model(torch.rand(2, 3, 48, 48)).shape == (2, 2)


def test_weights_of_another_model_are_refused(tmp_path):
    path = tmp_path / "cnn.pt"
    torch.save(timm.create_model("test_efficientnet").state_dict(), path)
    with pytest.raises(
        ModelError, match=r"does not fit timm's test_vit: only 0 of its \d+ tensors"
    ):
        create_model(VIT, weights=str(path))


def test_weights_file_that_needs_unpickling_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"a": object()}, fh)  # not loadable with weights_only=True
    with pytest.raises(ModelError, match="cannot read weights file"):
        create_model(VIT, weights=str(path))


def _offline_hub(monkeypatch, tmp_path):
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return cache


def test_pretrained_weights_offline_and_not_cached_is_one_clear_error(monkeypatch, tmp_path):
    cache = _offline_hub(monkeypatch, tmp_path)
    with pytest.raises(ModelError) as info:
        create_model(VIT, weights="imagenet")
    msg = str(info.value)
    assert "\n" not in msg
    assert "hf download timm/test_vit.r160_in1k" in msg and str(cache) in msg
    assert "weights=FILE" in msg and "HF_HUB_OFFLINE is set" in msg and "--" not in msg
    from skincls.cli._flags import spell_flags
    from skincls.errors import option_spelling

    with option_spelling(spell_flags):  # as the CLI prints it
        cli = str(info.value)
    assert cli.endswith(
        "or pass a .safetensors or state-dict file with --weights FILE; or train from scratch "
        "with --weights none --freeze none"
    ), cli


def test_pretrained_weights_come_from_the_hub_cache_offline(monkeypatch, tmp_path):
    from safetensors.torch import save_file

    cache = _offline_hub(monkeypatch, tmp_path)
    repo = cache / "models--timm--test_vit.r160_in1k"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    source = timm.create_model("test_vit")
    save_file(source.state_dict(), str(repo / "snapshots" / commit / "model.safetensors"))
    model = create_model(VIT, weights="pretrained")
    torch.testing.assert_close(model.backbone.cls_token, source.cls_token)


def test_missing_timm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ModelError, match=r"pip install 'skincls\[timm\]'"):
        create_model(VIT, weights="none")


def test_unknown_timm_name_says_how_to_list():
    with pytest.raises(ModelError) as info:
        create_model("timm/no_such_net", weights="none")
    assert str(info.value).endswith(
        "list what it offers with: skincls.list_timm_models(pattern='*no_such_net*')"
    )
    from skincls.cli._flags import spell_flags
    from skincls.errors import option_spelling

    with option_spelling(spell_flags):  # as the CLI prints it
        assert str(info.value).endswith(
            "list what it offers with: skincls models --timm *no_such_net*"
        )


def test_checkpoint_of_a_timm_model_rebuilds_to_the_same_outputs(tmp_path):
    model = create_model(VIT, weights="none", head=(8,), dropout=0.0).eval()
    path = tmp_path / "model.pt"
    pre = model.preprocessing.with_size(32)
    save_checkpoint(path, model, classes=["benign", "malignant"], preprocessing=pre)
    rebuilt = load_checkpoint(path).build_model()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


FBNET = "timm/fbnetc_100"  # built with another batch-norm eps when pretrained=True (timm's choice)


def _bn_eps(model) -> set[float]:
    return {m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}


def test_checkpoint_of_a_model_built_from_a_weights_file_rebuilds_as_trained(tmp_path):
    """timm builds fbnetc_100 for its pretrained weights with eps 1e-3 (1e-5 otherwise): a weights
    file builds it so, and so must the rebuild from its checkpoint, or its outputs drift."""
    path = tmp_path / "fbnet.pt"
    torch.manual_seed(0)
    torch.save(timm.create_model("fbnetc_100", num_classes=0).state_dict(), path)
    model = create_model(FBNET, weights=str(path), head=(), dropout=0.0, image_size=32)
    assert _bn_eps(model.backbone) == {1e-3}
    assert model.config["timm_args"] == {"pretrained": True}
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        model.train()(x)  # running statistics of its own, as after training
        expected = model.eval()(x)
    save_checkpoint(tmp_path / "model.pt", model, classes=["benign", "malignant"])
    rebuilt = load_checkpoint(tmp_path / "model.pt").build_model()
    assert _bn_eps(rebuilt.backbone) == {1e-3}
    with torch.no_grad():
        assert torch.equal(rebuilt(x), expected)


@pytest.mark.parametrize(("weights", "eps"), [("imagenet", 1e-3), ("none", 1e-5), ("w.pt", 1e-5)])
def test_checkpoint_without_timm_args_rebuilds_as_it_was_built(weights, eps, tmp_path):
    """Checkpoints from before `timm_args`: hub weights were always built as pretrained; weights
    files and random weights were not."""
    model = create_model(FBNET, weights="none", head=(), image_size=32)
    config = {k: v for k, v in model.config.items() if k != "timm_args"}
    path = tmp_path / "model.pt"
    save_checkpoint(
        path, model, classes=["benign", "malignant"], model_config={**config, "weights": weights}
    )
    assert _bn_eps(load_checkpoint(path).build_model().backbone) == {eps}


def test_checkpoint_rebuilds_with_the_recorded_arguments_not_found_again(tmp_path):
    model = create_model(VIT, weights="none", head=(), image_size=32)
    assert model.config["timm_args"] == {"pretrained": False, "dynamic_img_size": True}
    path = tmp_path / "model.pt"
    args = {"pretrained": False, "dynamic_img_size": True, "dynamic_img_pad": True}
    config = {**model.config, "timm_args": args}
    save_checkpoint(path, model, classes=["benign", "malignant"], model_config=config)
    rebuilt = load_checkpoint(path).build_model()
    assert rebuilt.backbone.patch_embed.dynamic_img_pad
    assert not model.backbone.patch_embed.dynamic_img_pad


def test_checkpoint_with_malformed_timm_args_is_refused_in_one_line(tmp_path):
    model = create_model(VIT, weights="none", head=())
    path = tmp_path / "model.pt"
    config = {**model.config, "timm_args": {"pretrained": "yes"}}
    save_checkpoint(path, model, classes=["benign", "malignant"], model_config=config)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path).build_model()
    assert str(info.value) == (
        f"{path}: cannot rebuild its model: its timm_args {{'pretrained': 'yes'}} are not "
        "timm.create_model's arguments (a mapping with pretrained: true or false)"
    )


def test_cli_lists_timm_models():
    r = CliRunner().invoke(main, ["models", "--timm", "test_vit*", "--json"])
    assert r.exit_code == 0, r.output
    assert "timm/test_vit.r160_in1k" in json.loads(r.stdout)
