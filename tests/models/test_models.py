"""Model factory: registry, heads, freezing, weights files and downloads, custom backbones, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torchvision.models import get_model, get_model_weights

from skincls.cli import main
from skincls.config import TrainConfig
from skincls.data.dataset import ManifestDataset, build_transform
from skincls.data.splits import load_manifest
from skincls.errors import CheckpointError, ModelError
from skincls.models.checkpoint import load_checkpoint, save_checkpoint
from skincls.models.classifier import (
    count_parameters,
    create_model,
    describe_models,
    list_models,
    register_model,
    set_freeze,
)
from skincls.preprocessing import Preprocessing

REQUIRED = [
    *(f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")),
    "resnet18",
    "resnet50",
    "efficientnet_b0",
    "efficientnet_b3",
    "efficientnet_v2_s",
    "convnext_tiny",
    "mobilenet_v3_large",
    "densenet121",
    "smallcnn",
]


def _maxpool_blocks(seq: nn.Sequential, prefix: str) -> list[list[str]]:
    blocks, current = [], []
    for i, m in enumerate(seq):
        current.append(f"{prefix}{i}.")
        if isinstance(m, nn.MaxPool2d):
            blocks.append(current)
            current = []
    return blocks


def _expected_stages(arch: str, backbone: nn.Module) -> list[list[str]]:
    """Each family's stages as parameter-name prefixes, written down independently of skincls."""
    if arch.startswith("vgg"):
        return _maxpool_blocks(backbone.features, "features.")
    if arch == "smallcnn":
        return _maxpool_blocks(backbone, "")
    if arch.startswith("resnet"):
        return [["conv1.", "bn1."]] + [[f"layer{i}."] for i in range(1, 5)]
    if arch.startswith(("efficientnet", "mobilenet")):
        return [[f"features.{i}."] for i in range(len(backbone.features))]
    if arch.startswith("convnext"):
        f = "features."
        return [
            [f + "0."],
            [f + "1."],
            [f + "2.", f + "3."],
            [f + "4.", f + "5."],
            [f + "6.", f + "7.", "norm."],
        ]
    if arch.startswith("densenet"):
        f = "features."
        return [[f + "conv0.", f + "norm0."]] + [
            [f"{f}denseblock{i}.", f"{f}transition{i}." if i < 4 else f + "norm5."]
            for i in range(1, 5)
        ]
    raise AssertionError(arch)


def _trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_registry_covers_the_required_archs_and_rejects_duplicates():
    assert set(REQUIRED) <= set(list_models())
    with pytest.raises(ModelError, match="already registered"):
        register_model("resnet18")(lambda weights: None)
    with pytest.raises(ModelError, match=r"available: .*vgg16"):
        create_model("vgg17", weights="none")


# `pytest -m "not slow"` builds one architecture of most families (each has its own split into stages).
FAST = {
    "smallcnn",
    "vgg16",
    "resnet18",
    "efficientnet_b0",
    "mobilenet_v3_large",
    "densenet121",
}


@pytest.mark.parametrize(
    "arch", [a if a in FAST else pytest.param(a, marks=pytest.mark.slow) for a in REQUIRED]
)
def test_every_arch_builds_runs_and_freezes_by_stage(arch):
    torch.manual_seed(0)
    model = create_model(arch, weights="none")
    out = model.eval()(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 2) and torch.isfinite(out).all()

    stages = _expected_stages(arch, model.backbone)
    named = dict(model.backbone.named_parameters())
    sizes = [sum(p.numel() for n, p in named.items() if n.startswith(tuple(s))) for s in stages]
    assert sum(sizes) == count_parameters(model.backbone)  # the stages cover the whole backbone
    assert len(model.stages) == len(stages)
    head = count_parameters(model.head)
    assert _trainable(model) == head  # the default freezes the whole backbone
    for k in (0, 1, 2, len(stages)):
        set_freeze(model, k)
        assert _trainable(model) == head + sum(sizes[len(sizes) - k :]), k
    set_freeze(model, "none")
    assert _trainable(model) == count_parameters(model)
    set_freeze(model, "backbone")
    assert _trainable(model) == head
    with pytest.raises(ModelError, match=f"0 to {len(stages)}"):
        set_freeze(model, len(stages) + 1)
    if arch.startswith("vgg"):  # the pretrained 25088→4096 layer is reused as the head's first
        assert model.head[0].in_features == 25088 and model.head[0].out_features == 4096


