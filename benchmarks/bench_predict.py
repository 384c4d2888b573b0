"""Inference speed: `Predictor.predict` over a folder of images against the conv base's own throughput.

The limit for prediction is the model itself: VGG16's conv base on ready-made tensors (batch 32,
channels_last, no decoding). `predict` adds decoding, resizing and the head; it decodes the next batch
in a thread while the model runs. Both are timed in fp32 and bf16 (autocast); VGG16 is randomly
initialised (the compute does not depend on the weights).

Needs skincls only (`pip install -e .`); DEV_ZIP is the dev archive (the Kaggle dataset's layout).

    unzip -q DEV_ZIP 'test/*' -d DEV      # 527 test images
    python benchmarks/bench_predict.py --images DEV/test --json runs/bench-predict.json
    python benchmarks/bench_predict.py --smoke    # 4 noise images, batch 2, in a temp dir
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _smoke

import skincls
from skincls.inference.predict import Predictor, expand_paths
from skincls.models.checkpoint import load_checkpoint, save_checkpoint

DTYPES = {"fp32": None, "bf16": torch.bfloat16}


@torch.inference_mode()
def conv_base_rate(model: torch.nn.Module, precision: str, batches: int = 4, bs: int = 32) -> float:
    """Images/s of `model.features` on random 224 px tensors (best batch after one warm-up)."""
    x = torch.rand(bs, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    dtype = DTYPES[precision]
    best = float("inf")
    for i in range(batches + 1):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            model.features(x)
        if i:
            best = min(best, time.perf_counter() - t)
    return bs / best


def smoke() -> None:
    """Both precisions on 4 noise images with batches of 2, in a temp dir."""
    with _smoke.scratch(__file__) as tmp:
        images = _smoke.noise_images(tmp / "images", {"test": 2})
        args = ["--images", str(images), "--workdir", str(tmp / "work"), "--batch-size", "2"]
        main([*args, "--json", str(tmp / "report.json")])
        assert json.loads((tmp / "report.json").read_text())["images"] == 4


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, help="a folder of images (searched recursively)")
    ap.add_argument("--workdir", type=Path, default=Path("runs/bench-predict"))
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--batch-size", type=int, default=32, help="for predict and the conv base")
    ap.add_argument("--smoke", action="store_true", help="a quick run on noise images (CI)")
    args = ap.parse_args(argv)
    if args.smoke:
        return smoke()
    if args.images is None:
        ap.error("give --images (or --smoke)")
    args.workdir.mkdir(parents=True, exist_ok=True)
    ckpt_path = args.workdir / "vgg16-untrained.pt"
    model = skincls.create_model("vgg16", weights="none")
    save_checkpoint(ckpt_path, model, classes=["benign", "malignant"])
    paths = expand_paths([args.images])
    report: dict = {
        "images": len(paths),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    for precision in DTYPES:
        predictor = Predictor(
            load_checkpoint(ckpt_path), "cpu", batch_size=args.batch_size, precision=precision
        )
        limit = conv_base_rate(predictor.model, precision, bs=args.batch_size)
        t = time.perf_counter()
        preds = predictor.predict(paths)
        seconds = time.perf_counter() - t
        assert not any(p.error for p in preds)
        rate = len(paths) / seconds
        report[precision] = {
            "predict_s": seconds,
            "predict_images_per_s": rate,
            "conv_base_images_per_s": limit,
            "fraction_of_conv_base": rate / limit,
        }
        print(precision, json.dumps(report[precision]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
