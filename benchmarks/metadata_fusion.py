"""Metadata fusion on HAM10000's real metadata rows with synthetic images of a weak signal.

    python benchmarks/metadata_fusion.py --metadata ../shared/data/metadata/HAM10000_metadata.csv \\
        --out WORK/metadata_fusion
    python benchmarks/metadata_fusion.py --smoke    # 160 rows of a table it makes up, temp dir

Every row of the table (or `--images N` of them, whole lesions) keeps its lesion, diagnosis, age,
sex and site; its picture is drawn by `skincls.data.synthetic_metadata.generate_from_rows` in
HAM10000's layout, in its own diagnosis's style only with probability `--signal` (else in a random
diagnosis's style). So neither the image nor the metadata tells the diagnosis well alone, and the
real age/sex/site → diagnosis relations are what the metadata brings.

`skincls.fetch` (grouped splits by lesion) once per task (binary: the default malignant map;
multiclass: the 7 diagnoses), then three models per task on the same splits, each with the same
frozen backbone (a seeded random conv net standing in for pretrained weights: the images are
synthetic anyway), feature cache on disk, the same head recipe and balanced class weights:

- image: `model.metadata='none'`; metadata: `model.metadata='auto'`, `model.use_image=False`;
  fused: `model.metadata='auto'`.

Each is measured on the test split (binary: ROC-AUC; multiclass: balanced accuracy), with a paired
bootstrap over test lesions (all of a lesion's images resampled together) of fused − image and
fused − metadata. The fused model is then trained once more on the warm feature cache: its wall time
is the time to train a fused head on cached features. Writes `OUT/report.json`; run `uptime` next to it.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _smoke

ARMS = {
    "image": {"metadata": "none", "use_image": True},
    "metadata": {"metadata": "auto", "use_image": False},
    "fused": {"metadata": "auto", "use_image": True},
}
RECIPE = {
    "model": {"arch": "custom", "head": [64], "dropout": 0.2, "freeze": "backbone"},
    "train": {"epochs": 15, "batch_size": 64, "lr": 1e-3, "device": "cpu", "seed": 0,
              "class_weights": "balanced", "cache_features": "disk", "precision": "fp32"},
}  # fmt: skip


class Standardise(nn.Module):
    """Fixed per-feature mean and scale (buffers: they travel in the checkpoint), as a pretrained
    backbone's last normalisation layer would."""

    def __init__(self, width: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("scale", torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


def feature_backbone() -> nn.Module:
    """A fixed (seeded) random conv net: (N, 3, H, W) → (N, 64) pooled colour and texture features,
    standardised by `fit_standardise` (the training images' statistics)."""
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        return nn.Sequential(
            nn.Conv2d(3, 32, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), Standardise(64),
        )  # fmt: skip


@torch.inference_mode()
def fit_standardise(backbone: nn.Module, data_dir: Path, size: int) -> nn.Module:
    """Set the backbone's `Standardise` to its features' mean and std on the training split."""
    import skincls
    from skincls.data.dataset import ManifestDataset, build_transform

    ds = ManifestDataset(
        skincls.load_manifest(data_dir), "train", build_transform(_preprocessing(size))
    )
    loader = torch.utils.data.DataLoader(ds, batch_size=256)
    feats = torch.cat([backbone[:-1](x) for x, _ in loader])
    backbone[-1].mean.copy_(feats.mean(0))
    backbone[-1].scale.copy_(feats.std(0).clamp_min(1e-6))
    return backbone


def sample_lesions(rows: list[dict], n: int | None, seed: int) -> list[dict]:
    """About `n` rows (all with None), whole lesions drawn at random, grouped by lesion."""
    lesions: dict[str, list[dict]] = {}
    for row in rows:
        lesions.setdefault(row["lesion_id"] or row["image_id"], []).append(row)
    order = np.random.default_rng(seed).permutation(sorted(lesions))
    picked: list[dict] = []
    for key in order:
        if n is not None and len(picked) >= n:
            break
        picked += lesions[key]
    return picked


def _config(data_dir: Path, out: Path, arm: str, size: int, epochs: int):
    import skincls

    model = {**RECIPE["model"], **ARMS[arm]}
    train = {**RECIPE["train"], "epochs": epochs}
    data = {"data_dir": data_dir, "image_size": size}
    return skincls.RunConfig.model_validate(
        {"model": model, "train": train, "data": data, "out": out}
    )


def _preprocessing(size: int):
    from skincls.preprocessing import Preprocessing

    return Preprocessing(resize_size=size, crop_size=size)


def train_arm(
    data_dir: Path, out: Path, arm: str, size: int, epochs: int, backbone: nn.Module
) -> dict:
    import skincls

    start = time.perf_counter()
    result = skincls.train_from_config(
        _config(data_dir, out, arm, size, epochs), backbone=copy.deepcopy(backbone),
        preprocessing=_preprocessing(size), progress=False, overwrite=True,
    )  # fmt: skip
    h = result.history
    return {
        "checkpoint": str(result.best_checkpoint),
        "wall_seconds": round(time.perf_counter() - start, 2),
        "feature_seconds": round(
            sum(v for k, v in h.timings.items() if k.startswith("features")), 2
        ),
        "head_epoch_seconds": round(sum(e.seconds for e in h.epochs), 2),
        "cache": dict(h.cache),
        "best_epoch": h.best_epoch,
    }


def test_scores(checkpoint: str, data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Test probabilities (N, C) and labels (N,) of a checkpoint."""
    from skincls.evaluation.evaluator import Evaluator

    ev = Evaluator(checkpoint, backbone=feature_backbone(), device="cpu")
    out = ev.outputs(data_dir, "test")
    return out.probs(), out.labels


def metric(task: str, p: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    if task == "binary":
        return float(roc_auc_score(y, p[:, 1]))
    return float(balanced_accuracy_score(y, p.argmax(1)))


def paired(task: str, probs: dict, y: np.ndarray, groups: np.ndarray, n: int, seed: int) -> dict:
    """fused − image and fused − metadata: point difference and 95% CI, lesions resampled."""
    rows_of: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        rows_of.setdefault(g, []).append(i)
    keys = sorted(rows_of)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {"image": [], "metadata": []}
    while len(draws["image"]) < n:
        idx = np.concatenate([rows_of[keys[k]] for k in rng.integers(0, len(keys), len(keys))])
        if len(np.unique(y[idx])) < len(np.unique(y)):
            continue  # a resample without some class: the metric is not comparable
        fused = metric(task, probs["fused"][idx], y[idx])
        for other in draws:
            draws[other].append(fused - metric(task, probs[other][idx], y[idx]))
    out = {}
    for other, d in draws.items():
        lo, hi = np.percentile(d, [2.5, 97.5])
        point = metric(task, probs["fused"], y) - metric(task, probs[other], y)
        out[f"fused-{other}"] = {"diff": round(point, 4), "ci": [round(lo, 4), round(hi, 4)]}
    return out


def run_task(task: str, source: Path, out: Path, args) -> dict:
    import skincls

    data_dir = out / f"data-{task}"
    if not (data_dir / "manifest.csv").is_file():
        skincls.fetch(
            data_dir, source_dir=source, dataset="ham10000", task=task, seed=args.seed,
            val_fraction=args.val_fraction, test_fraction=args.test_fraction,
        )  # fmt: skip
    manifest = skincls.load_manifest(data_dir)
    test = manifest.select("test")
    groups = np.array([r.lesion_id or r.path for r in test])
    arms, probs, y = {}, {}, None
    backbone = fit_standardise(feature_backbone(), data_dir, args.size)
    for arm in ARMS:
        arms[arm] = train_arm(
            data_dir, out / f"{task}-{arm}", arm, args.size, args.epochs, backbone
        )
        probs[arm], y = test_scores(arms[arm]["checkpoint"], data_dir)
        arms[arm]["test"] = round(metric(task, probs[arm], y), 4)
        print(task, arm, json.dumps(arms[arm]), flush=True)
    warm = {}
    for threads in map(int, args.warm_threads.split(",")):
        torch.set_num_threads(threads)
        load = os.getloadavg()
        run = train_arm(
            data_dir, out / f"{task}-fused-warm", "fused", args.size, args.epochs, backbone
        )
        warm[f"{threads}_threads"] = {**run, "load_before": load}
        print(task, f"fused on the warm cache, {threads} threads", json.dumps(run), flush=True)
    torch.set_num_threads(args.threads)
    return {
        "metric": "roc_auc" if task == "binary" else "balanced_accuracy",
        "counts": {s: len(manifest.select(s)) for s in ("train", "val", "test")},
        "arms": arms,
        "paired": paired(task, probs, y, groups, args.bootstrap, args.seed),
        "train_images": len(manifest.select("train")),
        "fused_on_warm_cache": warm,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metadata", type=Path, help="HAM10000_metadata.csv (real rows)")
    ap.add_argument("--out", type=Path, default=Path("runs/metadata_fusion"))
    ap.add_argument("--images", type=int, default=None, help="rows to use (default: all)")
    ap.add_argument("--signal", type=float, default=0.75)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--test-fraction", type=float, default=0.1)
    ap.add_argument("--size", type=int, default=48, help="image side in pixels")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--tasks", default="binary,multiclass")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (a small head: 1 is fastest)"
    )
    ap.add_argument(
        "--warm-threads", default="1,2", help="thread counts of the warm-cache fused runs"
    )
    ap.add_argument("--smoke", action="store_true", help="a quick run on a made-up table (CI)")
    args = ap.parse_args(argv)
    if args.smoke:
        return smoke()
    if args.metadata is None:
        ap.error("give --metadata HAM10000_metadata.csv (or --smoke)")
    torch.set_num_threads(args.threads)
    from skincls.data.synthetic_metadata import generate_from_rows

    with open(args.metadata, newline="") as fh:
        rows = sample_lesions(list(csv.DictReader(fh)), args.images, args.seed)
    source = args.out / "ham"
    start = time.perf_counter()
    if not (source / "HAM10000_metadata.csv").is_file():
        generate_from_rows(source, rows, signal=args.signal, seed=args.seed, size=args.size)
    result: dict = {
        "metadata": str(args.metadata), "images": len(rows), "signal": args.signal,
        "size": args.size, "recipe": RECIPE, "cpu_threads": args.threads,
        "load_before": os.getloadavg(), "images_seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip
    for task in args.tasks.split(","):
        result[task] = run_task(task, source, args.out, args)
    result["load_after"] = os.getloadavg()
    (args.out / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({t: result[t]["paired"] for t in args.tasks.split(",")}, indent=1))
    print(f"report: {args.out / 'report.json'}")
    return result


def _made_up_rows(n: int) -> list[dict]:
    """A HAM10000-like table whose site and age say something of the diagnosis."""
    rng = np.random.default_rng(0)
    dx = ["nv", "mel", "bkl", "bcc"]
    rows = []
    for i in range(n):
        d = dx[(i // 2) % 4]
        rows.append({
            "lesion_id": f"HAM_{i // 2:07d}", "image_id": f"ISIC_{i:07d}", "dx": d,
            "dx_type": "histo", "age": str(30 + 10 * (d != "nv") + int(rng.integers(0, 30))),
            "sex": str(rng.choice(["male", "female"])),
            "localization": "face" if d in ("bcc", "bkl") else str(rng.choice(["back", "trunk"])),
        })  # fmt: skip
    return rows


def smoke() -> dict:
    with _smoke.scratch(__file__) as tmp:
        table = tmp / "HAM10000_metadata.csv"
        rows = _made_up_rows(160)
        with table.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        args = [
            "--metadata",
            str(table),
            "--out",
            str(tmp / "out"),
            "--epochs",
            "2",
            "--size",
            "32",
        ]
        result = main([*args, "--bootstrap", "20", "--tasks", "binary"])
        assert set(result["binary"]["arms"]) == set(ARMS), result
        return result


if __name__ == "__main__":
    main()