@pytest.mark.slow
def test_vgg16_default_recipe_and_describe_models_agree():
    model = create_model(weights="none")
    assert model.config["arch"] == "vgg16"
    assert _trainable(model) == 104_863_234
    rows = {r.name: r for r in describe_models()}
    assert rows["vgg16"].trainable == 104_863_234
    assert rows["vgg16"].params == count_parameters(model)
    assert rows["efficientnet_b3"].input_size == 300 and rows["smallcnn"].imagenet_acc1 is None


def test_preprocessing_comes_from_the_weights_metadata():
    t = get_model_weights("efficientnet_b3").DEFAULT.transforms()
    with torch.device("meta"):  # no weights allocated
        model = create_model("efficientnet_b3", weights="none", head=())
        pre = model.preprocessing
    assert (pre.crop_size, pre.resize_size, pre.interpolation) == (300, 320, "bicubic")
    assert pre.mean == tuple(t.mean) and pre.std == tuple(t.std)
    assert model.preprocessing == pre


@pytest.mark.parametrize("freeze", ["backbone", 1])
def test_frozen_batchnorm_statistics_do_not_move(freeze):
    torch.manual_seed(0)
    model = create_model("resnet18", weights="none", head=(16,), freeze=freeze)
    model.train()
    frozen_bns = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    trained_bns = []
    if freeze == 1:
        trained_bns = [m for m in model.backbone.layer4.modules() if isinstance(m, nn.BatchNorm2d)]
        frozen_bns = [m for m in frozen_bns if all(m is not t for t in trained_bns)]
    assert all(not m.training for m in frozen_bns) and all(m.training for m in trained_bns)
    assert model.head.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    opt.step()
    after = model.state_dict()
    for k in before:
        moved = not torch.equal(before[k], after[k])
        in_backbone = k.startswith("backbone.")
        trains = freeze == 1 and k.startswith("backbone.layer4.")
        assert moved == (trains or not in_backbone), k


def _saved_net(tmp_path: Path, arch: str, **kw) -> tuple[nn.Module, Path]:
    torch.manual_seed(1)
    net = get_model(arch, weights=None, **kw).eval()
    for m in net.modules():  # non-trivial statistics, so a load that skipped them would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / f"{arch}.pth"
    torch.save(net.state_dict(), path)
    return net, path


@pytest.mark.slow
def test_weights_file_reloads_to_identical_outputs(tmp_path):
    net, path = _saved_net(tmp_path, "resnet18", num_classes=7)  # fine-tuned to other classes: fits
    model = create_model("resnet18", weights=path)
    net.fc = nn.Identity()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.eval().features(x), net(x), rtol=0, atol=0)
    assert model.config["weights"] == str(path)

    # VGG keeps the file's 25088→4096 layer as the head's first. Its classifier is stored as
    # broadcast views (stride-0 rows), so the file is a few MB instead of 500.
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in get_model("vgg11").state_dict().items()}
    torch.manual_seed(2)
    state = {k: torch.randn(s) for k, s in shapes.items() if k.startswith("features.")}
    for k, s in shapes.items():
        if k.startswith("classifier."):
            state[k] = torch.linspace(-0.01, 0.01, s[-1]).expand(s)
    torch.save(state, tmp_path / "vgg11.pth")
    model = create_model("vgg11", weights=tmp_path / "vgg11.pth")
    assert torch.equal(model.head[0].weight, state["classifier.0.weight"])
    assert torch.equal(model.backbone.features[0].weight, state["features.0.weight"])


@pytest.mark.slow
def test_densenet_file_with_torchvision_legacy_keys_loads(tmp_path):
    net, _ = _saved_net(tmp_path, "densenet121")
    legacy = {}
    for k, v in net.state_dict().items():  # 'norm1' → 'norm.1', no num_batches_tracked: as in
        if k.endswith("num_batches_tracked"):  # torchvision's own (pre-0.4.1) file
            continue
        for part in ("norm", "relu", "conv"):
            if ".denselayer" in k:
                k = k.replace(f".{part}1.", f".{part}.1.").replace(f".{part}2.", f".{part}.2.")
        legacy[k] = v
    assert any(".norm.1." in k for k in legacy)
    torch.save(legacy, tmp_path / "old.pth")
    model = create_model("densenet121", weights=tmp_path / "old.pth", head=())
    x = torch.randn(2, 3, 32, 32)
    expected = torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(net.features(x)), 1), 1)
    torch.testing.assert_close(model.eval().features(x), expected)


def test_mismatched_weights_file_names_the_keys(tmp_path):
    _, path = _saved_net(tmp_path, "resnet18")
    state = torch.load(path, weights_only=True)
    del state["layer1.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(3)
    state["bn1.weight"] = torch.zeros(10)
    torch.save(state, path)
    with pytest.raises(ModelError) as err:
        create_model("resnet18", weights=path)
    msg = str(err.value)
    assert "missing keys: layer1.0.conv1.weight" in msg and "unexpected keys: extra.weight" in msg
    assert "bn1.weight (10,) in the file vs (64,)" in msg

    with pytest.raises(ModelError, match="none of these"):
        create_model("resnet18", weights=tmp_path / "nope.pth")
    torch.save({"net": nn.Linear(2, 2)}, tmp_path / "pickled.pth")  # needs unpickling: refused
    with pytest.raises(ModelError, match="cannot read"):
        create_model("resnet18", weights=tmp_path / "pickled.pth")


def test_imagenet_download_failure_is_one_clear_cli_error(monkeypatch, tiny_data, tmp_path):
    def offline(url, dst, *args, **kwargs):
        raise URLError("no route to host")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    expected = Path(torch.hub.get_dir()) / "checkpoints" / "resnet18-f37072fd.pth"
    args = ["train", "--data-dir", str(tiny_data), "--arch", "resnet18", "--weights", "imagenet"]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "r"), "--quiet"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith("Error: could not download the ImageNet weights for resnet18")
    flat = " ".join(result.output.split())
    assert str(expected) in flat and "--weights FILE" in flat and "no route to host" in flat
    assert "--weights none --freeze none" in flat and "TORCH_HOME" in flat  # offline options

    # Once the file is in the hub cache, "imagenet" works offline.
    net, path = _saved_net(tmp_path, "resnet18")
    expected.parent.mkdir(parents=True, exist_ok=True)
    path.rename(expected)
    model = create_model("resnet18", weights="imagenet")
    assert torch.equal(model.backbone.conv1.weight, net.conv1.weight)


def test_imagenet_download_failure_names_python_options(monkeypatch):
    def offline(url, dst, *args, **kwargs):
        raise URLError("no route to host")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ModelError) as err:
        create_model("resnet18", weights="imagenet")
    msg = str(err.value)
    assert "another state-dict file with weights=FILE; or train from scratch with " in msg
    assert msg.endswith("weights='none', freeze='none'") and "--" not in msg
    with pytest.raises(ModelError) as err:
        create_model("smallcnn", weights="imagenet")
    assert str(err.value) == (
        "smallcnn has no pretrained weights; train it from scratch with weights='none', "
        "freeze='none'"
    )


class TinyCNN(nn.Module):
    """A custom backbone returning a (N, 16, h, w) feature map."""

    def __init__(self):
        super().__init__()
        self.block1 = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.block2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())

    def forward(self, x):
        return self.block2(self.block1(x))


PRE32 = Preprocessing(resize_size=32, crop_size=32, mean=(0.5,) * 3, std=(0.25,) * 3)


@pytest.mark.slow
def test_custom_backbone_trains_and_round_trips_through_a_checkpoint(tiny_data, tmp_path):
    from skincls.training.trainer import Trainer

    torch.manual_seed(0)
    model = create_model(
        backbone=TinyCNN(), head=(8,), dropout=0.1, freeze="none", preprocessing=PRE32
    )
    pre = model.preprocessing
    assert pre == PRE32 and model.config["arch"] == "custom" and model.config["feature_dim"] == 16
    start = {k: v.clone() for k, v in model.state_dict().items()}
    manifest = load_manifest(tiny_data)
    train = ManifestDataset(manifest, "train", build_transform(pre))
    history = Trainer(model, TrainConfig(epochs=1, batch_size=8, device="cpu", seed=0)).fit(train)
    assert len(history.epochs) == 1
    assert not torch.equal(
        start["backbone.block1.0.weight"], model.state_dict()["backbone.block1.0.weight"]
    )

    path = tmp_path / "custom.pt"
    save_checkpoint(path, model, classes=manifest.classes)
    ckpt = load_checkpoint(path)
    assert ckpt.model_config["backbone"].endswith("TinyCNN") and ckpt.preprocessing == PRE32
    rebuilt = ckpt.build_model(backbone=TinyCNN())  # a fresh module, other random weights
    x = torch.randn(3, 3, 32, 32)
    # Equal up to float rounding: the trainer may leave the model in channels_last layout.
    torch.testing.assert_close(rebuilt(x), model.cpu().eval()(x))
    with pytest.raises(CheckpointError, match=r"custom backbone .*TinyCNN.*backbone=module"):
        ckpt.build_model()


def test_custom_backbone_shapes_stages_and_errors():
    vector = nn.Sequential(TinyCNN(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = create_model(backbone=vector, head=(), preprocessing=PRE32, freeze=1)
    assert isinstance(model.pool, nn.Identity) and model.head[0].in_features == 16
    assert len(model.stages) == 1  # parameter-free children merge into the stage before them
    assert _trainable(model) == count_parameters(model)

    model = create_model(backbone=TinyCNN(), head=(), freeze=1)  # default: ImageNet, 224 px
    pre = model.preprocessing
    assert pre.crop_size == 224 and pre.mean == (0.485, 0.456, 0.406)
    assert _trainable(model) == count_parameters(model.backbone.block2) + count_parameters(
        model.head
    )

    with pytest.raises(ModelError, match="leave arch and weights out"):
        create_model("resnet18", backbone=TinyCNN())
    with pytest.raises(ModelError, match=r"\(N, D\) or \(N, C, H, W\)"):
        create_model(backbone=nn.Flatten(2), preprocessing=PRE32)  # (N, 3, H·W) tokens
    with pytest.raises(ModelError, match="fails on a"):
        create_model(backbone=nn.Linear(5, 5), preprocessing=PRE32)


@pytest.mark.slow
def test_registered_checkpoint_rebuilds_without_download_and_refuses_a_backbone(tmp_path):
    model = create_model("resnet18", weights="none", head=(8,), freeze=2)
    save_checkpoint(tmp_path / "r.pt", model, classes=["benign", "malignant"])
    ckpt = load_checkpoint(tmp_path / "r.pt")
    rebuilt = ckpt.build_model()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(rebuilt(x), model.eval()(x))
    assert _trainable(rebuilt) == _trainable(model)  # the freeze policy survives
    with pytest.raises(CheckpointError, match="takes no backbone="):
        ckpt.build_model(backbone=TinyCNN())


@pytest.mark.slow
def test_models_command_lists_every_arch():
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    for name in list_models():
        assert name in result.output
    assert "104,863,234" in result.output
    rows = json.loads(CliRunner().invoke(main, ["models", "--json"]).output)
    assert {r["name"]: r["trainable"] for r in rows}["vgg16"] == 104_863_234


@pytest.mark.slow
def test_train_head_dropout_and_freeze_options(tiny_data, tmp_path):
    base = ["train", "--data-dir", str(tiny_data), "--arch", "smallcnn", "--weights", "none"]
    base += [
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--quiet",
    ]
    out = tmp_path / "r"
    args = [*base, "--head", "32,16", "--dropout", "0.1", "--train-stages", "2", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())["model"]
    assert (saved["head"], saved["dropout"], saved["freeze"]) == ([32, 16], 0.1, 2)
    for bad, says in [
        (["--train-stages", "9"], "0 to 4"),
        (["--freeze", "all"], "--freeze"),
        (["--freeze", "2"], "--train-stages 2"),  # the old meaning points to the new option
        (["--freeze", "none", "--train-stages", "1"], "not both"),
        (["--head", "4096,x"], "--head"),
    ]:
        result = CliRunner().invoke(main, [*base, *bad, "--out", str(tmp_path / "bad")])
        assert result.exit_code != 0 and "Traceback" not in result.output
        assert says in result.output, result.output
